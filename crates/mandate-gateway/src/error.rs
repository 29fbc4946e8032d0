//! Every error a client can see, mapped in one place. Clients get a safe
//! message, the decision id and the correlation id; policy internals and
//! upstream details stay in the audit record and the logs.

use crate::upstream::UpstreamError;
use mandate_core::CorrelationId;
use mandate_policy::Decision;
use rmcp::ErrorData;
use rmcp::model::ErrorCode;
use serde_json::json;

/// JSON-RPC error code for a call the gateway refused (implementation-defined
/// server error range, -32000..-32099).
pub const CODE_DENIED: i32 = -32003;
/// JSON-RPC error code for an upstream that failed, hung or was unreachable.
pub const CODE_UPSTREAM: i32 = -32004;

/// The reason code of a sink call denied for carrying a value only
/// untrusted content introduced (docs/PROVENANCE.md).
pub const UNTRUSTED_ARGUMENT: &str = "untrusted_argument";

/// Why a call was refused, in terms an agent can act on. Its code (snake
/// case unless renamed) is part of the error data agents see and of the
/// audit trail.
#[derive(Debug, Clone, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
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
    #[strum(serialize = "tool_not_configured")]
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
    #[strum(serialize = "approval_timeout")]
    ApprovalExpired,
    /// The client went away while the call was held.
    Withdrawn,
    /// The control store (tool pins, approvals) could not be read or
    /// written; retry once it is back.
    #[strum(serialize = "control_store_unavailable")]
    ControlUnavailable,
    /// The tool changed since it was pinned, or its description carries
    /// instructions: an operator must approve it again.
    ToolQuarantined,
    /// The token's build is not registered, or the tools served to it no
    /// longer hash to the build's registered manifest.
    UnknownBuild,
    /// The subject has too many calls in flight; retry when one finishes.
    #[strum(serialize = "too_many_concurrent_calls")]
    TooManyCalls,
    /// A `forbid` policy with its own reason code (`@code`), e.g.
    /// `untrusted_argument`: the code is the reason.
    Coded(String),
}

impl DenyCategory {
    /// Stable machine-readable code, in the error's `data.reason`.
    pub fn code(&self) -> &str {
        match self {
            Self::Coded(code) => code,
            other => other.into(),
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
            Self::ControlUnavailable => "the control store is unavailable".into(),
            Self::ToolQuarantined => "the tool is quarantined until an operator approves it".into(),
            Self::UnknownBuild => "the agent's build is not registered for these tools".into(),
            Self::TooManyCalls => {
                "too many calls of this subject are in flight; retry when one finishes".into()
            }
            Self::Coded(code) if code == UNTRUSTED_ARGUMENT => {
                "an argument carries a value that only untrusted content introduced, and the task's intent does not cover it; ask the user to name the value in the task".into()
            }
            Self::Coded(code) => format!("forbidden by policy ({code})"),
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
            decision.id()
        ),
        Some(json!({
            "denied": true,
            "tool": tool,
            "reason": category.code(),
            "decision_id": decision.id().as_str(),
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
        // What failed underneath (a transport error may quote whatever the
        // upstream sent, garbage included) goes to the log and the outcome
        // record, not to the agent.
        UpstreamError::Unavailable { upstream, .. } => ErrorData::new(
            ErrorCode(CODE_UPSTREAM),
            format!(
                "upstream {upstream:?} is unavailable or answered with something that is not MCP"
            ),
            Some(json!({ "outcome": e.outcome(), "correlation_id": correlation.as_str() })),
        ),
        _ => ErrorData::new(
            ErrorCode(CODE_UPSTREAM),
            e.to_string(),
            Some(json!({ "outcome": e.outcome(), "correlation_id": correlation.as_str() })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes agents see in `data.reason` and the audit trail keeps.
    #[test]
    fn deny_category_codes_are_unchanged() {
        let table = [
            (DenyCategory::NotPermitted, "not_permitted"),
            (DenyCategory::InsufficientScope, "insufficient_scope"),
            (DenyCategory::ApprovalRequired, "approval_required"),
            (
                DenyCategory::InvalidArguments("x".into()),
                "invalid_arguments",
            ),
            (DenyCategory::NotConfigured, "tool_not_configured"),
            (DenyCategory::AuditUnavailable, "audit_unavailable"),
            (DenyCategory::UpstreamUnavailable, "upstream_unavailable"),
            (DenyCategory::TokenExpired, "token_expired"),
            (DenyCategory::Revoked, "revoked"),
            (DenyCategory::ApprovalDenied, "approval_denied"),
            (DenyCategory::ApprovalExpired, "approval_timeout"),
            (DenyCategory::Withdrawn, "withdrawn"),
            (
                DenyCategory::ControlUnavailable,
                "control_store_unavailable",
            ),
            (DenyCategory::ToolQuarantined, "tool_quarantined"),
            (DenyCategory::UnknownBuild, "unknown_build"),
            (DenyCategory::TooManyCalls, "too_many_concurrent_calls"),
            (
                DenyCategory::Coded("untrusted_argument".into()),
                "untrusted_argument",
            ),
        ];
        for (category, code) in &table {
            // Every variant is in the table: this match has no wildcard.
            match category {
                DenyCategory::NotPermitted
                | DenyCategory::InsufficientScope
                | DenyCategory::ApprovalRequired
                | DenyCategory::InvalidArguments(_)
                | DenyCategory::NotConfigured
                | DenyCategory::AuditUnavailable
                | DenyCategory::UpstreamUnavailable
                | DenyCategory::TokenExpired
                | DenyCategory::Revoked
                | DenyCategory::ApprovalDenied
                | DenyCategory::ApprovalExpired
                | DenyCategory::Withdrawn
                | DenyCategory::ControlUnavailable
                | DenyCategory::ToolQuarantined
                | DenyCategory::UnknownBuild
                | DenyCategory::TooManyCalls
                | DenyCategory::Coded(_) => assert_eq!(category.code(), *code),
            }
        }
        assert_eq!(table.len(), 17);
    }
}
