//! Mandate's policy enforcement point: an MCP gateway.
//!
//! Agents speak MCP to the gateway (Streamable HTTP at `/mcp`, or stdio);
//! the gateway speaks MCP to upstream servers (stdio child processes or
//! Streamable HTTP). Every request is authenticated, every `tools/call` is
//! decided by the policy engine and recorded durably before it is
//! forwarded, and `tools/list` shows only what the subject may call.
//!
//! Reading order: [`http`] (authentication and session binding per HTTP
//! request), [`handler`] (the MCP server surface), `pipeline` (the
//! per-call enforcement steps), `upstream` (the MCP client side),
//! `approvals` (the hold: a call waiting for a person).
//!
//! The operator plane (the approval page, the `/api` control, approvals
//! and audit APIs) is the `mandate-operator` crate; it reads and changes
//! the gateway only through the public methods here (the control store,
//! [`Gateway::record_control`], [`Gateway::wake_held`],
//! [`Gateway::approve_tool`], ...).
//!
//! # The chain of types
//!
//! Nothing reaches an upstream except through the forwarder, which takes
//! only a `Permitted<ToolCall>`; the pipeline makes one (`permit.rs`) only from a
//! `mandate_authn::Principal` (made only by mandate-authn from a verified
//! token), an `Allow` `mandate_policy::Decision` for that caller and call
//! (made only by the policy engine) and the `mandate_audit::Appended`
//! receipt of its durable record (made only by the audit log). Code outside
//! this crate can reach neither the forwarder nor the permit:
//!
//! ```compile_fail,E0603
//! // The MCP client side is private: no path to an upstream from outside.
//! use mandate_gateway::upstream::Upstream;
//! ```
//!
//! ```compile_fail,E0603
//! // Nor can a permit be named, let alone built.
//! use mandate_gateway::permit::Permitted;
//! ```

mod approvals;
pub mod builds;
pub mod config;
mod dpop;
pub mod error;
pub mod handler;
pub mod http;
mod intent;
mod metrics;
mod permit;
mod pinning;
mod pipeline;
pub mod provenance;
mod records;
pub mod redaction;
pub mod server;
mod sessions;
mod tasks;
mod upstream;

pub use config::{
    ApprovalConfig, GatewayConfig, Isolation, Limits, OperatorConfig, Role, Transport,
    UpstreamConfig,
};
pub use error::UpstreamError;
pub use metrics::Metrics;
pub use pipeline::{Incoming, META_DECISION};
pub use records::AuditUnavailable;
pub use server::{ConnectionLimits, ConnectionStats};
pub use sessions::SessionStats;
pub use upstream::{META_CORRELATION, TraceHttpClient};

use dashmap::DashMap;
use mandate_audit::AuditLog;
use mandate_authn::{Authenticator, AuthnError, Principal};
use mandate_control::ControlStore;
use mandate_core::{Clock, ToolName};
use mandate_policy::{DecisionRequest, PolicyEngine, SessionFacts};
use pipeline::Resolved;
use rmcp::model::Tool;
use rmcp::{Peer, RoleServer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use upstream::{Events, Upstream};

/// Per-Mandate-session state (keyed by the token's `sid`), never shared
/// across sessions (F-04).
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) calls: u64,
    /// Latest expiry of any token seen for the session.
    pub(crate) exp: u64,
    pub(crate) taint: BTreeSet<String>,
    /// The tools whose untrusted, sensitive or suspicious results entered the
    /// session, in order (bounded), for the people asked to approve.
    pub(crate) sources: Vec<String>,
    /// Permitted calls per exposed tool name.
    pub(crate) per_tool: std::collections::HashMap<String, u64>,
    /// Unix seconds of the permitted calls of the last minute (bounded).
    pub(crate) recent: std::collections::VecDeque<i64>,
    /// The values results introduced, by provenance (`intent.rs`).
    pub(crate) values: Option<mandate_provenance::SessionValues>,
    /// The session's history predates this process (restored after a
    /// restart): what it read cannot be placed any more.
    pub(crate) values_lost: bool,
}

/// Per-task usage (keyed by issuer, user and task id), for task budgets.
#[derive(Debug, Default)]
pub(crate) struct TaskState {
    pub(crate) calls: u64,
    /// Sum of the `amount` argument of permitted `financial` calls.
    pub(crate) amount: i64,
    /// Latest expiry of any token seen for the task.
    pub(crate) exp: u64,
}

