//! The registry, its guards, the tool label bound and content negotiation.

use super::*;
use crate::config::DEFAULT_MAX_TOOL_LABELS;
use mandate_policy::Decision;
use strum::VariantArray as _;

/// The value of the sample `line_start` (name and labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|rest| rest.trim().split(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn counters_are_typed_counter_and_end_in_total() {
    let m = Metrics::new(4);
    m.auth_failures.inc();
    m.count_decision(
        &Decision::deny("x", "h"),
        "not_permitted",
        &m.tool("docs.search"),
    );
    let text = m.render(Format::Prometheus);
    assert!(
        text.contains("# TYPE mandate_auth_failures_total counter"),
        "{text}"
    );
    assert_eq!(sample(&text, "mandate_auth_failures_total "), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "mandate_decisions_total{effect=\"deny\",reason=\"not_permitted\",tool=\"docs.search\"} "
        ),
        Some(1.0),
        "{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            panic!("bad TYPE line {line}");
        };
        assert!(name.starts_with("mandate_"), "{line}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
    }
    // Connection and session figures are always there.
    assert_eq!(sample(&text, "mandate_connections_open "), Some(0.0));
    assert!(text.contains("# TYPE mandate_sessions_refused_total counter"));
}

#[test]
fn openmetrics_ends_in_eof_and_names_counter_families_without_total() {
    let m = Metrics::new(4);
    m.scope_refusals.inc();
    let text = m.render(Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE mandate_scope_refusals counter"),
        "{text}"
    );
    assert_eq!(sample(&text, "mandate_scope_refusals_total "), Some(1.0));
    assert!(!m.render(Format::Prometheus).contains("# EOF"));
}

#[test]
fn phase_timer_records_on_drop_under_its_phase_and_tool() {
    let m = Metrics::new(4);
    let tool = m.tool("pay.send");
    for phase in Phase::VARIANTS {
        let _timer = m.time(*phase, &tool);
    }
    {
        let _timer = m.time(Phase::Forward, &tool);
        std::thread::sleep(Duration::from_millis(3));
    }
    let text = m.render(Format::Prometheus);
    for phase in ["authenticate", "decide", "hold", "record", "sanitise"] {
        let count =
            format!("mandate_phase_duration_seconds_count{{phase=\"{phase}\",tool=\"pay.send\"}} ");
        assert_eq!(sample(&text, &count), Some(1.0), "{phase}: {text}");
    }
    let forward = "mandate_phase_duration_seconds_count{phase=\"forward\",tool=\"pay.send\"} ";
    assert_eq!(sample(&text, forward), Some(2.0));
    let sum = "mandate_phase_duration_seconds_sum{phase=\"forward\",tool=\"pay.send\"} ";
    assert!(sample(&text, sum).is_some_and(|s| s >= 0.003), "{text}");
    // The 3 ms call is above the 2.5 ms bucket.
    let le =
        "mandate_phase_duration_seconds_bucket{phase=\"forward\",tool=\"pay.send\",le=\"0.0025\"} ";
    assert_eq!(sample(&text, le), Some(1.0), "{text}");
}

#[test]
fn tool_labels_are_bounded_and_later_tools_count_as_other() {
    let m = Metrics::new(3);
    let labels: Vec<ToolLabel> = (0..10).map(|i| m.tool(&format!("up.tool{i}"))).collect();
    let own: Vec<&str> = labels.iter().take(3).map(ToolLabel::as_str).collect();
    assert_eq!(own, ["up.tool0", "up.tool1", "up.tool2"]);
    assert!(labels.iter().skip(3).all(|l| l.as_str() == OTHER_TOOL));
    // A tool that has a slot keeps it; an unseen name takes none.
    assert_eq!(m.tool("up.tool1").as_str(), "up.tool1");
    assert_eq!(m.tool_seen("up.tool9").as_str(), OTHER_TOOL);
    assert_eq!(m.tool_seen("up.tool2").as_str(), "up.tool2");
    for label in &labels {
        m.count_decision(&Decision::deny("x", "h"), "not_permitted", label);
    }
    let text = m.render(Format::Prometheus);
    let series = text
        .lines()
        .filter(|l| l.starts_with("mandate_decisions_total{"))
        .count();
    assert_eq!(series, 4, "3 tools and `other`: {text}");
    let other = "mandate_decisions_total{effect=\"deny\",reason=\"not_permitted\",tool=\"other\"} ";
    assert_eq!(sample(&text, other), Some(7.0));
}

