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
use mandate_core::Clock;
use mandate_policy::PolicyEngine;
use std::collections::BTreeSet;
use std::sync::Arc;
use upstream::Events;

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
    /// The upstreams, their tool catalogues and the clients told when one
    /// changes (`catalogue.rs`).
    catalogue: catalogue::Catalogue,
    sessions: DashMap<String, SessionState>,
    tasks: DashMap<String, TaskState>,
    /// Unix seconds after which usage of expired sessions and tasks is
    /// next pruned (`pipeline.rs`).
    next_usage_prune: std::sync::atomic::AtomicI64,
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
        let catalogue = catalogue::Catalogue::new(&cfg.upstreams, &events);
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
            catalogue,
            sessions: DashMap::new(),
            tasks: DashMap::new(),
            next_usage_prune: std::sync::atomic::AtomicI64::new(0),
            metrics,
            holds: approvals::Holds::new(),
            mcp_tasks: tasks::Tasks::new(clock.clone()),
            pins: pinning::Pins::default(),
            builds: builds::Builds::default(),
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
}
