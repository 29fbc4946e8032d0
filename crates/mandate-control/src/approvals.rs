//! Human approval of held tool calls: durable requests, decisions bound to
//! the exact argument hash, and single-use release.

use serde::{Deserialize, Serialize};

/// Where an approval request is in its life.
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
pub enum ApprovalStatus {
    /// Waiting for a person.
    Pending,
    /// A person approved it (see [`ApprovalRequest::released_ms`] for
    /// whether the held call has used it).
    Approved,
    /// A person denied it.
    Denied,
    /// Nobody decided before the deadline: the call was denied.
    Expired,
    /// The agent's client went away while the call was held.
    Withdrawn,
}

impl ApprovalStatus {
    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_status(s: &str) -> String {
    format!("unknown approval status {s:?} (pending, approved, denied, expired, withdrawn)")
}

/// What the gateway knows about a held call, for the person deciding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewApproval {
    /// The delegating user.
    pub sub: String,
    /// The actor chain, outermost (the calling agent) first.
    pub act: Vec<String>,
    /// Agent build hash.
    pub build: Option<String>,
    /// Task id.
    pub task_id: Option<String>,
    /// Mandate session key.
    pub session: String,
    /// Exposed tool name (`upstream.tool`).
    pub tool: String,
    /// Tool class.
    pub class: String,
    /// The arguments, exactly as they will be forwarded.
    pub args: serde_json::Value,
    /// SHA-256 of the canonical arguments; approvals bind to it.
    pub args_hash: String,
    /// Why a human is asked: the policies and their reasons.
    pub policies: Vec<String>,
    /// Reasons.
    pub reasons: Vec<String>,
    /// Taint labels of the session.
    pub taint: Vec<String>,
    /// Untrusted content the session has read (tool names, in order).
    pub untrusted_sources: Vec<String>,
    /// The decision that asked for approval.
    pub decision_id: String,
    /// The call's correlation id.
    pub correlation_id: String,
    /// Unix milliseconds after which the call is denied.
    pub deadline_ms: i64,
    /// Id of the gateway process holding the call.
    pub holder: String,
}

/// A durable approval request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Id (`apr-` + UUID v7).
    pub id: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Status.
    pub status: ApprovalStatus,
    /// The held call.
    #[serde(flatten)]
    pub request: NewApproval,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When (Unix milliseconds).
    pub decided_ms: Option<i64>,
    /// The decider's comment.
    pub comment: Option<String>,
    /// When the held call used the approval (once only).
    pub released_ms: Option<i64>,
}
