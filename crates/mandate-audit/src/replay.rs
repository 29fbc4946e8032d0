//! A session's records as a timeline (`mandate audit replay`, the
//! `/api/audit/sessions/{id}` endpoint and its page).

use crate::StoredRecord;
use mandate_core::{AuditRecord, RecordKind};
use serde::Serialize;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC) of Unix ms; a time beyond
/// the calendar's range (±262 000 years) is written as `<ms> ms`.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// One step of a session's timeline.
#[derive(Debug, Serialize)]
pub struct TimelineEntry {
    /// Place in the log.
    pub seq: i64,
    /// Chain hash (for citing the record).
    pub hash: String,
    /// RFC 3339 time.
    pub time: String,
    /// `decided`, `held`, `outcome` or `control`.
    pub step: &'static str,
    /// The call (decision and outcome share it).
    pub correlation_id: String,
    /// The decision.
    pub decision_id: String,
    /// The composite subject.
    pub subject: mandate_core::Subject,
    /// Tool (or control action).
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub args_hash: String,
    /// The arguments as the redaction rules kept them.
    pub args: Option<serde_json::Value>,
    /// `allow` / `deny`.
    pub effect: &'static str,
    /// Determining policies.
    pub policies: Vec<String>,
    /// Reasons.
    pub reasons: Vec<String>,
    /// Approvals: who approved or denied a held call, from the reasons.
    pub approvals: Vec<String>,
    /// Taint labels this step added to the session.
    pub taint: Vec<String>,
    /// Upstream outcome (`ok`, `tool_error`, …).
    pub outcome: Option<String>,
    /// Detail (error, held-for-approval reference, injection findings).
    pub detail: Option<String>,
    /// The full record, as stored.
    pub record: AuditRecord,
}

/// A session's records as a timeline, in log order.
pub fn timeline(records: &[StoredRecord]) -> Vec<TimelineEntry> {
    records
        .iter()
        .map(|r| {
            let rec = &r.record;
            let d = &rec.decision;
            let step = match rec.kind {
                RecordKind::Outcome => "outcome",
                RecordKind::Control => "control",
                RecordKind::Decision
                    if rec
                        .detail
                        .as_deref()
                        .is_some_and(|x| x.starts_with("held for human approval")) =>
                {
                    "held"
                }
                RecordKind::Decision => "decided",
            };
            TimelineEntry {
                seq: r.seq,
                hash: r.hash.clone(),
                time: format_ms(rec.time_ms),
                step,
                correlation_id: rec.correlation_id.as_str().to_owned(),
                decision_id: d.id.as_str().to_owned(),
                subject: rec.subject.clone(),
                tool: rec.tool.clone(),
                args_hash: rec.args_hash.clone(),
                args: rec.args.clone(),
                effect: d.effect.as_str(),
                policies: d.policies.clone(),
                reasons: d.reasons.clone(),
                approvals: d
                    .reasons
                    .iter()
                    .filter(|x| x.starts_with("approved by ") || x.starts_with("denied by "))
                    .cloned()
                    .collect(),
                taint: rec.taint.clone(),
                outcome: rec.outcome.clone(),
                detail: rec.detail.clone(),
                record: rec.clone(),
            }
        })
        .collect()
}
