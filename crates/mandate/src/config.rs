//! `mandate.toml`: the one configuration model.
//!
//! The file and `MANDATE_*` environment overrides are translated into one
//! [`Config`] at load time; unknown keys are errors. Paths may use
//! `{config_dir}`, `{data_dir}` and `{mandate}` (this executable).

use crate::env;
use anyhow::{Context, Result, anyhow, bail};
use mandate_authn::{AuthnConfig, IssuerConfig, JwksSource};
use mandate_core::ToolClass;
use mandate_gateway::provenance::Provenance;
use mandate_gateway::{
    ApprovalConfig, GatewayConfig, Isolation, OperatorConfig, Role, Transport, UpstreamConfig,
};
use mandate_operator::{ClientSecret, LocalAccount, OidcConfig, WebConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    auth: AuthSection,
    #[serde(default)]
    policy: PolicySection,
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    operators: Vec<OperatorSection>,
    #[serde(default)]
    approvals: ApprovalsSection,
    /// The delegation broker (`docs/BROKER.md`).
    broker: Option<crate::broker_config::BrokerSection>,
    #[serde(default)]
    audit: crate::audit_config::AuditSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    limits: LimitsSection,
    /// Traces (docs/OBSERVABILITY.md).
    #[serde(default)]
    telemetry: crate::telemetry::TelemetrySection,
}

/// `[control]`: where revocations, approvals, the change gate, tool pins,
/// tasks and intents live (docs/DEPLOY.md, "Several replicas").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    /// `postgres://…` (shared by replicas) or a SQLite path; default
    /// `{data_dir}/control.sqlite`.
    store: Option<String>,
    /// PostgreSQL schema of the control tables (default `mandate_control`).
    schema: Option<String>,
    /// With PostgreSQL: how often each replica re-reads revocations and
    /// ceilings, and a held call looks for a decision made on another
    /// replica (milliseconds, default 500).
    poll_ms: Option<u64>,
}

/// `[control]`, resolved.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Where the store lives.
    pub location: mandate_control::Location,
    /// Re-read interval of a shared store.
    pub poll: Duration,
}

impl ControlSection {
    fn resolve(&self, data_dir: &Path, subst: &dyn Fn(&str) -> String) -> Result<ControlSettings> {
        let store = std::env::var(env::CONTROL_STORE)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.store.clone());
        let mut location = match store {
            None => mandate_control::Location::Sqlite(data_dir.join("control.sqlite")),
            Some(v) => match mandate_control::Location::parse(&subst(&v)) {
                // A relative SQLite path is relative to the data directory.
                mandate_control::Location::Sqlite(p) if p.is_relative() => {
                    mandate_control::Location::Sqlite(data_dir.join(p))
                }
                other => other,
            },
        };
        if let Some(schema) = &self.schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && !schema.starts_with(|c: char| c.is_ascii_digit())
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                bail!("control.schema must be a lower-case identifier (a-z, 0-9, _)");
            }
            match &mut location {
                mandate_control::Location::Postgres { schema: s, .. } => s.clone_from(schema),
                mandate_control::Location::Sqlite(_) => {
                    bail!("control.schema applies only to a postgres:// control.store")
                }
            }
        }
        let poll = Duration::from_millis(self.poll_ms.unwrap_or(500));
        if poll < Duration::from_millis(10) || poll > Duration::from_secs(60) {
            bail!("control.poll_ms must be between 10 and 60000");
        }
        Ok(ControlSettings { location, poll })
    }
}

/// `[limits]`: what any caller can make the gateway hold. Defaults are safe
/// for one process; docs/CONFIG.md explains each.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    max_connections: usize,
    header_read_timeout_secs: u64,
    idle_timeout_secs: u64,
    body_timeout_secs: u64,
    max_header_bytes: usize,
    drain_timeout_secs: u64,
    drain_delay_ms: u64,
    max_sessions: usize,
    max_sessions_per_subject: usize,
    session_idle_timeout_secs: u64,
    max_concurrent_calls_per_subject: usize,
    max_tool_labels: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = mandate_gateway::Limits::default();
        let c = &d.connections;
        Self {
            max_connections: c.max_connections,
            header_read_timeout_secs: c.header_read_timeout.as_secs(),
            idle_timeout_secs: c.idle_timeout.as_secs(),
            body_timeout_secs: c.body_timeout.as_secs(),
            max_header_bytes: c.max_header_bytes,
            drain_timeout_secs: c.drain_timeout.as_secs(),
            drain_delay_ms: u64::try_from(c.drain_delay.as_millis()).unwrap_or(u64::MAX),
            max_sessions: d.max_sessions,
            max_sessions_per_subject: d.max_sessions_per_subject,
            session_idle_timeout_secs: d.session_idle_timeout.as_secs(),
            max_concurrent_calls_per_subject: d.max_concurrent_calls_per_subject,
            max_tool_labels: d.max_tool_labels,
        }
    }
}

