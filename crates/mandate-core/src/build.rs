//! Agent build attestation: the canonical hash of (model id, system prompt,
//! tool manifest).
//!
//! The form is fixed so that any language can reproduce it
//! (`docs/BROKER.md` has a Python version):
//!
//! 1. **Tool manifest.** A JSON array of MCP tool definitions as the agent
//!    sees them (`tools/list` of the gateway: names are `upstream.tool`).
//!    Each tool is reduced to the members `name`, `title`, `description`,
//!    `inputSchema`, `outputSchema` and `annotations` that are present
//!    (anything else, such as `_meta` or `icons`, is dropped); the tools are
//!    sorted by `name`; names must be unique and non-empty.
//!    `manifest = hex(SHA-256(canonical_json(tools)))`.
//! 2. **Build.** `build = hex(SHA-256(canonical_json({"mandate_build": 1,
//!    "model": <model id>, "system_prompt": <prompt text>, "tools":
//!    <manifest>})))`.
//!
//! `canonical_json` is [`crate::write_canonical`]: object keys sorted (by
//! UTF-16 code units, which for the ASCII keys used here equals byte order),
//! no insignificant white space, strings escaped as JSON requires (no
//! escaping of non-ASCII). For JSON without non-integer numbers this equals
//! Python's `json.dumps(v, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False)`.

use serde_json::{Map, Value};

/// Members of a tool definition that take part in the manifest hash.
pub const MANIFEST_TOOL_MEMBERS: [&str; 6] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// Why a tool manifest cannot be hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestError {}

/// The normalised manifest (sorted, reduced tools) of `tools`, a JSON array
/// of tool definitions (or an object with a `tools` array, the shape of a
/// `tools/list` result).
pub fn normalise_manifest(tools: &Value) -> Result<Vec<Value>, ManifestError> {
    let list = match tools {
        Value::Array(items) => items,
        Value::Object(obj) => match obj.get("tools") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(ManifestError(
                    "a tool manifest is a JSON array of tools (or {\"tools\": [...]})".into(),
                ));
            }
        },
        _ => {
            return Err(ManifestError(
                "a tool manifest is a JSON array of tools".into(),
            ));
        }
    };
    let mut out: Vec<(String, Value)> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let Value::Object(obj) = tool else {
            return Err(ManifestError(format!("tool {i} is not an object")));
        };
        let name = match obj.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(ManifestError(format!("tool {i} has no name"))),
        };
        let mut reduced = Map::new();
        for member in MANIFEST_TOOL_MEMBERS {
            if let Some(v) = obj.get(member) {
                reduced.insert(member.to_owned(), v.clone());
            }
        }
        out.push((name, Value::Object(reduced)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.windows(2).any(|w| matches!(w, [a, b] if a.0 == b.0)) {
        return Err(ManifestError("tool names must be unique".into()));
    }
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// `hex(SHA-256(canonical_json(normalised manifest)))`.
pub fn manifest_hash(tools: &Value) -> Result<String, ManifestError> {
    let normalised = normalise_manifest(tools)?;
    Ok(crate::canonical_hash(&Value::Array(normalised)))
}

/// The build hash of a model id, a system prompt and a manifest hash (from
/// [`manifest_hash`]).
pub fn build_hash(model: &str, system_prompt: &str, manifest: &str) -> String {
    let doc = serde_json::json!({
        "mandate_build": 1,
        "model": model,
        "system_prompt": system_prompt,
        "tools": manifest,
    });
    crate::canonical_hash(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write_canonical;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    #[test]
    fn manifest_ignores_order_and_extra_members() -> Result<(), ManifestError> {
        let a = json!([
            {"name": "docs.search", "description": "Search", "inputSchema": {"type": "object"}, "_meta": {"x": 1}},
            {"name": "bank.get_balance", "inputSchema": {"type": "object", "properties": {}}}
        ]);
        let b = json!({"tools": [
            {"inputSchema": {"properties": {}, "type": "object"}, "name": "bank.get_balance"},
            {"name": "docs.search", "inputSchema": {"type": "object"}, "description": "Search"}
        ]});
        assert_eq!(manifest_hash(&a)?, manifest_hash(&b)?);
        Ok(())
    }

    #[test]
    fn a_changed_description_or_schema_changes_the_hash() -> Result<(), ManifestError> {
        let base = json!([{"name": "t.x", "description": "d", "inputSchema": {"type": "object"}}]);
        let desc = json!([{"name": "t.x", "description": "d!", "inputSchema": {"type": "object"}}]);
        let schema = json!([{"name": "t.x", "description": "d", "inputSchema": {"type": "object", "required": ["a"]}}]);
        let h = manifest_hash(&base)?;
        assert_ne!(h, manifest_hash(&desc)?);
        assert_ne!(h, manifest_hash(&schema)?);
        assert_ne!(build_hash("m", "p", &h), build_hash("m", "p ", &h));
        assert_ne!(build_hash("m", "p", &h), build_hash("m2", "p", &h));
        Ok(())
    }

    #[test]
    fn known_vector() -> Result<(), ManifestError> {
        // Reproduced in docs/BROKER.md with Python's json.dumps(sort_keys=True,
        // separators=(",", ":"), ensure_ascii=False) + hashlib.sha256.
        let m = manifest_hash(
            &json!([{"name": "docs.search", "description": "Search the docs",
            "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}}}]),
        )?;
        let mut canonical = String::new();
        write_canonical(
            &json!([{"description": "Search the docs", "inputSchema": {"properties": {"q": {"type": "string"}}, "type": "object"}, "name": "docs.search"}]),
            &mut canonical,
        );
        assert_eq!(
            canonical,
            r#"[{"description":"Search the docs","inputSchema":{"properties":{"q":{"type":"string"}},"type":"object"},"name":"docs.search"}]"#
        );
        assert_eq!(m, hex::encode(Sha256::digest(canonical.as_bytes())));
        Ok(())
    }

    #[test]
    fn duplicate_or_nameless_tools_are_refused() {
        assert!(manifest_hash(&json!([{"name": "a.b"}, {"name": "a.b"}])).is_err());
        assert!(manifest_hash(&json!([{"description": "x"}])).is_err());
        assert!(manifest_hash(&json!("x")).is_err());
    }
}