/// The planes a gateway enforces with.
pub struct Planes {
    /// Verifies agents' (composite) tokens for `/mcp`.
    pub authn: Arc<Authenticator>,
    /// Verifies operators' tokens for `/api` (audience `<public_url>/api`).
    pub operator_authn: Arc<Authenticator>,
    /// The policy decision point.
    pub policy: Arc<PolicyEngine>,
    /// The audit log.
    pub audit: AuditLog,
    /// Kill switches and the change gate.
    pub control: Arc<ControlStore>,
    /// The wall clock (`Clock::system()` outside tests).
    pub clock: Clock,
}

/// The gateway: configuration plus the planes it enforces with.
pub struct Gateway {
    cfg: GatewayConfig,
    authn: Arc<Authenticator>,
    operator_authn: Arc<Authenticator>,
    policy: Arc<PolicyEngine>,
    audit: AuditLog,
    control: Arc<ControlStore>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    sessions: DashMap<String, SessionState>,
    tasks: DashMap<String, TaskState>,
    /// Unix seconds after which usage of expired sessions and tasks is
    /// next pruned (`pipeline.rs`).
    next_usage_prune: std::sync::atomic::AtomicI64,
    validators: DashMap<String, (Arc<rmcp::model::JsonObject>, Arc<jsonschema::Validator>)>,
    peers: Mutex<Vec<Peer<RoleServer>>>,
    metrics: Arc<Metrics>,
    /// Held calls waiting in this process.
    waiters: approvals::Waiters,
    /// Held calls answered as MCP tasks.
    mcp_tasks: tasks::Tasks,
    /// Tool pin verdicts by exposed name, with the catalogue entry's schema
    /// (identity) and the fingerprint they judged.
    pin_verdicts: DashMap<String, pinning::Verdict>,
    /// Held while a tool is judged against the pin store, so that callers
    /// racing on a tool's first use record one pin, not one each.
    pin_judging: tokio::sync::Mutex<()>,
    /// For approval webhooks.
    webhook_client: reqwest::Client,
    /// This process's id, recorded as the holder of its held calls.
    instance: String,
    /// Registered builds of the broker's tokens (`builds.rs`).
    build_policy: arc_swap::ArcSwap<Option<builds::BuildPolicy>>,
    /// Manifest verdicts by build hash (`builds.rs`).
    manifest_verdicts: DashMap<String, builds::ManifestVerdict>,
    /// DPoP proof verification for sender-constrained tokens (`http.rs`).
    dpop: std::sync::OnceLock<Arc<mandate_authn::dpop::DpopVerifier>>,
    /// Tool calls in flight per subject (bounded).
    slots: Arc<CallSlots>,
    /// Task intents by task key, with when they were read (`intent.rs`).
    intents: DashMap<String, (i64, Option<Arc<mandate_control::TaskIntent>>)>,
    /// The one wall clock (`Planes::clock`).
    clock: Clock,
}

