//! Prometheus counters, rendered in the text exposition format.

use crate::server::ConnectionStats;
use crate::sessions::SessionStats;
use mandate_policy::Decision;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Decisions that allowed a call.
    pub decisions_allow: Counter,
    /// Decisions that denied a call.
    pub decisions_deny: Counter,
    /// Requests refused for a missing or invalid token.
    pub auth_failures: Counter,
    /// Requests refused for scope (HTTP 403).
    pub scope_refusals: Counter,
    /// Requests refused because the session belongs to another subject.
    pub session_refusals: Counter,
    /// Audit appends that failed.
    pub audit_failures: Counter,
    /// Upstream calls that failed or timed out.
    pub upstream_errors: Counter,
    /// Tool results in which injection patterns or hidden content were found.
    pub injection_findings: Counter,
    /// Tool calls refused because their subject had too many in flight.
    pub concurrency_refusals: Counter,
    /// HTTP connections (`server.rs`).
    pub connections: Arc<ConnectionStats>,
    /// MCP transport sessions (`sessions.rs`).
    pub sessions: Arc<SessionStats>,
    /// Subjects with tool calls in flight now.
    pub(crate) busy_subjects: AtomicU64,
}

impl Metrics {
    pub(crate) fn count_decision(&self, d: &Decision) {
        if d.is_allow() {
            self.decisions_allow.inc();
        } else {
            self.decisions_deny.inc();
        }
    }

    /// The text exposition format, with extra gauges appended.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP mandate_decisions_total Tool-call decisions by effect.\n# TYPE mandate_decisions_total counter"
        );
        let _ = writeln!(
            s,
            "mandate_decisions_total{{effect=\"allow\"}} {}",
            self.decisions_allow.get()
        );
        let _ = writeln!(
            s,
            "mandate_decisions_total{{effect=\"deny\"}} {}",
            self.decisions_deny.get()
        );
        for (name, help, value) in [
            (
                "mandate_auth_failures_total",
                "Requests refused for a missing or invalid token.",
                self.auth_failures.get(),
            ),
            (
                "mandate_scope_refusals_total",
                "Requests refused with insufficient_scope.",
                self.scope_refusals.get(),
            ),
            (
                "mandate_session_refusals_total",
                "Requests refused because the session is bound to another subject.",
                self.session_refusals.get(),
            ),
            (
                "mandate_audit_failures_total",
                "Audit appends that failed.",
                self.audit_failures.get(),
            ),
            (
                "mandate_upstream_errors_total",
                "Upstream calls that failed or timed out.",
                self.upstream_errors.get(),
            ),
            (
                "mandate_injection_findings_total",
                "Tool results with injection patterns or hidden content.",
                self.injection_findings.get(),
            ),
            (
                "mandate_concurrency_refusals_total",
                "Tool calls refused because their subject had too many in flight.",
                self.concurrency_refusals.get(),
            ),
            (
                "mandate_connections_accepted_total",
                "HTTP connections accepted.",
                load(&self.connections.accepted),
            ),
            (
                "mandate_connections_evicted_total",
                "Idle HTTP connections closed to admit a new one at the connection cap.",
                load(&self.connections.evicted),
            ),
            (
                "mandate_connections_refused_total",
                "HTTP connections refused at the cap (every connection busy).",
                load(&self.connections.refused),
            ),
            (
                "mandate_connections_header_timeouts_total",
                "HTTP connections closed for a request head that did not arrive in time.",
                load(&self.connections.header_timeouts),
            ),
            (
                "mandate_connections_idle_closed_total",
                "HTTP connections closed after the idle timeout.",
                load(&self.connections.idle_closed),
            ),
            (
                "mandate_connections_accept_errors_total",
                "Failed accepts (e.g. out of file descriptors).",
                load(&self.connections.accept_errors),
            ),
            (
                "mandate_sessions_evicted_total",
                "MCP sessions closed because their subject opened one past its cap.",
                load(&self.sessions.evicted),
            ),
            (
                "mandate_sessions_refused_total",
                "MCP sessions refused at the total cap.",
                load(&self.sessions.refused),
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in [
            (
                "mandate_connections_open",
                "HTTP connections open now.",
                load(&self.connections.open),
            ),
            (
                "mandate_sessions_open",
                "MCP transport sessions open now.",
                load(&self.sessions.open),
            ),
            (
                "mandate_busy_subjects",
                "Subjects with tool calls in flight now.",
                load(&self.busy_subjects),
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        for (name, help, value) in extra {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        s
    }
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}
