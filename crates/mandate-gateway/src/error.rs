//! Every error a client can see, mapped in one place. Clients get a safe
//! message, the decision id and the correlation id; policy internals and
//! upstream details stay in the audit record and the logs.

use crate::upstream::UpstreamError;
use mandate_core::{CorrelationId, Decision};
use rmcp::ErrorData;
use rmcp::model::ErrorCode;
use serde_json::json;

/// JSON-RPC error code for a call the gateway refused (implementation-defined
/// server error range, -32000..-32099).
pub const CODE_DENIED: i32 = -32003;
/// JSON-RPC error code for an upstream that failed, hung or was unreachable.
pub const CODE_UPSTREAM: i32 = -32004;

/// Why a call was refused, in terms an agent can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyCategory {
    /// No policy permits it, or a policy forbids it.
    NotPermitted,
    /// The token's scope does not cover the tool: ask for a token that does.
    InsufficientScope,
    /// A human must approve the call.
    ApprovalRequired,
    /// The arguments do not match the tool's input schema (message says how).
    InvalidArguments(String),
    /// The tool is not classified in configuration.
    NotConfigured,
    /// The audit store could not record the decision.
    AuditUnavailable,
    /// The upstream's catalogue could not be read.
    UpstreamUnavailable,
    /// The token expired.
    TokenExpired,
    /// A kill switch covers the user, agent, build, task, session or token.
    Revoked,
    /// A person denied the held call.
    ApprovalDenied,
    /// Nobody decided the held call in time.
    ApprovalExpired,
    /// The client went away while the call was held.
    Withdrawn,
    /// The tool changed since it was pinned, or its description carries
    /// instructions: an operator must approve it again.
    ToolQuarantined,
    /// The token's build is not registered, or the tools served to it no
    /// longer hash to the build's registered manifest.
    UnknownBuild,
    /// The subject has too many calls in flight; retry when one finishes.
    TooManyCalls,
}

impl DenyCategory {
    /// Stable machine-readable code, in the error's `data.reason`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotPermitted => "not_permitted",
            Self::InsufficientScope => "insufficient_scope",
            Self::ApprovalRequired => "approval_required",
            Self::InvalidArguments(_) => "invalid_arguments",
            Self::NotConfigured => "tool_not_configured",
            Self::AuditUnavailable => "audit_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::TokenExpired => "token_expired",
            Self::Revoked => "revoked",
            Self::ApprovalDenied => "approval_denied",
            Self::ApprovalExpired => "approval_timeout",
            Self::Withdrawn => "withdrawn",
            Self::ToolQuarantined => "tool_quarantined",
            Self::UnknownBuild => "unknown_build",
            Self::TooManyCalls => "too_many_concurrent_calls",
        }
    }

    fn sentence(&self) -> String {
        match self {
            Self::NotPermitted => "not permitted by policy".into(),
            Self::InsufficientScope => "outside the token's scope".into(),
            Self::ApprovalRequired => "requires human approval".into(),
            Self::InvalidArguments(m) => format!("arguments rejected: {m}"),
            Self::NotConfigured => "tool is not enabled on this gateway".into(),
            Self::AuditUnavailable => "the audit store is unavailable".into(),
            Self::UpstreamUnavailable => "the tool's server is unavailable".into(),
            Self::TokenExpired => "the token has expired".into(),
            Self::Revoked => "access was revoked by an operator".into(),
            Self::ApprovalDenied => "a person denied this call".into(),
            Self::ApprovalExpired => "no person approved this call in time".into(),
            Self::Withdrawn => "withdrawn while waiting for approval".into(),
            Self::ToolQuarantined => "the tool is quarantined until an operator approves it".into(),
            Self::UnknownBuild => "the agent's build is not registered for these tools".into(),
            Self::TooManyCalls => {
                "too many calls of this subject are in flight; retry when one finishes".into()
            }
        }
    }
}

/// The error returned for a refused call.
pub fn denial_error(
    tool: &str,
    decision: &Decision,
    correlation: &CorrelationId,
    category: &DenyCategory,
) -> ErrorData {
    ErrorData::new(
        ErrorCode(CODE_DENIED),
        format!(
            "call to {tool} denied: {} (decision {})",
            category.sentence(),
            decision.id
        ),
        Some(json!({
            "denied": true,
            "tool": tool,
            "reason": category.code(),
            "decision_id": decision.id.as_str(),
            "correlation_id": correlation.as_str(),
        })),
    )
}

/// The error for a tool name no upstream serves (JSON-RPC invalid params, as
/// MCP specifies for unknown tools).
pub fn unknown_tool_error(tool: &str, correlation: &CorrelationId) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown tool: {tool}"),
        Some(json!({ "unknown_tool": tool, "correlation_id": correlation.as_str() })),
    )
}

/// The error for a permitted call whose upstream failed.
pub fn upstream_error(e: &UpstreamError, correlation: &CorrelationId) -> ErrorData {
    match e {
        // The upstream's own JSON-RPC error is relayed with its code.
        UpstreamError::Protocol {
            error: Some(err), ..
        } => {
            let mut err = err.clone();
            err.data = Some(json!({
                "upstream_data": err.data.take(),
                "correlation_id": correlation.as_str(),
            }));
            err
        }
        _ => ErrorData::new(
            ErrorCode(CODE_UPSTREAM),
            e.to_string(),
            Some(json!({ "outcome": e.outcome(), "correlation_id": correlation.as_str() })),
        ),
    }
}
