//! Every error a client can see, mapped in one place (the table of codes
//! and statuses is docs/ERRORS.md):
//!
//! - [`RpcCode`]: the JSON-RPC error codes, one per meaning;
//! - [`GatewayError`]: what the agent endpoint (`/mcp`) refuses or fails,
//!   rendered as a JSON-RPC error object (`ErrorData`, what `rmcp` sends)
//!   or as an HTTP response carrying one ([`GatewayError::into_http`], for
//!   refusals made before `rmcp` sees the request), with its
//!   `WWW-Authenticate` challenges;
//! - [`UpstreamError`]: why a permitted call's upstream gave no result,
//!   of which the agent sees only a category.
//!
//! The operator plane's errors are `mandate_operator::ApiError`.
//!
//! Clients get a safe message, the decision id and the correlation id;
//! policy internals and upstream details (transport errors, addresses,
//! OS error texts) stay in the audit record and the logs.

use crate::Gateway;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use mandate_authn::Challenge;
use mandate_core::CorrelationId;
use mandate_policy::Decision;
use rmcp::ErrorData;
use rmcp::model::ErrorCode;
use serde_json::{Value, json};

/// The JSON-RPC error codes the gateway answers with, one per meaning
/// (docs/ERRORS.md). -32700..-32603 are JSON-RPC 2.0's own; -32000..-32099
/// is the range JSON-RPC leaves to the implementation. An upstream's own
/// error is relayed with its code unless that code is one of the gateway's
/// in that range (then it is [`RpcCode::UpstreamFailed`], its code in
/// `data.upstream_code`), so a code below always means what this table
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RpcCode {
    /// -32700: the body is not JSON.
    ParseError,
    /// -32600: not a JSON-RPC 2.0 message, more than one `Authorization`
    /// header, or a body over the limit.
    InvalidRequest,
    /// -32602: `tools/call` params of the wrong shape, an unknown tool, an
    /// unknown task.
    InvalidParams,
    /// -32603: a failure of the gateway's own.
    InternalError,
    /// -32000: the gateway is at a capacity limit; retry later.
    Overloaded,
    /// -32001: no credential, or one the gateway does not accept (HTTP 401
    /// with a challenge).
    Unauthenticated,
    /// -32003: refused by the gateway (policy, scope, approval,
    /// revocation, limits, session binding); `data.reason` says why.
    Denied,
    /// -32004: a permitted call's upstream could not be reached, timed out
    /// or answered with something that is not a valid response.
    UpstreamFailed,
    /// -32005: the `Mcp-Session-Id` names no live transport session (HTTP
    /// 404): initialize a new one. It was -32001 before, which also meant
    /// "unauthenticated".
    SessionNotFound,
}

impl RpcCode {
    /// The number on the wire.
    pub const fn value(self) -> i32 {
        match self {
            Self::ParseError => -32700,
            Self::InvalidRequest => -32600,
            Self::InvalidParams => -32602,
            Self::InternalError => -32603,
            Self::Overloaded => -32000,
            Self::Unauthenticated => -32001,
            Self::Denied => -32003,
            Self::UpstreamFailed => -32004,
            Self::SessionNotFound => -32005,
        }
    }

    /// The code a number stands for, if it is one of the gateway's.
    pub fn of(value: i32) -> Option<Self> {
        use strum::VariantArray as _;
        Self::VARIANTS.iter().copied().find(|c| c.value() == value)
    }

    /// Whether the code is one the gateway defined in the server range
    /// (-32000..-32099), as opposed to JSON-RPC's own, which mean the same
    /// from an upstream as from the gateway.
    pub fn is_the_gateways(self) -> bool {
        (-32099..=-32000).contains(&self.value())
    }

    /// A name for logs and docs (`denied`, `upstream_failed`, ...).
    pub fn name(self) -> &'static str {
        self.into()
    }

    fn error_code(self) -> ErrorCode {
        ErrorCode(self.value())
    }
}

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
    /// The gateway stopped while the call was held: retry it (on another
    /// replica, or once this one is back).
    ShuttingDown,
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
    /// The transport session belongs to another subject (F-04).
    ForeignSession,
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
            Self::ShuttingDown => {
                "the gateway stopped while this call waited for approval; retry it".into()
            }
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
            Self::ForeignSession => {
                "this MCP session belongs to another subject; start a new session".into()
            }
        }
    }
}