/// Tool calls in flight per subject (issuer and `sub`), each bounded, so
/// one token cannot tie up the gateway with held or slow calls.
pub(crate) struct CallSlots {
    inflight: DashMap<String, usize>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One call's slot, given back when dropped.
pub(crate) struct CallSlot {
    slots: Arc<CallSlots>,
    key: String,
}

impl CallSlots {
    /// A slot for one more call of `subject`, unless it is at its cap.
    pub(crate) fn try_acquire(self: &Arc<Self>, subject: String) -> Option<CallSlot> {
        let mut entry = self.inflight.entry(subject.clone()).or_insert(0);
        if *entry >= self.max {
            return None;
        }
        if *entry == 0 {
            self.metrics
                .busy_subjects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *entry += 1;
        drop(entry);
        Some(CallSlot {
            slots: self.clone(),
            key: subject,
        })
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let emptied = self
            .slots
            .inflight
            .remove_if_mut(&self.key, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            })
            .is_some();
        if emptied {
            self.slots
                .metrics
                .busy_subjects
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Gateway {
    /// Builds a gateway. Upstreams connect lazily, on first use.
    pub fn new(cfg: GatewayConfig, planes: Planes) -> Arc<Self> {
        let Planes {
            authn,
            operator_authn,
            policy,
            audit,
            control,
            clock,
        } = planes;
        let events = Arc::new(Events::default());
        let upstreams = cfg
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    Arc::new(Upstream::new(u.clone(), events.clone())),
                )
            })
            .collect();
        let metrics = Arc::new(Metrics::default());
        let slots = Arc::new(CallSlots {
            inflight: DashMap::new(),
            max: cfg.limits.max_concurrent_calls_per_subject.max(1),
            metrics: metrics.clone(),
        });
        let gw = Arc::new(Self {
            cfg,
            slots,
            intents: DashMap::new(),
            authn,
            operator_authn,
            policy,
            audit,
            control,
            upstreams,
            sessions: DashMap::new(),
            tasks: DashMap::new(),
            next_usage_prune: std::sync::atomic::AtomicI64::new(0),
            validators: DashMap::new(),
            peers: Mutex::new(Vec::new()),
            metrics,
            waiters: approvals::Waiters::default(),
            mcp_tasks: tasks::Tasks::new(clock.clone()),
            pin_verdicts: DashMap::new(),
            pin_judging: tokio::sync::Mutex::new(()),
            webhook_client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            instance: format!("gw-{}", uuid::Uuid::now_v7()),
            build_policy: arc_swap::ArcSwap::from_pointee(None),
            manifest_verdicts: DashMap::new(),
            dpop: std::sync::OnceLock::new(),
            clock,
        });
        let weak = Arc::downgrade(&gw);
        events.on_list_changed(Arc::new(move |upstream: String| {
            if let Some(gw) = weak.upgrade() {
                tokio::spawn(async move { gw.upstream_tools_changed(&upstream).await });
            }
        }));
        gw
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The token verifier.
    pub fn authn(&self) -> &Authenticator {
        &self.authn
    }

    /// The operator token verifier (control API).
    pub fn operator_authn(&self) -> &Authenticator {
        &self.operator_authn
    }

    /// Kill switches and the change gate.
    pub fn control(&self) -> &Arc<ControlStore> {
        &self.control
    }

    /// The wall clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Verifies an agent's bearer token. The verifier itself narrows the
    /// scope to the ceilings in force (`Authenticator::with_ceilings`).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthnError> {
        self.authn.verify(token).await
    }

    /// The policy engine.
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Connects to every upstream and lists its tools; for `serve --check`.
    /// Returns one line per upstream, or the first failure.
    pub async fn probe_upstreams(&self) -> Result<Vec<String>, UpstreamError> {
        let mut lines = Vec::new();
        for (name, u) in &self.upstreams {
            let n = u.probe().await?;
            let classified = u.config().tools.len();
            lines.push(format!(
                "upstream {name}: reachable, {n} tools ({classified} classified in config)"
            ));
        }
        Ok(lines)
    }

    /// Every tool of every upstream, with its configured class (`None`:
    /// unclassified, denied), for tooling such as `mandate policy args`.
    pub async fn catalogue(
        &self,
    ) -> Result<Vec<(String, Option<mandate_core::ToolClass>, Tool)>, UpstreamError> {
        let mut out = Vec::new();
        for (name, u) in &self.upstreams {
            for tool in u.tools().await?.iter() {
                out.push((
                    format!("{name}.{}", tool.name),
                    u.config().class_of(&tool.name),
                    tool.clone(),
                ));
            }
        }
        Ok(out)
    }

    /// An operator (`by`) approves the current form of the tool exposed as
    /// `exposed` (`POST /api/tools/{name}/approve`): recorded, then pinned
    /// as approved. `Ok(None)`: no such tool in the upstreams' current
    /// catalogues. `Err`: the audit or the pin store is unavailable (why,
    /// for the log and the audit record).
    pub async fn approve_tool(
        &self,
        exposed: &str,
        by: &str,
        comment: Option<&str>,
    ) -> Result<Option<mandate_control::ToolPin>, String> {
        let Resolved::Known {
            tool: Some(tool), ..
        } = self.resolve(exposed).await
        else {
            return Ok(None);
        };
        let fp = pinning::fingerprint(&tool);
        let description = tool.description.as_deref().unwrap_or_default();
        let reason = format!(
            "approved by {by}{}",
            comment.map(|c| format!(": {c}")).unwrap_or_default()
        );
        self.record_pin(exposed, &fp, description, true, &reason, by)
            .await
            .map(Some)
    }