impl LimitsSection {
    fn to_limits(&self) -> Result<mandate_gateway::Limits> {
        let positive = |name: &str, v: u64| {
            if v == 0 {
                bail!("limits.{name} must be at least 1");
            }
            Ok(Duration::from_secs(v))
        };
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_sessions", self.max_sessions),
            ("max_sessions_per_subject", self.max_sessions_per_subject),
            (
                "max_concurrent_calls_per_subject",
                self.max_concurrent_calls_per_subject,
            ),
            ("max_tool_labels", self.max_tool_labels),
        ] {
            if v == 0 {
                bail!("limits.{name} must be at least 1");
            }
        }
        if self.drain_delay_ms > 60_000 {
            bail!("limits.drain_delay_ms must be at most 60000");
        }
        if self.max_header_bytes < 8192 {
            bail!("limits.max_header_bytes must be at least 8192");
        }
        Ok(mandate_gateway::Limits {
            connections: mandate_gateway::ConnectionLimits {
                max_connections: self.max_connections,
                header_read_timeout: positive(
                    "header_read_timeout_secs",
                    self.header_read_timeout_secs,
                )?,
                idle_timeout: positive("idle_timeout_secs", self.idle_timeout_secs)?,
                body_timeout: positive("body_timeout_secs", self.body_timeout_secs)?,
                max_header_bytes: self.max_header_bytes,
                drain_timeout: positive("drain_timeout_secs", self.drain_timeout_secs)?,
                drain_delay: Duration::from_millis(self.drain_delay_ms),
            },
            max_sessions: self.max_sessions,
            max_sessions_per_subject: self.max_sessions_per_subject,
            session_idle_timeout: positive(
                "session_idle_timeout_secs",
                self.session_idle_timeout_secs,
            )?,
            max_concurrent_calls_per_subject: self.max_concurrent_calls_per_subject,
            max_tool_labels: self.max_tool_labels,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorSection {
    sub: String,
    issuer: Option<String>,
    roles: Vec<String>,
    #[serde(default)]
    approve_classes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsSection {
    #[serde(default = "default_approval_timeout")]
    timeout_secs: u64,
    webhook_url: Option<String>,
    #[serde(default)]
    allow_self_approval: bool,
    #[serde(default = "yes")]
    held_calls_as_tasks: bool,
    #[serde(default)]
    web: WebSection,
}

impl Default for ApprovalsSection {
    fn default() -> Self {
        Self {
            timeout_secs: default_approval_timeout(),
            webhook_url: None,
            allow_self_approval: false,
            held_calls_as_tasks: true,
            web: WebSection::default(),
        }
    }
}

/// `[approvals.web]`: sign-in to the approval page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebSection {
    #[serde(default)]
    local_accounts: Vec<LocalAccountSection>,
    oidc: Option<OidcSection>,
    session_idle_secs: Option<u64>,
    session_max_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalAccountSection {
    sub: String,
    password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcSection {
    issuer: String,
    client_id: String,
    client_secret_env: Option<String>,
}

fn default_approval_timeout() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    #[serde(default = "default_listen")]
    listen: String,
    public_url: Option<String>,
    #[serde(default = "default_data_dir")]
    data_dir: String,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
            data_dir: default_data_dir(),
            max_body_bytes: default_max_body(),
            allowed_hosts: None,
            allowed_origins: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8943".into()
}
fn default_data_dir() -> String {
    "mandate-data".into()
}

/// `server.data_dir` as the file gives it: `{config_dir}` substituted, and
/// a relative path taken from the config file's folder (not the working
/// directory), so the same file finds the same state wherever `mandate` is
/// started. `--data-dir` and `MANDATE_DATA_DIR` are taken as given.
fn file_data_dir(written: &str, config_dir: &Path) -> PathBuf {
    if written.contains("{config_dir}") {
        return PathBuf::from(written.replace("{config_dir}", &config_dir.display().to_string()));
    }
    let path = PathBuf::from(written);
    if path.is_relative() {
        config_dir.join(path)
    } else {
        path
    }
}
fn default_max_body() -> usize {
    1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    resource: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default = "yes")]
    require_actor: bool,
    #[serde(default)]
    issuers: Vec<IssuerSection>,
}

fn default_leeway() -> u64 {
    30
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerSection {
    issuer: String,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    #[serde(default = "default_policy_dir")]
    dir: String,
    #[serde(default)]
    change_gate: bool,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    builds: BTreeMap<String, BuildSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSection {
    name: String,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            dir: default_policy_dir(),
            change_gate: false,
            groups: BTreeMap::new(),
            builds: BTreeMap::new(),
        }
    }
}

fn default_policy_dir() -> String {
    "{config_dir}/policies".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSection {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default)]
    tools: BTreeMap<String, String>,
    default_class: Option<String>,
    #[serde(default)]
    provenance: BTreeMap<String, String>,
    default_provenance: Option<String>,
    pinning: Option<String>,
    #[serde(default)]
    isolation: Option<String>,
    max_result_bytes: Option<u64>,
}

/// The largest `max_result_bytes` accepted (an answer is held in memory
/// whole before it is relayed).
const MAX_RESULT_BYTES_CEILING: u64 = 256 * 1024 * 1024;

fn default_timeout() -> u64 {
    30
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Embedded state (audit log, demo keys).
    pub data_dir: PathBuf,
    /// Policy directory.
    pub policy_dir: PathBuf,
    /// Token verification.
    pub authn: AuthnConfig,
    /// Gateway.
    pub gateway: GatewayConfig,
    /// Sign-in to the approval page (`[approvals.web]`), for the operator
    /// plane.
    pub web: WebConfig,
    /// Groups of users (group → user `sub`s), for the policy directory.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Registered agent builds (build hash → name).
    pub builds: BTreeMap<String, String>,
    /// The delegation broker, when enabled.
    pub broker: Option<mandate_broker::BrokerConfig>,
    /// `[audit]`: store, checkpoints, retention, redaction.
    pub audit: crate::audit_config::AuditSettings,
    /// `[control]`: where the control store lives.
    pub control: ControlSettings,
    /// `[telemetry]`: `None` when traces are off.
    pub telemetry: Option<crate::telemetry::TelemetrySettings>,
}

/// Command-line overrides, applied after the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Public URL (the demo sets it to the port it bound).
    pub public_url: Option<String>,
}

