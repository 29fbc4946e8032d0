//! The two-person change gate: propose, approve (someone else), activate.

use serde::{Deserialize, Serialize};

/// What a change modifies.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_kind
)]
pub enum ChangeKind {
    /// The whole policy set (policies and schema). Payload:
    /// `{"files": {"<name>": "<text>", …}}`; hash: the policy set hash.
    PolicySet,
    /// One agent's scope ceiling (`target` = the agent). Payload:
    /// `{"scope": "<space-separated patterns>"}`.
    ScopeCeiling,
}

impl ChangeKind {
    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_kind(s: &str) -> String {
    format!("unknown change kind {s:?} (policy_set, scope_ceiling)")
}

/// Where a change is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_status
)]
pub enum ChangeStatus {
    /// Waiting for a second operator.
    Proposed,
    /// Approved by someone other than the proposer; not yet in force.
    Approved,
    /// In force (or was, until a later change of the same target).
    Activated,
    /// Refused by a reviewer.
    Rejected,
}

impl ChangeStatus {
    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_status(s: &str) -> String {
    format!("unknown change status {s:?}")
}

/// One proposed change and its review trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Id (`chg-` + UUID v7).
    pub id: String,
    /// What it modifies.
    pub kind: ChangeKind,
    /// The agent, for a scope ceiling; empty for a policy set.
    pub target: String,
    /// The new content (see [`ChangeKind`]).
    pub payload: serde_json::Value,
    /// SHA-256 (hex) identifying the content; approval binds to it.
    pub payload_hash: String,
    /// One line for reviewers.
    pub summary: String,
    /// Status.
    pub status: ChangeStatus,
    /// Proposer.
    pub proposed_by: String,
    /// Unix milliseconds.
    pub proposed_ms: i64,
    /// Second operator (approver or rejecter).
    pub reviewed_by: Option<String>,
    /// Unix milliseconds.
    pub reviewed_ms: Option<i64>,
    /// Reviewer's comment.
    pub review_comment: Option<String>,
    /// Who activated it.
    pub activated_by: Option<String>,
    /// Unix milliseconds.
    pub activated_ms: Option<i64>,
}
