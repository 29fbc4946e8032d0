//! The gateway's part of the one configuration model (parsed, not validated
//! later: every value here is already checked). A leaf: it names no other
//! module of the crate; the value types it needs of the modules that act
//! on them (a tool's provenance, redaction rules, connection bounds) are
//! defined here and re-exported there.

use mandate_core::ToolClass;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How the gateway reaches one upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A child process speaking MCP over stdio.
    Stdio {
        /// Program to run.
        command: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables (the child does not inherit Mandate's
        /// secrets: only these and PATH/HOME/LANG are passed).
        env: BTreeMap<String, String>,
    },
    /// A Streamable HTTP MCP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
        /// Static headers for the upstream's own credentials (never the
        /// agent's token).
        headers: BTreeMap<String, String>,
    },
}

/// Whether Mandate sessions share one connection to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// One connection for every session (stateless servers; cheapest).
    #[default]
    Shared,
    /// A connection (for stdio: a child process) per Mandate session: no
    /// server-side state crosses sessions, and elicitations are relayed.
    Session,
}

/// One upstream MCP server behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Namespace for its tools (`<name>.<tool>`); no `.` allowed.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Class of each tool the operator has classified.
    pub tools: BTreeMap<String, ToolClass>,
    /// Class of tools not listed in `tools`; `None` = such tools are denied.
    pub default_class: Option<ToolClass>,
    /// Connection sharing across Mandate sessions.
    pub isolation: Isolation,
    /// What each tool's results are (unlisted: `default_provenance`).
    pub provenance: BTreeMap<String, Provenance>,
    /// Provenance of tools not listed in `provenance` (default `untrusted`).
    pub default_provenance: Provenance,
    /// Whether a tool seen for the first time needs an operator's approval
    /// (`true`) or is pinned on first use unless its description is suspect.
    pub approve_new_tools: bool,
    /// Largest answer read from it (one JSON-RPC message: an HTTP body, an
    /// SSE event or a stdio line); a call whose answer is larger fails at
    /// once with `result_too_large`.
    pub max_result_bytes: usize,
}

impl UpstreamConfig {
    /// [`UpstreamConfig::max_result_bytes`] unless configured: 4 MiB.
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
}

impl UpstreamConfig {
    /// The configured class of a tool, if it may be called at all.
    pub fn class_of(&self, tool: &str) -> Option<ToolClass> {
        self.tools.get(tool).copied().or(self.default_class)
    }

    /// What a tool's results are.
    pub fn provenance_of(&self, tool: &str) -> Provenance {
        self.provenance
            .get(tool)
            .copied()
            .unwrap_or(self.default_provenance)
    }
}

/// What an operator may do on the control API.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_role
)]
pub enum Role {
    /// Kill switches (revoke, lift) and the change gate (propose, review,
    /// activate).
    Admin,
    /// Decides held tool calls (human approval).
    Approver,
}

impl Role {
    /// Configured and displayed name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_role(s: &str) -> String {
    format!("unknown role {s:?} (admin, approver)")
}

/// A person allowed to use the control API, identified by a token from a
/// configured issuer (never an agent token: one with `act` is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// The token's `sub`.
    pub sub: String,
    /// The token's `iss`; `None` = any configured issuer.
    pub issuer: Option<String>,
    /// What they may do.
    pub roles: std::collections::BTreeSet<Role>,
    /// For approvers: the tool classes whose calls they may decide
    /// (empty = every class).
    pub approve_classes: std::collections::BTreeSet<ToolClass>,
}

impl OperatorConfig {
    /// Whether this operator may decide a held call of `class`.
    pub fn may_approve(&self, class: &str) -> bool {
        self.roles.contains(&Role::Approver)
            && (self.approve_classes.is_empty()
                || self.approve_classes.iter().any(|c| c.as_str() == class))
    }
}

/// How held calls are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalConfig {
    /// How long a call is held before it is denied.
    pub timeout: Duration,
    /// Where to POST a JSON notification when a request is created.
    pub webhook_url: Option<String>,
    /// Whether the delegating user may approve their own agent's calls.
    pub allow_self_approval: bool,
    /// Whether a held call of a client that declares the MCP tasks
    /// extension is answered at once with a task handle (`true`, the
    /// default) or held open until decided, as for every other client
    /// (`false`: for clients that declare the extension but do not poll).
    pub held_calls_as_tasks: bool,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            webhook_url: None,
            allow_self_approval: false,
            held_calls_as_tasks: true,
        }
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The public base URL of this Mandate (e.g. `https://mandate.example`).
    pub public_url: String,
    /// The resource identifier tokens must be issued for (`aud`).
    pub resource: String,
    /// Issuers to advertise in protected resource metadata.
    pub authorization_servers: Vec<String>,
    /// Upstreams, in declaration order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Allowed `Host` values (empty = any; not recommended).
    pub allowed_hosts: Vec<String>,
    /// Allowed browser `Origin`s (empty = reject any request that has one).
    pub allowed_origins: Vec<String>,
    /// Operators of the control API (`/api`).
    pub operators: Vec<OperatorConfig>,
    /// Human approval of held calls.
    pub approvals: ApprovalConfig,
    /// Whether policy-set changes must pass the two-person change gate
    /// (policies then load from the control store, not the directory).
    pub change_gate: bool,
    /// Bounds on connections, sessions and concurrent calls.
    pub limits: Limits,
    /// What audit records keep of call arguments (`[audit.redaction]`).
    pub redaction: Redaction,
}