#[test]
fn the_default_bound_is_128_tools() {
    let m = Metrics::new(DEFAULT_MAX_TOOL_LABELS);
    let distinct: std::collections::HashSet<ToolLabel> =
        (0..1000).map(|i| m.tool(&format!("u.t{i}"))).collect();
    assert_eq!(distinct.len(), DEFAULT_MAX_TOOL_LABELS + 1);
}

#[test]
fn decisions_are_counted_by_effect_and_reason() {
    let m = Metrics::new(4);
    let tool = m.tool("docs.search");
    m.count_hold(&tool);
    m.count_decision(&Decision::deny("x", "h"), "approval_denied", &tool);
    let text = m.render(Format::Prometheus);
    let hold = "mandate_decisions_total{effect=\"hold\",reason=\"approval_required\",tool=\"docs.search\"} ";
    assert_eq!(sample(&text, hold), Some(1.0), "{text}");
    let denied =
        "mandate_decisions_total{effect=\"deny\",reason=\"approval_denied\",tool=\"docs.search\"} ";
    assert_eq!(sample(&text, denied), Some(1.0));
}

#[test]
fn a_hold_is_pending_until_its_guard_drops_and_its_wait_is_recorded() {
    let m = Metrics::new(4);
    let mut first = m.hold_started();
    let second = m.hold_started();
    assert_eq!(
        sample(&m.render(Format::Prometheus), "mandate_approvals_pending "),
        Some(2.0)
    );
    first.ended("approved");
    drop(first);
    // Dropped without an outcome: the client went away.
    drop(second);
    let text = m.render(Format::Prometheus);
    assert_eq!(sample(&text, "mandate_approvals_pending "), Some(0.0));
    let approved = "mandate_approval_wait_seconds_count{outcome=\"approved\"} ";
    assert_eq!(sample(&text, approved), Some(1.0), "{text}");
    let withdrawn = "mandate_approval_wait_seconds_count{outcome=\"withdrawn\"} ";
    assert_eq!(sample(&text, withdrawn), Some(1.0));
}

#[test]
fn upstream_errors_are_counted_by_kind() {
    let m = Metrics::new(4);
    m.upstream_error("timeout");
    m.upstream_error("timeout");
    m.upstream_error("upstream_unavailable");
    let text = m.render(Format::Prometheus);
    assert_eq!(
        sample(&text, "mandate_upstream_errors_total{kind=\"timeout\"} "),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "mandate_upstream_errors_total{kind=\"upstream_unavailable\"} "
        ),
        Some(1.0)
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new(4);
    m.count_decision(&Decision::deny("x", "h"), "a\"b\\c\nd", &m.tool("t"));
    let text = m.render(Format::Prometheus);
    assert!(text.contains(r#"reason="a\"b\\c\nd""#), "{text}");
}

#[test]
fn openmetrics_is_chosen_only_when_accept_asks_for_it() {
    assert_eq!(Format::negotiate(None), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
    assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
    // What Prometheus sends.
    let prometheus =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
    assert_eq!(
        Format::negotiate(Some("Application/OpenMetrics-Text; version=1.0.0")),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
        Format::Prometheus
    );
    assert!(
        Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text")
    );
    assert!(
        Format::Prometheus
            .content_type()
            .starts_with("text/plain; version=0.0.4")
    );
}

#[tokio::test]
async fn audit_figures_and_commit_times_come_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = mandate_audit::AuditLog::open_sqlite(&dir.path().join("a.db")).unwrap();
    let policies =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/policies");
    let policy = Arc::new(PolicyEngine::load_dir(&policies).unwrap());
    let m = Metrics::new(4).watch(log.stats(), policy);
    let rec = mandate_core::AuditRecord::decision(
        1,
        Decision::deny("x", "h").record().clone(),
        mandate_core::CorrelationId::new(),
        mandate_core::Subject::default(),
        "docs.search",
        "hash",
    );
    log.append(rec).await.unwrap();
    let text = m.render(Format::Prometheus);
    assert_eq!(sample(&text, "mandate_audit_up "), Some(1.0), "{text}");
    assert_eq!(sample(&text, "mandate_audit_appended_total "), Some(1.0));
    assert_eq!(sample(&text, "mandate_audit_commits_total "), Some(1.0));
    assert_eq!(sample(&text, "mandate_audit_queue_depth "), Some(0.0));
    assert_eq!(
        sample(&text, "mandate_audit_commit_seconds_count "),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "mandate_policy_reload_failures_total "),
        Some(0.0)
    );
}