impl Config {
    /// Reads and parses `path`, then applies environment and CLI overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, path, overrides)
    }

    /// Parses config text; `path` locates `{config_dir}`.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Self> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let config_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();

        let listen = overrides
            .listen
            .clone()
            .or_else(|| std::env::var(env::LISTEN).ok())
            .unwrap_or(file.server.listen.clone());
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!("server.listen {listen:?} is not an address like 127.0.0.1:8943")
        })?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or_else(|| std::env::var(env::DATA_DIR).ok().map(PathBuf::from))
            .unwrap_or_else(|| file_data_dir(&file.server.data_dir, &config_dir));
        let public_url = overrides
            .public_url
            .clone()
            .or_else(|| std::env::var(env::PUBLIC_URL).ok())
            .or(file.server.public_url.clone())
            .unwrap_or_else(|| format!("http://{listen}"));
        let public_url = public_url.trim_end_matches('/').to_owned();

        let subst = |s: &str| -> String {
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "mandate".into());
            s.replace("{config_dir}", &config_dir.display().to_string())
                .replace("{data_dir}", &data_dir.display().to_string())
                .replace("{mandate}", &exe)
        };

        let resource = file
            .auth
            .resource
            .clone()
            .unwrap_or_else(|| format!("{public_url}/mcp"));
        let broker_section = file.broker.as_ref().filter(|b| b.enabled());
        if file.auth.issuers.is_empty() && broker_section.is_none() {
            bail!(
                "auth.issuers is empty: configure at least one token issuer (or enable [broker])"
            );
        }
        let mut issuers = Vec::new();
        for i in &file.auth.issuers {
            let jwks = match (&i.jwks_file, &i.jwks_url) {
                (Some(f), None) => JwksSource::File(PathBuf::from(subst(f))),
                (None, Some(u)) => JwksSource::Url(u.clone()),
                _ => bail!(
                    "auth.issuers {:?}: set exactly one of jwks_file and jwks_url",
                    i.issuer
                ),
            };
            issuers.push(IssuerConfig {
                issuer: i.issuer.clone(),
                jwks,
            });
        }
        // The broker's own tokens are trusted by the gateway, with its keys
        // read from the broker's key directory.
        if let Some(b) = broker_section {
            let issuer = b.issuer(&public_url);
            if issuers.iter().any(|i| i.issuer == issuer) {
                bail!(
                    "auth.issuers lists the broker's own issuer {issuer:?}; remove it (the broker's keys are trusted automatically)"
                );
            }
            issuers.insert(
                0,
                IssuerConfig {
                    issuer,
                    jwks: JwksSource::File(b.key_dir(&data_dir, &subst).join("jwks.json")),
                },
            );
        }
        let algorithms = match &file.auth.algorithms {
            None => AuthnConfig::default_algorithms(),
            Some(names) => names
                .iter()
                .map(|n| {
                    n.parse::<jsonwebtoken::Algorithm>()
                        .map_err(|_| anyhow!("auth.algorithms: unknown algorithm {n:?}"))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if file.auth.leeway_secs > 60 {
            bail!("auth.leeway_secs must be at most 60");
        }
        let authn = AuthnConfig {
            issuers,
            audience: resource.clone(),
            leeway_secs: file.auth.leeway_secs,
            algorithms,
            require_actor: file.auth.require_actor,
        };

        let mut upstreams = Vec::new();
        for (name, u) in &file.upstreams {
            if name.is_empty() || name.contains('.') {
                bail!("upstream name {name:?} must be non-empty and contain no '.'");
            }
            let transport = match (&u.command, &u.url) {
                (Some(cmd), None) => Transport::Stdio {
                    command: PathBuf::from(subst(cmd)),
                    args: u.args.iter().map(|a| subst(a)).collect(),
                    env: u.env.clone(),
                },
                (None, Some(url)) => {
                    if !u.args.is_empty() || !u.env.is_empty() {
                        bail!("upstreams.{name}: args/env only apply to command upstreams");
                    }
                    Transport::Http {
                        url: url.clone(),
                        headers: u.headers.clone(),
                    }
                }
                _ => bail!("upstreams.{name}: set exactly one of command and url"),
            };
            let mut tools = BTreeMap::new();
            for (tool, class) in &u.tools {
                let class: ToolClass = class
                    .parse()
                    .map_err(|e: String| anyhow!("upstreams.{name}.tools.{tool}: {e}"))?;
                tools.insert(tool.clone(), class);
            }
            let default_class =
                match &u.default_class {
                    None => None,
                    Some(c) if c == "deny" => None,
                    Some(c) => Some(c.parse::<ToolClass>().map_err(|e| {
                        anyhow!("upstreams.{name}.default_class: {e} (or \"deny\")")
                    })?),
                };
            if u.timeout_secs == 0 {
                bail!("upstreams.{name}.timeout_secs must be positive");
            }
            let isolation = match u.isolation.as_deref() {
                None | Some("shared") => Isolation::Shared,
                Some("session") => Isolation::Session,
                Some(other) => {
                    bail!("upstreams.{name}.isolation: {other:?} is not \"shared\" or \"session\"")
                }
            };
            let mut provenance = BTreeMap::new();
            for (tool, p) in &u.provenance {
                let p: Provenance = p
                    .parse()
                    .map_err(|e: String| anyhow!("upstreams.{name}.provenance.{tool}: {e}"))?;
                provenance.insert(tool.clone(), p);
            }
            let default_provenance = match &u.default_provenance {
                None => Provenance::Untrusted,
                Some(p) => p
                    .parse()
                    .map_err(|e: String| anyhow!("upstreams.{name}.default_provenance: {e}"))?,
            };
            let approve_new_tools = match u.pinning.as_deref() {
                None | Some("first-use") => false,
                Some("approve") => true,
                Some(other) => {
                    bail!("upstreams.{name}.pinning: {other:?} is not \"first-use\" or \"approve\"")
                }
            };
            let max_result_bytes = match u.max_result_bytes {
                None => UpstreamConfig::DEFAULT_MAX_RESULT_BYTES,
                Some(n) if (1024..=MAX_RESULT_BYTES_CEILING).contains(&n) => usize::try_from(n)
                    .map_err(|_| anyhow!("upstreams.{name}.max_result_bytes: too large"))?,
                Some(_) => bail!(
                    "upstreams.{name}.max_result_bytes must be between 1024 and {MAX_RESULT_BYTES_CEILING}"
                ),
            };
            upstreams.push(UpstreamConfig {
                name: name.clone(),
                isolation,
                transport,
                timeout: Duration::from_secs(u.timeout_secs),
                tools,
                default_class,
                provenance,
                default_provenance,
                approve_new_tools,
                max_result_bytes,
            });
        }

        let allowed_hosts = match &file.server.allowed_hosts {
            Some(h) => h.clone(),
            None => {
                let mut hosts = vec![
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                    "::1".to_owned(),
                ];
                if let Some(host) = host_of(&public_url) {
                    hosts.push(host);
                }
                hosts
            }
        };

        if file.approvals.timeout_secs == 0 || file.approvals.timeout_secs > 86_400 {
            bail!("approvals.timeout_secs must be between 1 and 86400");
        }
        let web = web_config(&file.approvals.web)?;
        let mut operators = Vec::new();
        for (i, o) in file.operators.iter().enumerate() {
            if o.sub.trim().is_empty() {
                bail!("operators[{i}].sub must not be empty");
            }
            if let Some(iss) = &o.issuer
                && !file.auth.issuers.iter().any(|i| &i.issuer == iss)
                && web.oidc.as_ref().is_none_or(|w| &w.issuer != iss)
                && iss != mandate_operator::LOCAL_ISSUER
            {
                bail!(
                    "operators[{i}].issuer {iss:?} is not one of auth.issuers, approvals.web.oidc.issuer or \"{}\" (local accounts)",
                    mandate_operator::LOCAL_ISSUER
                );
            }
            let roles = o
                .roles
                .iter()
                .map(|r| {
                    r.parse::<Role>()
                        .map_err(|e| anyhow!("operators[{i}].roles: {e}"))
                })
                .collect::<Result<std::collections::BTreeSet<_>>>()?;
            if roles.is_empty() {
                bail!("operators[{i}].roles must name at least one role");
            }
            let approve_classes = o
                .approve_classes
                .iter()
                .map(|c| {
                    c.parse::<ToolClass>()
                        .map_err(|e| anyhow!("operators[{i}].approve_classes: {e}"))
                })
                .collect::<Result<std::collections::BTreeSet<_>>>()?;
            if !approve_classes.is_empty() && !roles.contains(&Role::Approver) {
                bail!("operators[{i}].approve_classes is set but roles has no \"approver\"");
            }
            operators.push(OperatorConfig {
                sub: o.sub.clone(),
                issuer: o.issuer.clone(),
                roles,
                approve_classes,
            });
        }

        let broker = match broker_section {
            None => None,
            Some(b) => Some(b.resolve(&crate::broker_config::BrokerContext {
                public_url: &public_url,
                data_dir: &data_dir,
                resource: &resource,
                leeway_secs: file.auth.leeway_secs,
                subst: &subst,
            })?),
        };
        let mut authorization_servers: Vec<String> =
            file.auth.issuers.iter().map(|i| i.issuer.clone()).collect();
        if let Some(b) = &broker {
            authorization_servers.insert(0, b.issuer.clone());
        }
        let gateway = GatewayConfig {
            public_url,
            resource,
            authorization_servers,
            upstreams,
            max_body_bytes: file.server.max_body_bytes,
            allowed_hosts,
            allowed_origins: file.server.allowed_origins.clone(),
            operators,
            approvals: ApprovalConfig {
                timeout: Duration::from_secs(file.approvals.timeout_secs),
                webhook_url: file.approvals.webhook_url.clone(),
                allow_self_approval: file.approvals.allow_self_approval,
                held_calls_as_tasks: file.approvals.held_calls_as_tasks,
            },
            change_gate: file.policy.change_gate,
            redaction: Default::default(),
            limits: file.limits.to_limits()?,
        };
        let policy_dir = PathBuf::from(subst(&file.policy.dir));
        let audit =
            crate::audit_config::AuditSettings::from_section(&file.audit, &data_dir, &subst)?;
        let control = file.control.resolve(&data_dir, &subst)?;
        let telemetry = file.telemetry.settings()?;
        let mut gateway = gateway;
        gateway.redaction = audit.redaction.clone();
        Ok(Self {
            audit,
            control,
            telemetry,
            listen,
            data_dir,
            policy_dir,
            authn,
            gateway,
            web,
            groups: file.policy.groups,
            builds: file
                .policy
                .builds
                .into_iter()
                .map(|(hash, b)| (hash, b.name))
                // Builds registered with the broker are registered for
                // policies too (`context.build.registered`).
                .chain(broker.iter().flat_map(|b| {
                    b.build_registry()
                        .into_iter()
                        .map(|(hash, (_, build))| (hash, build.name))
                }))
                .collect(),
            broker,
        })
    }

    /// The same configuration with every store `serve` writes (data
    /// directory, audit log and its checkpoint key, control store, broker
    /// keys) moved into `scratch`, for `serve --check`: it builds everything
    /// `serve` builds without touching the real state. The broker's keys
    /// are copied when they exist (so the check loads the real ones); files
    /// read only (JWKS, policies) stay where they are.
    pub fn scratch(&self, scratch: &Path) -> Result<Self> {
        let mut c = self.clone();
        c.data_dir = scratch.join("data");
        c.audit.store = mandate_audit::Store::Sqlite(scratch.join("audit.sqlite"));
        c.audit.checkpoint_key = scratch.join("audit-checkpoint.key");
        // A shared control store is not touched either: the check opens a
        // scratch one (it validates this config, not the database's state).
        c.control.location = mandate_control::Location::Sqlite(scratch.join("control.sqlite"));
        if let Some(b) = c.broker.as_mut() {
            let copy = scratch.join("broker-keys");
            std::fs::create_dir_all(&copy)?;
            if let Ok(entries) = std::fs::read_dir(&b.key_dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_file()) {
                        std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
                    }
                }
            }
            // The gateway trusts the broker's tokens through the JWKS in
            // that directory: read it from the copy too.
            let published = b.key_dir.join("jwks.json");
            for issuer in &mut c.authn.issuers {
                if matches!(&issuer.jwks, JwksSource::File(p) if *p == published) {
                    issuer.jwks = JwksSource::File(copy.join("jwks.json"));
                }
            }
            b.key_dir = copy;
        }
        Ok(c)
    }

    /// Opens the control store `[control]` names (creating its tables if
    /// needed).
    pub async fn open_control(&self) -> Result<mandate_control::ControlStore> {
        let location = self.control.location.clone();
        let shown = location.to_string();
        Ok(mandate_control::ControlStore::open_at(location)
            .await
            .map_err(|e| anyhow::anyhow!("control store {shown}: {e}"))?
            .with_poll(self.control.poll))
    }

    /// Where the active policy set lives when the change gate is on.
    pub fn gated_policy_dir(&self) -> PathBuf {
        self.data_dir.join("policy-active")
    }

    /// Token verification for operators: same issuers and algorithms, the
    /// control API's audience, and no agent required.
    pub fn operator_authn(&self) -> AuthnConfig {
        AuthnConfig {
            audience: self.gateway.operator_audience(),
            require_actor: false,
            ..self.authn.clone()
        }
    }

    /// Path of the embedded audit log.
    pub fn audit_path(&self) -> PathBuf {
        self.data_dir.join("audit.sqlite")
    }

    /// The audit store (`[audit] store`, default the embedded SQLite log).
    pub fn audit_store(&self) -> mandate_audit::Store {
        self.audit.store.clone()
    }
}

