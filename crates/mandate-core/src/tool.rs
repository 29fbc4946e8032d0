//! Tools and calls to them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a tool does, which decides how much scrutiny a call gets. Spelled
/// in snake case in config, policies and records (serde and strum agree).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_class
)]
pub enum ToolClass {
    /// Reads data.
    Read,
    /// Changes state inside the organisation.
    Write,
    /// Sends something outside: mail, chat, webhooks.
    Outbound,
    /// Moves money.
    Financial,
    /// Changes who may do what.
    AccessControl,
    /// Cannot be undone.
    Irreversible,
}

impl ToolClass {
    /// All classes, in order.
    pub const ALL: [ToolClass; 6] = [
        Self::Read,
        Self::Write,
        Self::Outbound,
        Self::Financial,
        Self::AccessControl,
        Self::Irreversible,
    ];

    /// The config / policy spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// High-impact classes require human approval by default.
    pub fn is_high_impact(self) -> bool {
        matches!(
            self,
            Self::Outbound | Self::Financial | Self::AccessControl | Self::Irreversible
        )
    }
}

fn unknown_class(s: &str) -> String {
    format!(
        "unknown tool class {s:?} (expected one of: read, write, outbound, financial, access_control, irreversible)"
    )
}

/// A namespaced tool name, `<upstream>.<tool>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ToolName {
    /// The upstream server's configured name (contains no `.`).
    pub upstream: String,
    /// The tool's name on that upstream.
    pub tool: String,
}

impl ToolName {
    /// Splits an exposed name at the first `.`; upstream names never contain one.
    pub fn parse(exposed: &str) -> Option<Self> {
        let (upstream, tool) = exposed.split_once('.')?;
        if upstream.is_empty() || tool.is_empty() {
            return None;
        }
        Some(Self {
            upstream: upstream.to_owned(),
            tool: tool.to_owned(),
        })
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.upstream, self.tool)
    }
}

/// One requested tool call, as the policy engine sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The tool.
    pub name: ToolName,
    /// Its configured class.
    pub class: ToolClass,
    /// The call's arguments (a JSON object).
    pub args: serde_json::Map<String, serde_json::Value>,
    /// SHA-256 of the canonical JSON of `args`.
    pub args_hash: String,
}

impl ToolCall {
    /// Builds a call, hashing its arguments canonically.
    pub fn new(
        name: ToolName,
        class: ToolClass,
        args: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let args_hash = crate::canonical_args_hash(&args);
        Self {
            name,
            class,
            args,
            args_hash,
        }
    }
}