/// What the agent endpoint refuses or fails, before or inside `rmcp`: the
/// gateway's one client-facing error. Made by the constructors below,
/// rendered only here ([`GatewayError::to_error_data`],
/// [`GatewayError::into_http`]).
#[derive(Debug)]
pub enum GatewayError {
    /// No credential, or one the gateway does not accept.
    Unauthenticated(Unauthenticated),
    /// The `Mcp-Session-Id` names no live transport session.
    SessionNotFound,
    /// The request is not well-formed (JSON, JSON-RPC or MCP params).
    Malformed(Malformed),
    /// A capacity limit: too many transport sessions.
    Overloaded,
    /// Refused by the gateway, with a recorded decision.
    Denied(Denied),
    /// A tool no upstream serves.
    UnknownTool(UnknownTool),
    /// A permitted call whose upstream failed.
    Upstream(Upstream),
    /// A failure of the gateway's own (a worker died).
    Internal,
}

/// A refused credential: what the client is told and the challenges it
/// gets.
#[derive(Debug)]
pub struct Unauthenticated {
    message: String,
    challenges: Vec<Challenge>,
    dpop_nonce: Option<String>,
}

/// A malformed request.
#[derive(Debug)]
pub struct Malformed {
    code: RpcCode,
    status: StatusCode,
    message: String,
}

/// A refusal with its decision.
#[derive(Debug)]
pub struct Denied {
    tool: Option<String>,
    decision: String,
    correlation: Option<CorrelationId>,
    category: DenyCategory,
    status: StatusCode,
    challenge: Option<Challenge>,
    /// The deciding forbid's `@agent_reason`, said instead of the
    /// category's sentence.
    agent_reason: Option<String>,
}

/// A tool name no upstream serves.
#[derive(Debug)]
pub struct UnknownTool {
    tool: String,
    correlation: CorrelationId,
}

/// A permitted call whose upstream failed; the error itself is logged and
/// recorded, never sent.
#[derive(Debug)]
pub struct Upstream {
    error: UpstreamError,
    correlation: CorrelationId,
}

/// Why an upstream call did not produce a result. Its text (addresses,
/// transport and OS errors) is for the log and the audit record only: an
/// agent sees the category [`GatewayError`] maps it to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect or initialise.
    #[error("upstream {upstream:?} is unavailable: {detail}")]
    Unavailable {
        /// Upstream name.
        upstream: String,
        /// What failed.
        detail: String,
    },
    /// No answer within the configured timeout.
    #[error("upstream {upstream:?} did not answer within {secs} s")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout.
        secs: u64,
    },
    /// The upstream answered with something that is not a valid response
    /// to the request.
    #[error("upstream {upstream:?} returned an invalid response: {detail}")]
    InvalidResponse {
        /// Upstream name.
        upstream: String,
        /// What was wrong.
        detail: String,
    },
    /// The upstream's answer was over its `max_result_bytes`: not read
    /// further, the call answered with this error at once.
    #[error("upstream {upstream:?} answered with more than max_result_bytes ({max_bytes} bytes)")]
    ResultTooLarge {
        /// Upstream name.
        upstream: String,
        /// The bound.
        max_bytes: usize,
    },
    /// The upstream answered with a JSON-RPC error.
    #[error("upstream {upstream:?} returned an error: {message}")]
    Protocol {
        /// Upstream name.
        upstream: String,
        /// Its error message.
        message: String,
        /// Its JSON-RPC error, relayed to the client.
        error: Option<ErrorData>,
    },
}

impl UpstreamError {
    /// Audit outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "upstream_unavailable",
            Self::Timeout { .. } => "timeout",
            Self::InvalidResponse { .. } => "upstream_invalid_response",
            Self::ResultTooLarge { .. } => "result_too_large",
            Self::Protocol { .. } => "upstream_error",
        }
    }
}