/// `[approvals.web]` → the approval page's sign-in settings.
fn web_config(w: &WebSection) -> Result<WebConfig> {
    let defaults = WebConfig::default();
    let idle = w
        .session_idle_secs
        .unwrap_or(defaults.session_idle.as_secs());
    let max = w.session_max_secs.unwrap_or(defaults.session_max.as_secs());
    if idle == 0 || idle > 86_400 {
        bail!("approvals.web.session_idle_secs must be between 1 and 86400");
    }
    if max < idle || max > 7 * 86_400 {
        bail!(
            "approvals.web.session_max_secs must be at least session_idle_secs and at most 604800"
        );
    }
    let mut local_accounts = Vec::new();
    for (i, a) in w.local_accounts.iter().enumerate() {
        if a.sub.trim().is_empty() || a.sub.trim() != a.sub || a.sub.chars().any(char::is_control) {
            bail!(
                "approvals.web.local_accounts[{i}].sub must be non-empty, without surrounding spaces or control characters"
            );
        }
        if w.local_accounts.iter().take(i).any(|b| b.sub == a.sub) {
            bail!("approvals.web.local_accounts: {:?} is listed twice", a.sub);
        }
        let password_hash = a.password_hash.parse().map_err(|e| {
            anyhow!(
                "approvals.web.local_accounts[{i}].password_hash: {e} (make one with `mandate approvals hash-password`)"
            )
        })?;
        local_accounts.push(LocalAccount {
            sub: a.sub.clone(),
            password_hash,
        });
    }
    let oidc = match &w.oidc {
        None => None,
        Some(o) => {
            let issuer_ok = reqwest::Url::parse(&o.issuer).is_ok_and(|u| {
                u.scheme() == "https"
                    || (u.scheme() == "http"
                        && u.host_str().is_some_and(|h| {
                            h == "localhost"
                                || h.trim_matches(['[', ']'])
                                    .parse::<std::net::IpAddr>()
                                    .is_ok_and(|ip| ip.is_loopback())
                        }))
            });
            if !issuer_ok {
                bail!(
                    "approvals.web.oidc.issuer {:?} must be an https URL (or http to a loopback host)",
                    o.issuer
                );
            }
            if o.client_id.trim().is_empty() {
                bail!("approvals.web.oidc.client_id must not be empty");
            }
            let client_secret = match &o.client_secret_env {
                None => None,
                Some(var) => {
                    let secret = std::env::var(var).map_err(|_| {
                        anyhow!("approvals.web.oidc.client_secret_env: the environment variable {var} is not set")
                    })?;
                    if secret.is_empty() {
                        bail!(
                            "approvals.web.oidc.client_secret_env: the environment variable {var} is empty"
                        );
                    }
                    Some(ClientSecret::new(secret))
                }
            };
            Some(OidcConfig {
                issuer: o.issuer.clone(),
                client_id: o.client_id.clone(),
                client_secret,
            })
        }
    };
    Ok(WebConfig {
        local_accounts,
        oidc,
        session_idle: Duration::from_secs(idle),
        session_max: Duration::from_secs(max),
    })
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Some(host.trim_matches(['[', ']']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let text = "[auth]\nissuers=[{issuer=\"x\", jwks_file=\"j\"}]\n[server]\nlisten=\"127.0.0.1:1\"\nbogus=1\n";
        let err = Config::parse(text, Path::new("m.toml"), &Overrides::default());
        assert!(err.is_err_and(|e| e.to_string().contains("bogus")));
    }

    #[test]
    fn upstream_needs_exactly_one_transport() {
        let text = "[auth]\nissuers=[{issuer=\"x\", jwks_file=\"j\"}]\n[upstreams.a]\ncommand=\"c\"\nurl=\"http://x\"\n";
        assert!(Config::parse(text, Path::new("m.toml"), &Overrides::default()).is_err());
    }

    #[test]
    fn approval_page_settings_are_checked() {
        let base = "[auth]\nissuers=[{issuer=\"x\", jwks_file=\"j\"}]\n";
        let parse = |extra: &str| {
            Config::parse(
                &format!("{base}{extra}"),
                Path::new("m.toml"),
                &Overrides::default(),
            )
        };
        let weak = "[[approvals.web.local_accounts]]\nsub=\"c\"\npassword_hash=\"pbkdf2-sha256$i=1000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n";
        assert!(parse(weak).is_err_and(|e| e.to_string().contains("iterations")));
        let unknown = "[approvals.web]\nbogus=1\n";
        assert!(parse(unknown).is_err_and(|e| e.to_string().contains("bogus")));
        let plain_http = "[approvals.web.oidc]\nissuer=\"http://idp.example\"\nclient_id=\"m\"\n";
        assert!(parse(plain_http).is_err_and(|e| e.to_string().contains("https")));
        let ok = "[approvals.web.oidc]\nissuer=\"https://idp.example\"\nclient_id=\"m\"\n\
                  [[operators]]\nsub=\"dana\"\nissuer=\"https://idp.example\"\nroles=[\"approver\"]\n";
        assert!(parse(ok).is_ok_and(|c| c.web.oidc.is_some()));
    }

    #[test]
    fn broker_sign_in_settings_are_checked() {
        let base = "[auth]\n[server]\npublic_url=\"https://mandate.example\"\n[broker]\n\
                    [broker.entitlements]\ndefault=\"docs.*\"\n";
        let parse = |extra: &str| {
            Config::parse(
                &format!("{base}{extra}"),
                Path::new("m.toml"),
                &Overrides::default(),
            )
        };
        let ok = "[broker.sign_in]\nissuer=\"https://idp.example\"\nclient_id=\"m\"\nscopes=\"docs.search\"\n";
        let cfg = parse(ok);
        let sign_in = cfg
            .as_ref()
            .ok()
            .and_then(|c| c.broker.as_ref())
            .and_then(|b| b.sign_in.as_ref());
        assert!(
            sign_in.is_some_and(|s| s.max_clients == 1000 && s.loopback_redirects),
            "{:?}",
            cfg.err()
        );
        let off = "[broker.sign_in]\nenabled=false\nissuer=\"https://idp.example\"\nclient_id=\"m\"\nscopes=\"docs.search\"\n";
        assert!(parse(off).is_ok_and(|c| c.broker.is_some_and(|b| b.sign_in.is_none())));
        let unknown = format!("{ok}bogus=1\n");
        assert!(parse(&unknown).is_err_and(|e| e.to_string().contains("bogus")));
        let plain_http = "[broker.sign_in]\nissuer=\"http://idp.example\"\nclient_id=\"m\"\nscopes=\"docs.search\"\n";
        assert!(parse(plain_http).is_err_and(|e| e.to_string().contains("https")));
        let unbounded = format!("{ok}max_clients=0\n");
        assert!(parse(&unbounded).is_err_and(|e| e.to_string().contains("max_clients")));
        let ttl = format!("{ok}token_ttl_secs=7200\n");
        assert!(parse(&ttl).is_err_and(|e| e.to_string().contains("token_ttl_secs")));
    }

    #[test]
    fn a_relative_data_dir_is_taken_from_the_config_files_folder() {
        if std::env::var_os(env::DATA_DIR).is_some() {
            // The environment overrides the file; nothing to check here.
            return;
        }
        let base = "[auth]\nissuers=[{issuer=\"x\", jwks_file=\"j\"}]\n";
        let load = |server: &str, path: &str, overrides: &Overrides| {
            Config::parse(&format!("{base}{server}"), Path::new(path), overrides)
                .map(|c| c.data_dir)
                .ok()
        };
        let none = Overrides::default();
        assert_eq!(
            load("", "/etc/mandate/mandate.toml", &none),
            Some(PathBuf::from("/etc/mandate/mandate-data"))
        );
        assert_eq!(
            load("[server]\ndata_dir=\"state\"\n", "conf/m.toml", &none),
            Some(PathBuf::from("conf/state"))
        );
        assert_eq!(
            load(
                "[server]\ndata_dir=\"{config_dir}/s\"\n",
                "conf/m.toml",
                &none
            ),
            Some(PathBuf::from("conf/s"))
        );
        assert_eq!(
            load(
                "[server]\ndata_dir=\"/var/lib/mandate\"\n",
                "conf/m.toml",
                &none
            ),
            Some(PathBuf::from("/var/lib/mandate"))
        );
        // A file in the working directory: as before.
        assert_eq!(
            load("", "m.toml", &none),
            Some(PathBuf::from("./mandate-data"))
        );
        // The command line is taken as given (relative to where it is run).
        let cli = Overrides {
            data_dir: Some(PathBuf::from("here")),
            ..Overrides::default()
        };
        assert_eq!(load("", "conf/m.toml", &cli), Some(PathBuf::from("here")));
    }

    #[test]
    fn bad_tool_class_is_named() {
        let text = "[auth]\nissuers=[{issuer=\"x\", jwks_file=\"j\"}]\n[upstreams.a]\ncommand=\"c\"\ntools={t=\"sometimes\"}\n";
        let err = Config::parse(text, Path::new("m.toml"), &Overrides::default());
        assert!(err.is_err_and(|e| e.to_string().contains("upstreams.a.tools.t")));
    }
}
