//! The gateway's part of the one configuration model (parsed, not validated
//! later: every value here is already checked).

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
}

impl UpstreamConfig {
    /// The configured class of a tool, if it may be called at all.
    pub fn class_of(&self, tool: &str) -> Option<ToolClass> {
        self.tools.get(tool).copied().or(self.default_class)
    }
}

/// What an operator may do on the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
        match self {
            Self::Admin => "admin",
            Self::Approver => "approver",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Self::Admin),
            "approver" => Ok(Self::Approver),
            _ => Err(format!("unknown role {s:?} (admin, approver)")),
        }
    }
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
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            webhook_url: None,
            allow_self_approval: false,
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
}

impl GatewayConfig {
    /// The audience operator tokens must carry: `<public_url>/api`.
    pub fn operator_audience(&self) -> String {
        format!("{}/api", self.public_url)
    }
}