/// The algorithms named in DPoP challenges (RFC 9449 §7.1).
const DPOP_ALGS: &str = "EdDSA ES256 ES384 RS256 PS256";

impl GatewayError {
    /// No `Authorization` header (or another scheme): a bare challenge
    /// (RFC 6750 §3.1: no error code when no credential was sent).
    pub(crate) fn credential_required(gw: &Gateway) -> Self {
        Self::Unauthenticated(Unauthenticated {
            message: "authentication required: send an OAuth bearer token".into(),
            challenges: vec![agent_challenge(gw)],
            dpop_nonce: None,
        })
    }

    /// A bearer token refused; `description` is a fixed, safe text
    /// (`AuthnError::description`).
    pub(crate) fn invalid_token(gw: &Gateway, description: &str) -> Self {
        Self::Unauthenticated(Unauthenticated {
            message: format!("invalid token: {description}"),
            challenges: vec![agent_challenge(gw).error("invalid_token", description)],
            dpop_nonce: None,
        })
    }

    /// A DPoP-scheme request refused: the Bearer and the DPoP challenge
    /// (RFC 9449 §7.1), and a fresh nonce when one is required.
    pub(crate) fn dpop_refused(
        gw: &Gateway,
        code: &str,
        description: &str,
        dpop_nonce: Option<String>,
    ) -> Self {
        Self::Unauthenticated(Unauthenticated {
            message: format!("invalid token: {description}"),
            challenges: vec![
                agent_challenge(gw).error(code, description),
                Challenge::dpop().algs(DPOP_ALGS).error(code, description),
            ],
            dpop_nonce,
        })
    }

    /// A refused credential where there is no HTTP response to carry a
    /// challenge (stdio: the launch token, re-verified on every call).
    pub(crate) fn unauthenticated(message: impl Into<String>) -> Self {
        Self::Unauthenticated(Unauthenticated {
            message: message.into(),
            challenges: Vec::new(),
            dpop_nonce: None,
        })
    }

    /// More than one `Authorization` header.
    pub(crate) fn two_credentials() -> Self {
        Self::malformed(
            RpcCode::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "invalid request: more than one Authorization header",
        )
    }

    /// A body that does not parse as JSON.
    pub(crate) fn parse_error(e: &serde_json::Error) -> Self {
        Self::malformed(
            RpcCode::ParseError,
            StatusCode::BAD_REQUEST,
            format!("parse error: {e}"),
        )
    }

    /// Not a JSON-RPC 2.0 message.
    pub(crate) fn invalid_message(why: &str) -> Self {
        Self::malformed(
            RpcCode::InvalidRequest,
            StatusCode::BAD_REQUEST,
            format!("invalid JSON-RPC message: {why}"),
        )
    }

    /// `tools/call` params that are not what MCP requires (answered with
    /// HTTP 200, as the JSON-RPC error of that request).
    pub(crate) fn invalid_params(why: &str) -> Self {
        Self::malformed(
            RpcCode::InvalidParams,
            StatusCode::OK,
            format!("invalid params: {why}"),
        )
    }

