//! The gateway's metrics: one `prometheus_client` registry, rendered in
//! the Prometheus text format or, when the scraper asks for it, in
//! OpenMetrics. Every series, its labels and buckets are listed in
//! docs/OBSERVABILITY.md.
//!
//! Label values come from small fixed sets (phases, effects, reason codes,
//! upstream error kinds, hold outcomes) except the tool name, which is
//! bounded: the first [`Metrics::new`]`(max_tools)` tools seen get their
//! own label value, later ones are counted as [`OTHER_TOOL`].

use crate::server::ConnectionStats;
use crate::sessions::SessionStats;
use mandate_audit::AuditStats;
use mandate_policy::{Decision, PolicyEngine};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The tool label of every tool past the bound.
pub const OTHER_TOOL: &str = "other";
/// The tool label of a call to a tool no upstream serves (its name is the
/// caller's to choose, so it never becomes a label).
pub const UNKNOWN_TOOL: &str = "unknown";
/// The tool label of a request that is not a single `tools/call`, or was
/// refused before its body was read (the authenticate phase only).
pub const NO_TOOL: &str = "none";

/// Upper bounds (seconds) of the phase histogram: 100 µs to 30 s.
const PHASE_BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];
/// Upper bounds (seconds) of the approval wait histogram: 1 s to 1 h.
const WAIT_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Upper bounds (seconds) of the audit commit histogram: 100 µs to 5 s.
const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A step of a tool call's road through the gateway, timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(serialize_all = "snake_case")]
pub(crate) enum Phase {
    /// The bearer (or DPoP) token verified.
    Authenticate,
    /// The checks before the policy (expiry, revocation, scope, pins,
    /// schema), the intent and provenance facts, and the policy decision.
    Decide,
    /// Waiting for a person (held calls only).
    Hold,
    /// The durable audit append of the decision.
    Record,
    /// The upstream call.
    Forward,
    /// Labelling and scanning the result.
    Sanitise,
}

/// How long authenticating an HTTP request took (a request extension): the
/// handler records it under the called tool's label once the pipeline has
/// given that tool one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthTook(pub(crate) Duration);

/// A tool's label value: its name, [`OTHER_TOOL`], [`UNKNOWN_TOOL`] or
/// [`NO_TOOL`]. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ToolLabel(Arc<str>);

impl ToolLabel {
    fn fixed(name: &str) -> Self {
        Self(Arc::from(name))
    }

    /// The label value.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for ToolLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
    tool: ToolLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    effect: &'static str,
    reason: String,
    tool: ToolLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// The tool names that have a label value of their own (at most `max`).
#[derive(Debug)]
struct ToolNames {
    max: usize,
    known: RwLock<HashMap<Arc<str>, ToolLabel>>,
    other: ToolLabel,
    unknown: ToolLabel,
    none: ToolLabel,
}

impl ToolNames {
    fn new(max: usize) -> Self {
        Self {
            max,
            known: RwLock::new(HashMap::new()),
            other: ToolLabel::fixed(OTHER_TOOL),
            unknown: ToolLabel::fixed(UNKNOWN_TOOL),
            none: ToolLabel::fixed(NO_TOOL),
        }
    }