    /// Looks up an exposed `upstream.tool` name.
    pub(crate) async fn resolve(&self, exposed: &str) -> Resolved {
        let Some(name) = ToolName::parse(exposed) else {
            return Resolved::Unknown;
        };
        let Some(upstream) = self.upstreams.get(&name.upstream) else {
            return Resolved::Unknown;
        };
        let class = upstream.config().class_of(&name.tool);
        match upstream.tools().await {
            Ok(tools) => match tools.iter().find(|t| t.name == name.tool) {
                Some(tool) => Resolved::Known {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    class,
                    tool: Some(Box::new(tool.clone())),
                },
                None => Resolved::Unknown,
            },
            // The catalogue is unreadable: the name may be real, so this is a
            // (fail-closed) deny rather than "unknown".
            Err(e) => {
                tracing::warn!(error = %e, "tool catalogue unavailable");
                Resolved::Known {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    class,
                    tool: None,
                }
            }
        }
    }

    /// Validates arguments against the tool's input schema (compiled once per
    /// schema version).
    pub(crate) fn validate_args(
        &self,
        exposed: &str,
        tool: &Tool,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        // The cache entry holds the schema's Arc, so pointer equality means
        // "the same catalogue entry" (it cannot be freed and reused).
        // The cache lookup is its own statement: a `match` on `get()` would
        // keep the shard's read lock alive into the arm that inserts, and
        // DashMap locks are not reentrant (the worker thread would block
        // forever once a catalogue refresh replaced the schema).
        let cached = self
            .validators
            .get(exposed)
            .filter(|v| Arc::ptr_eq(&v.0, &tool.input_schema))
            .map(|v| v.1.clone());
        let validator = match cached {
            Some(v) => v,
            None => {
                let schema = serde_json::Value::Object((*tool.input_schema).clone());
                let compiled = jsonschema::validator_for(&schema)
                    .map_err(|e| format!("the tool's input schema is invalid: {e}"))?;
                let compiled = Arc::new(compiled);
                self.validators.insert(
                    exposed.to_owned(),
                    (tool.input_schema.clone(), compiled.clone()),
                );
                compiled
            }
        };
        let instance = serde_json::Value::Object(args.clone());
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .take(3)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The tools this subject may call: configured, in scope, not
    /// quarantined, and allowed by policy for some arguments (Cedar's
    /// partial evaluation with the arguments unknown); the call itself is
    /// decided on its own arguments.
    pub async fn list_tools(&self, principal: &Principal) -> Vec<Tool> {
        if self.control.check(&principal.caller()).is_some() {
            return Vec::new();
        }
        let facts = SessionFacts::default();
        let now = self.now_unix();
        let mut out = Vec::new();
        for (name, upstream) in &self.upstreams {
            let tools = match upstream.tools().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "cannot list upstream tools");
                    continue;
                }
            };
            for tool in tools.iter() {
                let exposed = format!("{name}.{}", tool.name);
                let Some(class) = upstream.config().class_of(&tool.name) else {
                    continue;
                };
                if !principal.scope().covers(&exposed) || self.vet(&exposed, tool).await.is_err() {
                    continue;
                }
                let tool_name = ToolName {
                    upstream: name.clone(),
                    tool: tool.name.to_string(),
                };
                let call = mandate_core::ToolCall::new(tool_name, class, Default::default());
                // Listed when some arguments could be allowed: a model cannot
                // call a tool it was never shown, and every call is decided
                // on its own arguments anyway.
                let listable = self.policy.may_allow(&DecisionRequest {
                    caller: principal.caller(),
                    call: &call,
                    session: &facts,
                    now_unix: now,
                });
                if !listable {
                    continue;
                }
                let mut shown = tool.clone();
                shown.name = exposed.into();
                out.push(shown);
            }
        }
        out
    }

    /// Remembers a connected client so it hears `tools/list_changed`.
    pub(crate) fn register_peer(&self, peer: Peer<RoleServer>) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.retain(|p| !p.is_transport_closed());
            peers.push(peer);
        }
    }

    async fn upstream_tools_changed(&self, upstream: &str) {
        if let Some(u) = self.upstreams.get(upstream) {
            u.invalidate_tools().await;
        }
        let peers: Vec<_> = match self.peers.lock() {
            Ok(mut peers) => {
                peers.retain(|p| !p.is_transport_closed());
                peers.clone()
            }
            Err(_) => return,
        };
        for peer in peers {
            if let Err(e) = peer.notify_tool_list_changed().await {
                tracing::debug!(error = %e, "could not notify client of tool list change");
            }
        }
    }
}