    /// A body over `limit` bytes, or one that did not arrive in time.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::malformed(
            RpcCode::InvalidRequest,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {limit} bytes or did not arrive in time"),
        )
    }

    fn malformed(code: RpcCode, status: StatusCode, message: impl Into<String>) -> Self {
        Self::Malformed(Malformed {
            code,
            status,
            message: message.into(),
        })
    }

    /// A refused call (HTTP 200 inside `rmcp`: the JSON-RPC error of the
    /// call).
    pub(crate) fn denied(
        tool: &str,
        decision: &Decision,
        correlation: &CorrelationId,
        category: DenyCategory,
    ) -> Self {
        Self::Denied(Denied {
            tool: Some(tool.to_owned()),
            decision: decision.id().as_str().to_owned(),
            correlation: Some(correlation.clone()),
            // Only a policy's own refusal speaks for the policy.
            agent_reason: matches!(
                category,
                DenyCategory::Coded(_) | DenyCategory::NotPermitted
            )
            .then(|| decision.record().agent_reason.clone())
            .flatten(),
            category,
            status: StatusCode::OK,
            challenge: None,
        })
    }

    /// A `tools/call` outside the token's scope, refused at the HTTP layer
    /// with 403 and the challenge a client needs to step up (RFC 6750
    /// §3.1).
    pub(crate) fn out_of_scope(gw: &Gateway, tool: &str, decision: &Decision) -> Self {
        Self::Denied(Denied {
            tool: Some(tool.to_owned()),
            decision: decision.id().as_str().to_owned(),
            correlation: None,
            category: DenyCategory::InsufficientScope,
            status: StatusCode::FORBIDDEN,
            challenge: Some(
                agent_challenge(gw)
                    .error(
                        "insufficient_scope",
                        "the token's scope does not cover this tool",
                    )
                    .scope(tool),
            ),
            agent_reason: None,
        })
    }

    /// A transport session used by a subject other than its own (F-04).
    pub(crate) fn foreign_session(decision: &Decision) -> Self {
        Self::Denied(Denied {
            tool: None,
            decision: decision.id().as_str().to_owned(),
            correlation: None,
            category: DenyCategory::ForeignSession,
            status: StatusCode::FORBIDDEN,
            challenge: None,
            agent_reason: None,
        })
    }

    /// A tool name no upstream serves.
    pub(crate) fn unknown_tool(tool: &str, correlation: &CorrelationId) -> Self {
        Self::UnknownTool(UnknownTool {
            tool: tool.to_owned(),
            correlation: correlation.clone(),
        })
    }

    /// A permitted call whose upstream failed. The failure itself is logged
    /// here, with the correlation id; the pipeline records it in the
    /// call's outcome record.
    pub(crate) fn upstream(error: UpstreamError, correlation: &CorrelationId) -> Self {
        tracing::warn!(
            correlation_id = %correlation,
            outcome = error.outcome(),
            error = %error,
            "upstream call failed"
        );
        Self::Upstream(Upstream {
            error,
            correlation: correlation.clone(),
        })
    }

    /// The JSON-RPC code.
    pub fn code(&self) -> RpcCode {
        match self {
            Self::Unauthenticated(_) => RpcCode::Unauthenticated,
            Self::SessionNotFound => RpcCode::SessionNotFound,
            Self::Malformed(m) => m.code,
            Self::Overloaded => RpcCode::Overloaded,
            Self::Denied(_) => RpcCode::Denied,
            Self::UnknownTool(_) => RpcCode::InvalidParams,
            Self::Upstream(_) => RpcCode::UpstreamFailed,
            Self::Internal => RpcCode::InternalError,
        }
    }

    /// The HTTP status when the gateway answers before `rmcp` does (inside
    /// `rmcp`, a JSON-RPC error travels in a 200 response or an SSE event).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::SessionNotFound => StatusCode::NOT_FOUND,
            Self::Malformed(m) => m.status,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Denied(d) => d.status,
            Self::UnknownTool(_) | Self::Upstream(_) => StatusCode::OK,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON-RPC error object: code, safe message, `data`.
    pub fn to_error_data(&self) -> ErrorData {
        let code = self.code().error_code();
        match self {
            Self::Unauthenticated(u) => ErrorData::new(code, u.message.clone(), None),
            Self::SessionNotFound => {
                ErrorData::new(code, "session not found: initialize a new session", None)
            }
            Self::Malformed(m) => ErrorData::new(code, m.message.clone(), None),
            Self::Overloaded => ErrorData::new(
                code,
                "too many MCP sessions are open on this gateway; retry later",
                None,
            ),
            Self::Denied(d) => {
                let what = d
                    .tool
                    .as_deref()
                    .map_or_else(|| "request".to_owned(), |t| format!("call to {t}"));
                let mut data = json!({
                    "denied": true,
                    "reason": d.category.code(),
                    "decision_id": d.decision,
                });
                if let Some(obj) = data.as_object_mut() {
                    if let Some(tool) = &d.tool {
                        obj.insert("tool".into(), tool.as_str().into());
                    }
                    if let Some(c) = &d.correlation {
                        obj.insert("correlation_id".into(), c.as_str().into());
                    }
                }
                let sentence = match &d.agent_reason {
                    Some(said) => format!("{}; {said}", d.category.sentence()),
                    None => d.category.sentence(),
                };
                ErrorData::new(
                    code,
                    format!("{what} denied: {sentence} (decision {})", d.decision),
                    Some(data),
                )
            }
            Self::UnknownTool(u) => ErrorData::new(
                code,
                format!("unknown tool: {}", u.tool),
                Some(json!({ "unknown_tool": u.tool, "correlation_id": u.correlation.as_str() })),
            ),
            Self::Upstream(u) => upstream_error_data(&u.error, &u.correlation),
            Self::Internal => ErrorData::new(code, "internal error", None),
        }
    }

    /// The HTTP response for a refusal made before `rmcp` sees the request:
    /// the status, a JSON-RPC error answering `id` (null when the request
    /// could not be read), its challenges and a DPoP nonce if any.
    pub fn into_http(self, id: Value) -> Response {
        let error = serde_json::to_value(self.to_error_data()).unwrap_or_else(
            |_| json!({"code": RpcCode::InternalError.value(), "message": "internal error"}),
        );
        let mut resp = (
            self.status(),
            Json(json!({"jsonrpc": "2.0", "id": id, "error": error})),
        )
            .into_response();
        let headers = resp.headers_mut();
        let (challenges, nonce) = match self {
            Self::Unauthenticated(u) => (u.challenges, u.dpop_nonce),
            Self::Denied(d) => (d.challenge.into_iter().collect(), None),
            _ => (Vec::new(), None),
        };
        for c in &challenges {
            headers.append(header::WWW_AUTHENTICATE, header_value(c));
        }
        if let Some(n) = nonce
            && let Ok(v) = HeaderValue::from_str(&n)
        {
            headers.insert("dpop-nonce", v);
        }
        resp
    }
}

