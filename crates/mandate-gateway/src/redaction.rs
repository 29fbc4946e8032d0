//! What the audit record keeps of a call's arguments.
//!
//! Every record keeps `args_hash`, the SHA-256 of the canonical arguments,
//! whatever the rules say: a disclosed argument set can always be checked
//! against the evidence. Beyond that, per tool and per top-level field:
//!
//! - `full`: the value is stored as sent;
//! - `hash`: the value is replaced by `{"sha256": "<hex>"}`, the SHA-256 of
//!   its canonical JSON, so a disclosed value can be checked on its own;
//! - `redact`: the value is replaced by `"[redacted]"` (for a whole tool:
//!   no arguments are stored, only `args_hash`).
//!
//! The default for tools without a rule is `redact`: no argument values in
//! the log unless configured.

use serde_json::{Map, Value};

pub use crate::config::{Keep, Redaction, ToolRule};

/// Marker stored for a redacted field.
pub const REDACTED: &str = "[redacted]";

impl Redaction {
    /// The arguments as the audit record keeps them (`None`: nothing kept).
    pub fn apply(&self, tool: &str, args: &Map<String, Value>) -> Option<Value> {
        let rule = self.tools.get(tool).unwrap_or(&self.default);
        if rule.default == Keep::Redact && rule.fields.is_empty() {
            return None;
        }
        let mut out = Map::new();
        for (name, value) in args {
            let keep = rule.fields.get(name).copied().unwrap_or(rule.default);
            let kept = match keep {
                Keep::Full => value.clone(),
                Keep::Hash => serde_json::json!({"sha256": mandate_core::canonical_hash(value)}),
                Keep::Redact => Value::String(REDACTED.to_owned()),
            };
            out.insert(name.clone(), kept);
        }
        Some(Value::Object(out))
    }

    /// Whether the record keeps every argument of `tool` in full (then the
    /// values behind an argument's provenance may be recorded too).
    pub fn keeps_values(&self, tool: &str) -> bool {
        let rule = self.tools.get(tool).unwrap_or(&self.default);
        rule.default == Keep::Full && rule.fields.values().all(|k| *k == Keep::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Configured spellings.
    #[test]
    fn keep_spellings_are_unchanged() {
        use strum::VariantArray as _;
        let table = [
            (Keep::Full, "full"),
            (Keep::Hash, "hash"),
            (Keep::Redact, "redact"),
        ];
        assert_eq!(table.len(), Keep::VARIANTS.len());
        for (keep, spelled) in table {
            assert_eq!(<&str>::from(keep), spelled);
            assert_eq!(spelled.parse::<Keep>(), Ok(keep));
        }
        assert_eq!(
            "all".parse::<Keep>(),
            Err("\"all\" is not full, hash or redact".to_owned())
        );
    }

    fn args() -> Map<String, Value> {
        serde_json::from_str(r#"{"iban":"DE00 1234","amount":120,"memo":{"b":1,"a":2}}"#)
            .unwrap_or_default()
    }

    #[test]
    fn default_keeps_nothing() {
        assert_eq!(Redaction::default().apply("bank.transfer", &args()), None);
    }

    #[test]
    fn per_tool_and_field_rules_apply_and_hashes_are_checkable() {
        let mut r = Redaction::default();
        r.tools.insert(
            "bank.transfer".into(),
            ToolRule {
                default: Keep::Full,
                fields: [
                    ("iban".to_owned(), Keep::Redact),
                    ("memo".to_owned(), Keep::Hash),
                ]
                .into_iter()
                .collect(),
            },
        );
        let kept = r.apply("bank.transfer", &args()).unwrap_or_default();
        assert_eq!(kept.get("amount"), Some(&Value::from(120)));
        assert_eq!(kept.get("iban"), Some(&Value::from(REDACTED)));
        // The disclosed value {"a":2,"b":1} hashes (canonically) to the stored hash.
        let disclosed = hex::encode(Sha256::digest(br#"{"a":2,"b":1}"#));
        assert_eq!(
            kept.get("memo").and_then(|m| m.get("sha256")),
            Some(&Value::from(disclosed))
        );
        // Other tools keep the default.
        assert_eq!(r.apply("docs.search", &args()), None);
    }
}
