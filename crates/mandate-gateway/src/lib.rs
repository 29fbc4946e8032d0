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
mod catalogue;
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
mod restore;
pub mod server;
mod sessions;
mod tasks;
pub mod trace;
mod upstream;
mod usage;

pub use config::{
    ApprovalConfig, GatewayConfig, Isolation, Limits, OperatorConfig, Role, Transport,
    UpstreamConfig,
};
pub use error::UpstreamError;
pub use metrics::{Format as MetricsFormat, Metrics};
pub use pipeline::{Incoming, META_DECISION};
pub use records::AuditUnavailable;
pub use server::{ConnectionLimits, ConnectionStats};
pub use sessions::SessionStats;
pub use upstream::{META_CORRELATION, TraceHttpClient};

use dashmap::DashMap;
use mandate_audit::AuditLog;
use mandate_authn::{Authenticator, AuthnError, Principal};
use mandate_control::ControlStore;
use mandate_core::Clock;
use mandate_policy::PolicyEngine;
use std::sync::Arc;
use upstream::Events;

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
    /// The upstreams, their tool catalogues and the clients told when one
    /// changes (`catalogue.rs`).
    catalogue: catalogue::Catalogue,
    /// Per-session and per-task usage, and the per-subject call slots
    /// (`usage.rs`).
    usage: usage::Usage,
    metrics: Arc<Metrics>,
    /// Held calls, their wake-ups and the approval webhook (`approvals.rs`).
    holds: approvals::Holds,
    /// Held calls answered as MCP tasks.
    mcp_tasks: tasks::Tasks,
    /// Tool pin verdicts (`pinning.rs`).
    pins: pinning::Pins,
    /// Registered builds and manifest verdicts (`builds.rs`).
    builds: builds::Builds,
    /// DPoP proof verification for sender-constrained tokens (`http.rs`).
    dpop: std::sync::OnceLock<Arc<mandate_authn::dpop::DpopVerifier>>,
    /// Task intents by task key, with when they were read (`intent.rs`).
    intents: DashMap<String, (i64, Option<Arc<mandate_control::TaskIntent>>)>,
    /// The one wall clock (`Planes::clock`).
    clock: Clock,
    /// Cancelled when the process is stopping: `/readyz` answers 503 and
    /// held calls are answered `shutting_down` from then.
    draining: tokio_util::sync::CancellationToken,
    /// Whether anything (a load balancer, a probe) asked `/readyz`: only
    /// then is a stop worth delaying until it has seen "not ready".
    readiness_watched: std::sync::atomic::AtomicBool,
    /// Why this replica is not enforcing the policy set in force in the
    /// shared control store (not yet compared, or it could not be
    /// installed); calls are denied meanwhile.
    policy_behind: std::sync::RwLock<Option<String>>,
    /// With replicas sharing the audit log and the control store: what
    /// each session did on other replicas is read before its next call
    /// (`restore.rs`).
    tail: Option<Arc<mandate_audit::SessionTail>>,
}

impl Gateway {
    /// Marks the gateway as stopping: `/readyz` answers 503 from now on, so
    /// a load balancer sends no new calls while those in flight finish, and
    /// every held call is answered `shutting_down` at once, its approval
    /// request closed (withdrawn) so that nobody approves a call no process
    /// holds any more.
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Whether [`begin_drain`](Gateway::begin_drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Notes that `/readyz` was asked.
    pub(crate) fn note_readiness_asked(&self) {
        self.readiness_watched
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `/readyz` was ever asked: a stop then keeps serving for
    /// `limits.drain_delay_ms` after readiness turned "not ready", so the
    /// load balancer stops sending before the listener closes.
    pub fn readiness_watched(&self) -> bool {
        self.readiness_watched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks this replica as not (or again) enforcing the policy set in
    /// force among replicas: while `why` is set, every call is denied and
    /// `/readyz` answers 503.
    pub fn set_policy_behind(&self, why: Option<String>) {
        if let Ok(mut behind) = self.policy_behind.write() {
            *behind = why;
        }
    }

    /// Why the policy set in force among replicas is not enforced here, if
    /// it is not (a poisoned lock counts as behind: fail closed).
    pub fn policy_behind(&self) -> Option<String> {
        match self.policy_behind.read() {
            Ok(behind) => behind.clone(),
            Err(_) => Some("the policy state lock is poisoned".to_owned()),
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
        let catalogue = catalogue::Catalogue::new(&cfg.upstreams, &events);
        let metrics =
            Arc::new(Metrics::new(cfg.limits.max_tool_labels).watch(audit.stats(), policy.clone()));
        let usage = usage::Usage::new(cfg.limits.max_concurrent_calls_per_subject, metrics.clone());
        let replicas = matches!(audit.store(), mandate_audit::Store::Postgres { .. })
            && control.poll_every().is_some();
        let tail =
            replicas.then(|| Arc::new(mandate_audit::SessionTail::new(audit.store().clone())));
        let mcp_tasks = tasks::Tasks::new(clock.clone(), control.clone());
        let gw = Arc::new(Self {
            cfg,
            usage,
            intents: DashMap::new(),
            authn,
            operator_authn,
            policy,
            audit,
            control,
            catalogue,
            metrics,
            holds: approvals::Holds::new(),
            mcp_tasks,
            pins: pinning::Pins::default(),
            builds: builds::Builds::default(),
            dpop: std::sync::OnceLock::new(),
            clock,
            draining: tokio_util::sync::CancellationToken::new(),
            readiness_watched: std::sync::atomic::AtomicBool::new(false),
            policy_behind: std::sync::RwLock::new(None),
            tail,
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
}