impl GatewayConfig {
    /// The audience operator tokens must carry: `<public_url>/api`.
    pub fn operator_audience(&self) -> String {
        format!("{}/api", self.public_url)
    }

    /// Where the agent endpoint's RFC 9728 protected resource metadata is
    /// published (named in its `WWW-Authenticate` challenges).
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            self.public_url.trim_end_matches('/')
        )
    }
}

/// Default of `[limits] max_tool_labels`: distinct tool label values of
/// the metrics.
pub const DEFAULT_MAX_TOOL_LABELS: usize = 128;

/// Bounds on what callers can make the gateway hold (`[limits]`). Every
/// limit has a metric and a test that tries to exceed it
/// (docs/THREAT-MODEL.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// HTTP connections: cap, header-read, idle and body timeouts.
    pub connections: ConnectionLimits,
    /// Most MCP transport sessions in total; past it new ones are refused.
    pub max_sessions: usize,
    /// Most MCP transport sessions per subject (issuer and `sub`); past it
    /// the subject's least recently used session is closed.
    pub max_sessions_per_subject: usize,
    /// A transport session unused this long is closed.
    pub session_idle_timeout: Duration,
    /// Most tool calls one subject (issuer and `sub`) may have in flight,
    /// held calls included; more are refused.
    pub max_concurrent_calls_per_subject: usize,
    /// Most distinct tool names used as metric label values; later tools
    /// are counted as `other`.
    pub max_tool_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits::default(),
            max_sessions: 10_000,
            max_sessions_per_subject: 32,
            session_idle_timeout: Duration::from_secs(300),
            max_concurrent_calls_per_subject: 64,
            max_tool_labels: DEFAULT_MAX_TOOL_LABELS,
        }
    }
}

// ----- value types acted on elsewhere ------------------------------------------

/// What a tool's results are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_provenance
)]
pub enum Provenance {
    /// Produced by a system the operator trusts; passed through unchanged.
    Trusted,
    /// Outside content that may carry instructions (the default).
    #[default]
    Untrusted,
    /// Customer data or secrets: sanitised, taints the session for flow rules.
    Sensitive,
}

impl Provenance {
    /// Configured name, and the taint label it adds.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_provenance(s: &str) -> String {
    format!("unknown provenance {s:?} (trusted, untrusted, sensitive)")
}

/// How one value is kept (configured as `full`, `hash` or `redact`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::EnumString)]
#[cfg_attr(test, derive(strum::VariantArray, strum::IntoStaticStr))]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_keep
)]
pub enum Keep {
    /// As sent.
    Full,
    /// As the SHA-256 of its canonical JSON.
    Hash,
    /// Not at all.
    #[default]
    Redact,
}

fn unknown_keep(s: &str) -> String {
    format!("{s:?} is not full, hash or redact")
}

/// The rule for one tool: a default and per-field exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolRule {
    /// For fields without a rule of their own.
    pub default: Keep,
    /// Top-level argument name → how its value is kept.
    pub fields: BTreeMap<String, Keep>,
}

/// The redaction rules: per exposed tool name (`upstream.tool`), with a
/// default for tools not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    /// For tools without a rule.
    pub default: ToolRule,
    /// Exposed tool name → rule.
    pub tools: BTreeMap<String, ToolRule>,
}

/// Bounds on HTTP connections (`[limits]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most open connections; at the cap the oldest idle one is closed.
    pub max_connections: usize,
    /// Time for a complete request head once its first byte arrived.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Time for a complete request body, from the end of its head.
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// How long a drain waits for in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// At a stop, how long the listener keeps accepting after `/readyz`
    /// turned "not ready" (only if anything asks `/readyz`): the time a
    /// load balancer needs to see it and send its requests elsewhere.
    pub drain_delay: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(20),
            drain_delay: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configured spellings, also recorded as policy ids (`operator-role:…`).
    #[test]
    fn role_spellings_are_unchanged() {
        use strum::VariantArray as _;
        let table = [(Role::Admin, "admin"), (Role::Approver, "approver")];
        assert_eq!(table.len(), Role::VARIANTS.len());
        for (role, spelled) in table {
            assert_eq!(role.as_str(), spelled);
            assert_eq!(spelled.parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "root".parse::<Role>(),
            Err("unknown role \"root\" (admin, approver)".to_owned())
        );
    }
}
