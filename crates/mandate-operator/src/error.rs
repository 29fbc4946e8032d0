//! The operator plane's one error: every refusal or failure of `/api` and
//! of the approval page's JSON endpoints is an [`ApiError`], rendered as
//! `{"error", "error_description"}` (the RFC 6749 §5.2 shape) with
//! `Cache-Control: no-store` and, on 401 and on the 403 of an
//! authenticated non-operator, an RFC 6750 challenge (docs/ERRORS.md).
//!
//! The caller gets a safe message; a failure that is Mandate's own (a
//! store's message, a path) goes to the log and the audit record only.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use mandate_authn::Challenge;
use mandate_control::ControlError;
use serde_json::json;

/// The realm of the operator API's challenges.
const API_REALM: &str = "mandate-api";

/// A challenge as a header value.
fn header_value(c: &Challenge) -> HeaderValue {
    // INVARIANT: the builder writes only visible ASCII and spaces, which
    // every header value may hold; the fallback is never taken.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// An operator API failure, rendered as `{"error", "error_description"}`
/// (the RFC 6749 §5.2 shape) with `Cache-Control: no-store`, and a
/// challenge on 401 and on the 403 of an authenticated non-operator.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    /// What the caller is told.
    public: String,
    /// What the audit record and the log keep: the same as `public`
    /// unless the failure is the gateway's own.
    pub(crate) message: String,
    challenge: Option<Challenge>,
}

impl ApiError {
    /// A failure whose message is fit for the caller. A 401
    /// `invalid_token` and a 403 `forbidden` (a refused token, a verified
    /// subject without the right) carry their RFC 6750 §3.1 challenge.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        let challenge = match (status, code) {
            (StatusCode::UNAUTHORIZED, "invalid_token") => Some("invalid_token"),
            (StatusCode::FORBIDDEN, "forbidden") => Some("insufficient_scope"),
            _ => None,
        }
        .map(|error| Challenge::bearer().realm(API_REALM).error(error, &message));
        Self {
            status,
            code,
            public: message.clone(),
            message,
            challenge,
        }
    }

    /// 401 `invalid_token`: no operator token, or a refused one
    /// (`message` is a fixed, safe text).
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
    }

    /// 403 `forbidden`: a verified token whose subject may not do this.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A failure that is ours, not the caller's (a worker task died).
    pub(crate) fn internal() -> Self {
        Self::server("a worker task failed")
    }

    /// 500 `server_error`: `detail` goes to the log and the audit record,
    /// the caller is told only that it failed.
    pub(crate) fn server(detail: impl Into<String>) -> Self {
        Self::server_saying("internal error".into(), detail)
    }

    /// 500 `server_error` with a `public` sentence of its own (which must
    /// name no path, address or store message).
    pub(crate) fn server_saying(public: String, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(error = %detail, "control API failure");
        Self {
            public,
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", detail)
        }
    }

    /// 503 `temporarily_unavailable`: `public` for the caller, `detail`
    /// for the log and the audit record.
    pub(crate) fn unavailable(public: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        tracing::error!(error = %detail, "{public}");
        Self {
            public: public.to_owned(),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                detail,
            )
        }
    }

    /// 400 `invalid_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<mandate_gateway::AuditUnavailable> for ApiError {
    /// 503: the audit log cannot record the operator's action, so nothing
    /// was changed.
    fn from(_: mandate_gateway::AuditUnavailable) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the audit store is unavailable; nothing was changed",
        )
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ControlError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ControlError::Invalid(_) => Self::bad_request(e.to_string()),
            ControlError::Storage(_) | ControlError::Gone | ControlError::Corrupt { .. } => {
                Self::unavailable("the control store is unavailable", e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": self.code, "error_description": self.public})),
        )
            .into_response();
        if let Some(c) = &self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header_value(c));
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5xx of the operator API tells the caller nothing of the cause;
    /// the audit record keeps it.
    #[tokio::test]
    async fn operator_api_server_errors_keep_the_detail_internal()
    -> Result<(), Box<dyn std::error::Error>> {
        let e =
            ApiError::server("writing /var/lib/mandate/policies: Permission denied (os error 13)");
        assert!(e.message.contains("os error 13"));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await?;
        let text = String::from_utf8(body.to_vec())?;
        assert!(
            !text.contains("os error") && !text.contains("/var/lib"),
            "{text}"
        );
        assert!(text.contains("server_error"), "{text}");
        Ok(())
    }

    /// Operator API refusals carry an RFC 6750 challenge whose values
    /// cannot break out of their quotes.
    #[test]
    fn operator_api_challenges_are_escaped() {
        let resp =
            ApiError::unauthorized("invalid token: \"x\", error=\"y\r\nX: z").into_response();
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(
            challenge,
            "Bearer realm=\"mandate-api\", error=\"invalid_token\", \
             error_description=\"invalid token: 'x', error='y??X: z\""
        );
        let resp = ApiError::forbidden("alice lacks the admin role").into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(
            resp.headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.contains("error=\"insufficient_scope\"")),
        );
    }
}
