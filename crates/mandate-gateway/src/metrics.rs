//! Prometheus counters, rendered in the text exposition format.

use mandate_core::Decision;
use std::fmt::Write as _;
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
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
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