impl From<GatewayError> for ErrorData {
    fn from(e: GatewayError) -> Self {
        e.to_error_data()
    }
}

/// What an agent learns of a failed upstream: a category, the upstream's
/// name (part of every tool name it sees) and the correlation id; never the
/// transport's error text, an address or a URL. The upstream's own JSON-RPC
/// error is the tool server's answer and is relayed, with its code unless
/// that collides with one of the gateway's [`RpcCode`]s.
fn upstream_error_data(e: &UpstreamError, correlation: &CorrelationId) -> ErrorData {
    let (upstream, sentence) = match e {
        UpstreamError::Protocol {
            error: Some(err), ..
        } => {
            let mut err = err.clone();
            let mut data = json!({
                "upstream_data": err.data.take(),
                "correlation_id": correlation.as_str(),
            });
            if RpcCode::of(err.code.0).is_some_and(RpcCode::is_the_gateways)
                && let Some(obj) = data.as_object_mut()
            {
                obj.insert("upstream_code".into(), err.code.0.into());
                obj.insert("outcome".into(), e.outcome().into());
                err.code = RpcCode::UpstreamFailed.error_code();
            }
            err.data = Some(data);
            return err;
        }
        UpstreamError::Protocol { upstream, .. } => {
            (upstream, "upstream returned an error".to_owned())
        }
        UpstreamError::Unavailable { upstream, .. } => (
            upstream,
            "upstream unavailable: the tool's server could not be reached; retry later".to_owned(),
        ),
        UpstreamError::Timeout { upstream, secs } => (
            upstream,
            format!("upstream timed out: the tool's server did not answer within {secs} s"),
        ),
        UpstreamError::InvalidResponse { upstream, .. } => {
            (upstream, "upstream returned an invalid response".to_owned())
        }
        UpstreamError::ResultTooLarge {
            upstream,
            max_bytes,
        } => (
            upstream,
            format!("upstream result too large: the tool's answer exceeded {max_bytes} bytes"),
        ),
    };
    ErrorData::new(
        RpcCode::UpstreamFailed.error_code(),
        format!("{sentence} ({upstream}; correlation {correlation})"),
        Some(json!({
            "outcome": e.outcome(),
            "upstream": upstream,
            "correlation_id": correlation.as_str(),
        })),
    )
}

