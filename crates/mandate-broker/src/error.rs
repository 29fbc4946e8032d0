//! Errors: [`BrokerError`] for setup, [`Refusal`] for requests.
//!
//! A refusal carries an RFC 6749 §5.2 / RFC 8693 §2.2.2 error code, a fixed
//! description safe for clients, and an internal reason that goes to the
//! log and the audit record only (it may name a claim or a key id, never a
//! token or key material).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Why the broker could not be built or could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is unusable.
    #[error("broker configuration: {0}")]
    Config(String),
    /// Signing keys could not be created, read or written.
    #[error("broker keys: {0}")]
    Keys(String),
    /// An identity provider's discovery document or keys could not be loaded.
    #[error("identity provider {issuer:?}: {reason}")]
    Provider {
        /// The provider.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// Token verification setup failed.
    #[error(transparent)]
    Authn(#[from] mandate_authn::AuthnError),
}

/// The OAuth error codes the broker answers with (spelled in snake case
/// on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request, or an unacceptable subject or actor token (RFC 8693 §2.2.2).
    InvalidRequest,
    /// Client authentication failed (RFC 6749 §5.2).
    InvalidClient,
    /// The authenticated client may not do this.
    UnauthorizedClient,
    /// Not the token-exchange grant.
    UnsupportedGrantType,
    /// Empty or widening scope.
    InvalidScope,
    /// A resource or audience the broker does not serve (RFC 8693 §2.2.2).
    InvalidTarget,
    /// A missing or invalid DPoP proof (RFC 9449 §5).
    InvalidDpopProof,
    /// The DPoP proof lacks the current server nonce (RFC 9449 §8).
    UseDpopNonce,
    /// A failure of ours (audit store, clock).
    ServerError,
    /// The audit store cannot write: nothing is issued.
    TemporarilyUnavailable,
    /// Malformed or unacceptable `authorization_details` (RFC 9396 §5).
    InvalidAuthorizationDetails,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A refused request.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The OAuth error code.
    pub code: ErrorCode,
    /// Fixed text for the client.
    pub description: &'static str,
    /// Detail for logs and audit (never a token or key material).
    pub reason: String,
    /// A fresh DPoP nonce to send along (`use_dpop_nonce`).
    pub dpop_nonce: Option<String>,
}

impl Refusal {
    /// A refusal with a public description and an internal reason.
    pub fn new(code: ErrorCode, description: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            description,
            reason: reason.into(),
            dpop_nonce: None,
        }
    }

    /// `invalid_request` with `description` as both texts.
    pub fn request(description: &'static str) -> Self {
        Self::new(ErrorCode::InvalidRequest, description, description)
    }

    /// `invalid_client`: the details stay internal.
    pub fn client(reason: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InvalidClient,
            "client authentication failed",
            reason,
        )
    }

    /// `server_error`: a failure of ours; the details stay internal.
    pub fn server(reason: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ServerError,
            "the broker could not complete the exchange",
            reason,
        )
    }

    /// The audit store could not record: nothing was issued.
    pub fn audit_unavailable() -> Self {
        Self::new(
            ErrorCode::TemporarilyUnavailable,
            "the broker cannot record the exchange right now; nothing was issued",
            "audit store unavailable",
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.reason)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        });
        let mut resp = (self.code.status(), Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.code == ErrorCode::InvalidClient {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mandate-broker\""),
            );
        }
        if let Some(nonce) = self.dpop_nonce
            && let Ok(v) = HeaderValue::from_str(&nonce)
        {
            h.insert("dpop-nonce", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6749 / 8693 / 9449 spellings.
    #[test]
    fn error_code_spellings_are_unchanged() {
        use strum::VariantArray as _;
        let table = [
            (ErrorCode::InvalidRequest, "invalid_request"),
            (ErrorCode::InvalidClient, "invalid_client"),
            (ErrorCode::UnauthorizedClient, "unauthorized_client"),
            (ErrorCode::UnsupportedGrantType, "unsupported_grant_type"),
            (ErrorCode::InvalidScope, "invalid_scope"),
            (ErrorCode::InvalidTarget, "invalid_target"),
            (ErrorCode::InvalidDpopProof, "invalid_dpop_proof"),
            (ErrorCode::UseDpopNonce, "use_dpop_nonce"),
            (ErrorCode::ServerError, "server_error"),
            (ErrorCode::TemporarilyUnavailable, "temporarily_unavailable"),
            (
                ErrorCode::InvalidAuthorizationDetails,
                "invalid_authorization_details",
            ),
        ];
        assert_eq!(table.len(), ErrorCode::VARIANTS.len());
        for (code, spelled) in table {
            assert_eq!(code.as_str(), spelled);
        }
    }

    #[test]
    fn codes_and_statuses_follow_rfc_6749() {
        assert_eq!(ErrorCode::InvalidClient.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(ErrorCode::InvalidTarget.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ErrorCode::InvalidTarget.as_str(), "invalid_target");
        assert_eq!(ErrorCode::InvalidRequest.as_str(), "invalid_request");
    }

    #[tokio::test]
    async fn the_response_carries_no_internal_reason() -> Result<(), Box<dyn std::error::Error>> {
        let r = Refusal::client("assertion jti 1234 replayed; key kid-secret").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body = axum::body::to_bytes(r.into_body(), 4096).await?;
        let text = String::from_utf8(body.to_vec())?;
        assert!(text.contains("invalid_client"));
        assert!(!text.contains("1234") && !text.contains("kid-secret"));
        Ok(())
    }
}
