//! Audit records: one per decision and one per outcome of a call.

use crate::{CorrelationId, DecisionRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a record documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RecordKind {
    /// A policy decision, written (durably) before any forwarding.
    Decision,
    /// What happened after an allowed call: the upstream's result or error.
    Outcome,
    /// An operator action on the control plane (revoke, lift, propose,
    /// review, activate), allowed or refused.
    Control,
}

impl RecordKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The composite subject as recorded: all five token fields plus session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Token issuer (`iss`); empty on records written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    /// Delegating user (`sub`); empty when the request was unauthenticated.
    pub sub: String,
    /// Actor chain (`act`), outermost first.
    pub act: Vec<String>,
    /// Scope, space separated.
    pub scope: String,
    /// Task id.
    pub task_id: Option<String>,
    /// Build hash.
    pub build: Option<String>,
    /// Mandate session key.
    pub session: String,
}

/// One audit record, before it is sequenced and chained by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Record kind.
    pub kind: RecordKind,
    /// Unix time in milliseconds.
    pub time_ms: i64,
    /// The decision this record belongs to.
    pub decision: DecisionRecord,
    /// End-to-end correlation id.
    pub correlation_id: CorrelationId,
    /// Who.
    pub subject: Subject,
    /// Exposed tool name (`upstream.tool`), or the method for non-tool requests.
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub args_hash: String,
    /// For outcome records: `ok`, `tool_error`, `upstream_error`,
    /// `timeout`, `invalid_arguments`; `None` for decisions.
    pub outcome: Option<String>,
    /// Free-form detail (an error message, never a secret).
    pub detail: Option<String>,
    /// Money the call moves (the integer `amount` argument of a permitted
    /// `financial` call), so task budgets can be rebuilt from the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Taint labels the call's result added to the session (`untrusted`,
    /// `sensitive`, `suspicious`), on outcome records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taint: Vec<String>,
    /// The arguments as the redaction rules keep them (per field: in full,
    /// as a SHA-256, or `"[redacted]"`); `None` when none are kept.
    /// `args_hash` always covers the complete arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// The grant of the task's intent that covered the call, if any
    /// (docs/INTENT.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Where each argument's values came from (docs/PROVENANCE.md): the
    /// sources per argument, with the values only where the redaction rules
    /// keep the arguments in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<serde_json::Value>,
}

impl AuditRecord {
    /// The record of a decision, made at `time_ms` (Unix ms, from the
    /// caller's [`Clock`](crate::Clock)).
    pub fn decision(
        time_ms: i64,
        decision: DecisionRecord,
        correlation_id: CorrelationId,
        subject: Subject,
        tool: impl Into<String>,
        args_hash: impl Into<String>,
    ) -> Self {
        Self {
            kind: RecordKind::Decision,
            time_ms,
            decision,
            correlation_id,
            subject,
            tool: tool.into(),
            args_hash: args_hash.into(),
            outcome: None,
            detail: None,
            amount: None,
            taint: Vec::new(),
            args: None,
            grant: None,
            sources: None,
        }
    }

    /// The record of an operator action (`action` e.g. `control/revoke`)
    /// at `time_ms`. `detail` (the request, or what it produced) is stored
    /// as JSON, and its canonical hash as the argument hash.
    pub fn control(
        time_ms: i64,
        decision: DecisionRecord,
        operator: Subject,
        action: impl Into<String>,
        detail: &serde_json::Value,
    ) -> Self {
        let args_hash = match detail {
            serde_json::Value::Object(map) => canonical_args_hash(map),
            other => {
                let mut out = String::new();
                write_canonical(other, &mut out);
                hex::encode(Sha256::digest(out.as_bytes()))
            }
        };
        Self {
            kind: RecordKind::Control,
            time_ms,
            decision,
            correlation_id: CorrelationId::new(),
            subject: operator,
            tool: action.into(),
            args_hash,
            outcome: None,
            detail: Some(detail.to_string()),
            amount: None,
            taint: Vec::new(),
            args: None,
            grant: None,
            sources: None,
        }
    }

    /// The outcome record that follows this decision record, at `time_ms`.
    pub fn outcome(
        &self,
        time_ms: i64,
        outcome: impl Into<String>,
        detail: Option<String>,
    ) -> Self {
        Self {
            kind: RecordKind::Outcome,
            time_ms,
            outcome: Some(outcome.into()),
            detail,
            // The decision record holds them; the outcome refers to it.
            args: None,
            sources: None,
            ..self.clone()
        }
    }
}

/// SHA-256 (hex) over the canonical JSON form of the arguments: object keys
/// sorted at every depth, no insignificant white space (the JCS ordering
/// rule; numbers keep `serde_json`'s shortest round-trip form).
pub fn canonical_args_hash(args: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut out = String::new();
    write_canonical_object(args, &mut out);
    sha256_hex(&out)
}

/// SHA-256 (hex) over the canonical JSON form of any value (as
/// [`canonical_args_hash`] does for an argument object).
pub fn canonical_hash(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    sha256_hex(&out)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Appends the canonical JSON of `value` to `out`.
pub fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => write_canonical_object(map, out),
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn write_canonical_object(map: &serde_json::Map<String, serde_json::Value>, out: &mut String) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(key.clone()).to_string());
        out.push(':');
        if let Some(v) = map.get(key) {
            write_canonical(v, out);
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_hash_ignores_key_order() {
        let a: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap_or_default();
        let b: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap_or_default();
        assert_eq!(canonical_args_hash(&a), canonical_args_hash(&b));
        let c: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":2}"#).unwrap_or_default();
        assert_ne!(canonical_args_hash(&a), canonical_args_hash(&c));
    }
}