/// The error returned for a refused call.
pub fn denial_error(
    tool: &str,
    decision: &Decision,
    correlation: &CorrelationId,
    category: &DenyCategory,
) -> ErrorData {
    GatewayError::denied(tool, decision, correlation, category.clone()).into()
}

/// The error for a tool name no upstream serves (JSON-RPC invalid params, as
/// MCP specifies for unknown tools).
pub fn unknown_tool_error(tool: &str, correlation: &CorrelationId) -> ErrorData {
    GatewayError::unknown_tool(tool, correlation).into()
}

/// The error for a permitted call whose upstream failed (logged here).
pub fn upstream_error(e: &UpstreamError, correlation: &CorrelationId) -> ErrorData {
    GatewayError::upstream(e.clone(), correlation).into()
}

/// `tasks/get` or `tasks/cancel` of a task the caller does not own or that
/// does not exist (JSON-RPC invalid params).
pub(crate) fn unknown_task(id: &str) -> ErrorData {
    GatewayError::malformed(
        RpcCode::InvalidParams,
        StatusCode::OK,
        format!("no task {id}"),
    )
    .into()
}

/// `tasks/get` or `tasks/cancel` when the control store cannot answer.
pub(crate) fn tasks_unavailable() -> ErrorData {
    ErrorData::new(
        RpcCode::InternalError.error_code(),
        "the task store is unavailable; try again shortly",
        None,
    )
}

/// A released call whose upstream answered with a task or an input
/// request, which a held task cannot relay.
pub(crate) fn unrelayable_in_task() -> ErrorData {
    ErrorData::new(
        RpcCode::InternalError.error_code(),
        "the tool answered with a multi-step response, which a held task cannot relay",
        None,
    )
}

/// The challenge of the agent endpoint: Bearer with the RFC 9728
/// `resource_metadata` URL, so standard MCP clients find the authorization
/// server.
pub(crate) fn agent_challenge(gw: &Gateway) -> Challenge {
    Challenge::bearer().resource_metadata(&gw.config().metadata_url())
}