    /// `name`'s label, taking a free slot if it has none yet.
    fn label(&self, name: &str) -> ToolLabel {
        if let Some(label) = self.lookup(name) {
            return label;
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = known.get(name) {
            return label.clone();
        }
        if known.len() >= self.max {
            return self.other.clone();
        }
        let label = ToolLabel(Arc::from(name));
        known.insert(label.0.clone(), label.clone());
        label
    }

    /// `name`'s label if it has one, else [`OTHER_TOOL`] (takes no slot).
    fn existing(&self, name: &str) -> ToolLabel {
        self.lookup(name).unwrap_or_else(|| self.other.clone())
    }

    fn lookup(&self, name: &str) -> Option<ToolLabel> {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

/// The gateway's metrics. Counters the rest of the crate bumps are public
/// fields; labelled series are reached through methods.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tools: ToolNames,
    /// Requests refused for a missing or invalid token.
    pub auth_failures: Counter,
    /// Requests refused for scope (HTTP 403).
    pub scope_refusals: Counter,
    /// Requests refused because the session belongs to another subject.
    pub session_refusals: Counter,
    /// Audit appends that failed.
    pub audit_failures: Counter,
    /// Tool results in which injection patterns or hidden content were found.
    pub injection_findings: Counter,
    /// Tool calls refused because their subject had too many in flight.
    pub concurrency_refusals: Counter,
    /// Calls not forwarded because a concurrent call of their session on
    /// another replica came first in the shared log (`restore.rs`).
    pub(crate) rechecks_refused: Counter,
    /// Approval requests closed because no process held their call any
    /// more (`approvals.rs`).
    pub(crate) holds_orphaned: Counter,
    decisions: Family<DecisionLabels, Counter>,
    phases: HistogramFamily<PhaseLabels>,
    upstream_errors: Family<KindLabels, Counter>,
    approvals_pending: Gauge,
    approval_wait: HistogramFamily<OutcomeLabels>,
    audit_commit: Histogram,
    /// HTTP connections (`server.rs`).
    pub connections: Arc<ConnectionStats>,
    /// MCP transport sessions (`sessions.rs`).
    pub sessions: Arc<SessionStats>,
    /// Subjects with tool calls in flight now.
    pub(crate) busy_subjects: Arc<AtomicU64>,
    /// Rows of the control store's `ephemeral` table, by kind.
    shared_state: Family<Vec<(&'static str, &'static str)>, Gauge>,
}

/// How `/metrics` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, ending in `# EOF`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names
    /// `application/openmetrics-text` (with a non-zero `q`), else
    /// Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';');
                let essence = parts.next().unwrap_or_default().trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                essence.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

impl Metrics {
    /// A registry with every series; at most `max_tools` tool label values.
    pub fn new(max_tools: usize) -> Self {
        let mut registry = Registry::with_prefix("mandate");
        let connections = Arc::new(ConnectionStats::default());
        let sessions = Arc::new(SessionStats::default());
        let busy_subjects = Arc::new(AtomicU64::new(0));
        let metrics = Self {
            tools: ToolNames::new(max_tools),
            auth_failures: Counter::default(),
            scope_refusals: Counter::default(),
            session_refusals: Counter::default(),
            audit_failures: Counter::default(),
            injection_findings: Counter::default(),
            concurrency_refusals: Counter::default(),
            rechecks_refused: Counter::default(),
            holds_orphaned: Counter::default(),
            decisions: Family::default(),
            phases: Family::new_with_constructor(phase_histogram as fn() -> Histogram),
            upstream_errors: Family::default(),
            approvals_pending: Gauge::default(),
            approval_wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
            audit_commit: Histogram::new(COMMIT_BUCKETS),
            connections: connections.clone(),
            sessions: sessions.clone(),
            busy_subjects: busy_subjects.clone(),
            shared_state: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "shared_state_rows",
            "Live rows of short-lived shared state in the control store, by kind (read at each scrape)",
            metrics.shared_state.clone(),
        );
        registry.register(
            "decisions",
            "Tool-call decisions by effect (allow, deny, hold), reason code and tool",
            metrics.decisions.clone(),
        );
        registry.register_with_unit(
            "phase_duration",
            "Time a tool call spent in each phase of the pipeline",
            Unit::Seconds,
            metrics.phases.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for a missing or invalid token",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "scope_refusals",
            "Requests refused with insufficient_scope",
            metrics.scope_refusals.clone(),
        );
        registry.register(
            "session_refusals",
            "Requests refused because the session is bound to another subject",
            metrics.session_refusals.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit appends that failed",
            metrics.audit_failures.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream calls that failed or timed out, by kind",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "injection_findings",
            "Tool results with injection patterns or hidden content",
            metrics.injection_findings.clone(),
        );
        registry.register(
            "concurrency_refusals",
            "Tool calls refused because their subject had too many in flight",
            metrics.concurrency_refusals.clone(),
        );
        registry.register(
            "replica_rechecks_refused",
            "Calls not forwarded after their decision record because a call of the same session let through on another replica came first in the shared log and, counted, refuses them",
            metrics.rechecks_refused.clone(),
        );
        registry.register(
            "approvals_orphaned",
            "Approval requests withdrawn because no process held their call any more (its replica stopped without closing them)",
            metrics.holds_orphaned.clone(),
        );
        registry.register(
            "approvals_pending",
            "Calls held in this process waiting for a person",
            metrics.approvals_pending.clone(),
        );
        registry.register_with_unit(
            "approval_wait",
            "How long held calls waited, by how the hold ended",
            Unit::Seconds,
            metrics.approval_wait.clone(),
        );
        registry.register_with_unit(
            "audit_commit",
            "Duration of each committed audit transaction (writes, commit, fsync)",
            Unit::Seconds,
            metrics.audit_commit.clone(),
        );
        registry.register_collector(Box::new(Transport {
            connections,
            sessions,
            busy_subjects,
        }));
        Self {
            registry,
            ..metrics
        }
    }

    /// Adds the series read from the audit log and the policy engine at
    /// each scrape, and times the audit log's commits.
    pub fn watch(mut self, audit: AuditStats, policy: Arc<PolicyEngine>) -> Self {
        let commits = self.audit_commit.clone();
        audit.on_commit(move |took| commits.observe(took.as_secs_f64()));
        self.registry
            .register_collector(Box::new(Planes { audit, policy }));
        self
    }

    /// Reads how many rows of each kind of short-lived shared state the
    /// control store holds (a kind it cannot count keeps its last value).
    pub async fn count_shared_state(&self, control: &mandate_control::ControlStore) {
        for kind in mandate_control::ephemeral::Kind::ALL {
            if let Ok(n) = control.count_ephemeral(kind).await {
                self.shared_state
                    .get_or_create(&vec![("kind", kind.as_str())])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Every series, in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a
        // bug, and a partial page is still better than none.
        let encoded = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        if let Err(e) = encoded {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }

    /// The label of a tool the gateway serves (takes a slot if free).
    pub(crate) fn tool(&self, name: &str) -> ToolLabel {
        self.tools.label(name)
    }

    /// The label of a name not (yet) resolved: its own if it has one
    /// already, else [`OTHER_TOOL`]. Takes no slot.
    pub(crate) fn tool_seen(&self, name: &str) -> ToolLabel {
        self.tools.existing(name)
    }

    /// The label of a tool no upstream serves.
    pub(crate) fn unknown_tool(&self) -> ToolLabel {
        self.tools.unknown.clone()
    }

    /// The label of a request that names no single tool.
    pub(crate) fn no_tool(&self) -> ToolLabel {
        self.tools.none.clone()
    }

    /// Counts a final decision: `allow` (reason `approved` when a person
    /// approved it, else `permitted`) or `deny` with the refusal's code.
    pub(crate) fn count_decision(&self, decision: &Decision, deny_code: &str, tool: &ToolLabel) {
        let (effect, reason) = if decision.is_allow() {
            let reason = if decision.decided_as_approved() {
                "approved"
            } else {
                "permitted"
            };
            ("allow", reason)
        } else {
            ("deny", deny_code)
        };
        self.count(effect, reason, tool);
    }

    /// Counts a call put on hold for a person.
    pub(crate) fn count_hold(&self, tool: &ToolLabel) {
        self.count("hold", "approval_required", tool);
    }

    fn count(&self, effect: &'static str, reason: &str, tool: &ToolLabel) {
        self.decisions
            .get_or_create(&DecisionLabels {
                effect,
                reason: reason.to_owned(),
                tool: tool.clone(),
            })
            .inc();
    }

    /// Times `phase` of a call to `tool` until the guard is dropped.
    pub(crate) fn time(&self, phase: Phase, tool: &ToolLabel) -> PhaseTimer<'_> {
        PhaseTimer {
            metrics: self,
            phase,
            tool: tool.clone(),
            started: Instant::now(),
        }
    }

    /// Records a phase timed by other means.
    pub(crate) fn observe_phase(&self, phase: Phase, tool: &ToolLabel, took: Duration) {
        self.phases
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
                tool: tool.clone(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a failed upstream call; `kind` is its audit outcome.
    pub(crate) fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// A call starts waiting for a person; the guard ends the wait.
    pub(crate) fn hold_started(&self) -> HoldTimer<'_> {
        self.approvals_pending.inc();
        HoldTimer {
            metrics: self,
            started: Instant::now(),
            outcome: "withdrawn",
        }
    }
}

/// Times one phase; records on drop, so early returns are timed too.
#[must_use = "the phase is timed until the guard is dropped"]
pub(crate) struct PhaseTimer<'a> {
    metrics: &'a Metrics,
    phase: Phase,
    tool: ToolLabel,
    started: Instant,
}

impl Drop for PhaseTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .observe_phase(self.phase, &self.tool, self.started.elapsed());
    }
}

/// One held call in `mandate_approvals_pending`; on drop it leaves the
/// gauge and its wait is recorded under its outcome (`withdrawn` unless
/// [`HoldTimer::ended`] said otherwise: a hold dropped unfinished was
/// abandoned by its client).
#[must_use = "the call counts as pending until the guard is dropped"]
pub(crate) struct HoldTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
    outcome: &'static str,
}

impl HoldTimer<'_> {
    /// How the hold ended.
    pub(crate) fn ended(&mut self, outcome: &'static str) {
        self.outcome = outcome;
    }
}

impl Drop for HoldTimer<'_> {
    fn drop(&mut self) {
        self.metrics.approvals_pending.dec();
        self.metrics
            .approval_wait
            .get_or_create(&OutcomeLabels {
                outcome: self.outcome,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Connection and session figures kept as atomics by their owners.
#[derive(Debug)]
struct Transport {
    connections: Arc<ConnectionStats>,
    sessions: Arc<SessionStats>,
    busy_subjects: Arc<AtomicU64>,
}

impl Collector for Transport {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.connections;
        let s = &self.sessions;
        for (name, help, value) in [
            (
                "connections_accepted",
                "HTTP connections accepted.",
                &c.accepted,
            ),
            (
                "connections_evicted",
                "Idle HTTP connections closed to admit a new one at the connection cap.",
                &c.evicted,
            ),
            (
                "connections_refused",
                "HTTP connections refused at the cap (every connection busy).",
                &c.refused,
            ),
            (
                "connections_header_timeouts",
                "HTTP connections closed for a request head that did not arrive in time.",
                &c.header_timeouts,
            ),
            (
                "connections_idle_closed",
                "HTTP connections closed after the idle timeout.",
                &c.idle_closed,
            ),
            (
                "connections_accept_errors",
                "Failed accepts (e.g. out of file descriptors).",
                &c.accept_errors,
            ),
            (
                "sessions_evicted",
                "MCP sessions closed because their subject opened one past its cap.",
                &s.evicted,
            ),
            (
                "sessions_refused",
                "MCP sessions refused at the total cap.",
                &s.refused,
            ),
            (
                "sessions_taken_over",
                "MCP sessions opened on another replica (or before a restart) and carried on here.",
                &s.taken_over,
            ),
            (
                "sessions_store_errors",
                "Reads or writes of the control store's MCP session table that failed.",
                &s.store_errors,
            ),
        ] {
            counter(&mut encoder, name, help, load(value))?;
        }
        for (name, help, value) in [
            ("connections_open", "HTTP connections open now.", &c.open),
            ("sessions_open", "MCP transport sessions open now.", &s.open),
            (
                "busy_subjects",
                "Subjects with tool calls in flight now.",
                &*self.busy_subjects,
            ),
        ] {
            gauge(&mut encoder, name, help, load(value))?;
        }
        Ok(())
    }
}

/// Figures read from the audit log and the policy engine at each scrape.
#[derive(Debug)]
struct Planes {
    audit: AuditStats,
    policy: Arc<PolicyEngine>,
}

impl Collector for Planes {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "audit_up",
            "1 if the audit store's last write succeeded.",
            u64::from(self.audit.is_healthy()),
        )?;
        gauge(
            &mut encoder,
            "audit_queue_depth",
            "Audit appends waiting for the writer (queued or in the batch being committed).",
            self.audit.queue_depth(),
        )?;
        counter(
            &mut encoder,
            "audit_appended",
            "Audit records appended since start.",
            self.audit.appended(),
        )?;
        counter(
            &mut encoder,
            "audit_commits",
            "Audit transactions committed since start (group commit puts several records in one).",
            self.audit.commits(),
        )?;
        counter(
            &mut encoder,
            "policy_reload_failures",
            "Policy reloads refused (the last good set keeps serving).",
            self.policy.reload_failures(),
        )
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