/// A challenge as a header value.
fn header_value(c: &Challenge) -> HeaderValue {
    // INVARIANT: the builder writes only visible ASCII and spaces, which
    // every header value may hold; the fallback is never taken.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
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
            (DenyCategory::ShuttingDown, "shutting_down"),
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
            (DenyCategory::ForeignSession, "foreign_session"),
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
                | DenyCategory::ShuttingDown
                | DenyCategory::ControlUnavailable
                | DenyCategory::ToolQuarantined
                | DenyCategory::UnknownBuild
                | DenyCategory::TooManyCalls
                | DenyCategory::Coded(_)
                | DenyCategory::ForeignSession => assert_eq!(category.code(), *code),
            }
        }
        assert_eq!(table.len(), 19);
    }

    /// Each code means one thing: the values are frozen (clients match
    /// on them) and no two meanings share one.
    #[test]
    fn rpc_codes_are_unique_and_unchanged() {
        use strum::VariantArray as _;
        let table = [
            (RpcCode::ParseError, -32700),
            (RpcCode::InvalidRequest, -32600),
            (RpcCode::InvalidParams, -32602),
            (RpcCode::InternalError, -32603),
            (RpcCode::Overloaded, -32000),
            (RpcCode::Unauthenticated, -32001),
            (RpcCode::Denied, -32003),
            (RpcCode::UpstreamFailed, -32004),
            (RpcCode::SessionNotFound, -32005),
        ];
        assert_eq!(table.len(), RpcCode::VARIANTS.len());
        for (code, value) in table {
            assert_eq!(code.value(), value, "{}", code.name());
            assert_eq!(RpcCode::of(value), Some(code));
        }
        let mut values: Vec<i32> = RpcCode::VARIANTS.iter().map(|c| c.value()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), RpcCode::VARIANTS.len());
    }

    /// What a failed upstream's transport said (an address, a URL, the OS
    /// error) reaches the log and the audit record, never the agent.
    #[test]
    fn upstream_failures_reach_the_agent_as_a_category_only() -> Result<(), serde_json::Error> {
        let internal = "error sending request for url (http://10.9.8.7:4444/mcp): \
                        client error (Connect): tcp connect error: Connection refused (os error 111)";
        let correlation = CorrelationId::new();
        let failures = [
            (
                UpstreamError::Unavailable {
                    upstream: "bank".into(),
                    detail: internal.into(),
                },
                "upstream unavailable",
                "upstream_unavailable",
            ),
            (
                UpstreamError::InvalidResponse {
                    upstream: "bank".into(),
                    detail: internal.into(),
                },
                "upstream returned an invalid response",
                "upstream_invalid_response",
            ),
            (
                UpstreamError::Timeout {
                    upstream: "bank".into(),
                    secs: 7,
                },
                "upstream timed out",
                "timeout",
            ),
            (
                UpstreamError::Protocol {
                    upstream: "bank".into(),
                    message: internal.into(),
                    error: None,
                },
                "upstream returned an error",
                "upstream_error",
            ),
        ];
        for (failure, category, outcome) in failures {
            // The detail is in the error's text, which is what is logged
            // and recorded.
            assert!(
                failure.to_string().contains("os error")
                    || matches!(failure, UpstreamError::Timeout { .. }),
                "{failure}"
            );
            let err = upstream_error(&failure, &correlation);
            let sent = serde_json::to_string(&err)?;
            for secret in [
                "os error",
                "Connection refused",
                "10.9.8.7",
                "http://",
                "tcp connect",
            ] {
                assert!(
                    !sent.contains(secret),
                    "{secret:?} reached the agent: {sent}"
                );
            }
            assert_eq!(err.code.0, RpcCode::UpstreamFailed.value());
            assert!(err.message.starts_with(category), "{}", err.message);
            assert!(
                err.message.contains(correlation.as_str()),
                "{}",
                err.message
            );
            let data = err.data.unwrap_or_default();
            assert_eq!(data.get("outcome"), Some(&json!(outcome)), "{data}");
            assert_eq!(
                data.get("correlation_id"),
                Some(&json!(correlation.as_str()))
            );
            assert_eq!(data.get("upstream"), Some(&json!("bank")));
        }
        Ok(())
    }

    /// An upstream's own JSON-RPC error is relayed, but it cannot speak
    /// with one of the gateway's codes (an upstream's -32003 is not a
    /// denial by the gateway).
    #[test]
    fn relayed_upstream_errors_cannot_borrow_the_gateways_codes() {
        let correlation = CorrelationId::new();
        let relay = |code: i32| {
            upstream_error(
                &UpstreamError::Protocol {
                    upstream: "bank".into(),
                    message: "no".into(),
                    error: Some(ErrorData::new(
                        ErrorCode(code),
                        "the tool says no",
                        Some(json!({"denied": true})),
                    )),
                },
                &correlation,
            )
        };
        let spoofed = relay(RpcCode::Denied.value());
        assert_eq!(spoofed.code.0, RpcCode::UpstreamFailed.value());
        let data = spoofed.data.unwrap_or_default();
        assert_eq!(data.get("upstream_code"), Some(&json!(-32003)));
        assert_eq!(data.get("denied"), None, "{data}");
        assert_eq!(data.pointer("/upstream_data/denied"), Some(&json!(true)));

        let own = relay(-32602);
        assert_eq!(own.code.0, -32602);
        assert_eq!(own.message, "the tool says no");
        let data = own.data.unwrap_or_default();
        assert_eq!(data.get("upstream_code"), None);
        assert_eq!(
            data.get("correlation_id"),
            Some(&json!(correlation.as_str()))
        );
    }
}
