//! Errors: [`BrokerError`] for setup, [`Refusal`] for the token,
//! introspection and revocation endpoints, [`InvalidTask`] for a task
//! start the broker refuses (the operator plane renders it).
//!
//! Every response the broker refuses with is made here, from its one
//! [`ErrorCode`] type: an RFC 6749 §5.2 / RFC 8693 §2.2.2 body
//! (`{"error", "error_description"}`, `Cache-Control: no-store`), the
//! status that code takes, and a `WWW-Authenticate` challenge (built with
//! [`mandate_authn::Challenge`]) on every 401 and 403. A refusal carries a
//! fixed description safe for clients and an internal reason that goes to
//! the log and the audit record only (it may name a claim or a key id,
//! never a token or key material). The table is docs/ERRORS.md.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use mandate_authn::Challenge;

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
    /// Not a grant the broker serves.
    UnsupportedGrantType,
    /// An authorization code that is unknown, used, expired or not this
    /// request's (RFC 6749 §5.2).
    InvalidGrant,
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

    /// The HTTP status this code is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidRequest
            | Self::UnauthorizedClient
            | Self::UnsupportedGrantType
            | Self::InvalidGrant
            | Self::InvalidScope
            | Self::InvalidTarget
            | Self::InvalidDpopProof
            | Self::UseDpopNonce
            | Self::InvalidAuthorizationDetails => StatusCode::BAD_REQUEST,
        }
    }

    /// The challenge sent with this code, on every 401: the token
    /// endpoint's client authentication (RFC 6749 §5.2) in the broker's
    /// realm.
    fn challenge(self) -> Option<Challenge> {
        match self {
            Self::InvalidClient => Some(Challenge::bearer().realm(TOKEN_REALM)),
            _ => None,
        }
    }
}

/// The realm of the token, introspection and revocation endpoints.
const TOKEN_REALM: &str = "mandate-broker";

/// The one rendering of a broker error: status, body, no-store, challenge,
/// DPoP nonce.
fn respond(code: ErrorCode, description: &str, dpop_nonce: Option<&str>) -> Response {
    let body = serde_json::json!({
        "error": code.as_str(),
        "error_description": description,
    });
    let mut resp = (code.status(), Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(c) = code.challenge()
        && let Ok(v) = HeaderValue::from_str(&c.to_string())
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(nonce) = dpop_nonce
        && let Ok(v) = HeaderValue::from_str(nonce)
    {
        h.insert("dpop-nonce", v);
    }
    resp
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
        respond(self.code, self.description, self.dpop_nonce.as_deref())
    }
}

/// A task start the broker refuses (the task API's `400`): the operator's
/// own mistake, so the text names what is wrong (a template, the intent).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTask(pub(crate) String);

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
            (ErrorCode::InvalidGrant, "invalid_grant"),
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

    /// Every 401 and 403 the broker sends carries a challenge, and only
    /// those do.
    #[test]
    fn every_401_and_403_has_a_challenge() {
        use strum::VariantArray as _;
        for code in ErrorCode::VARIANTS {
            let resp = Refusal::new(*code, "why \"quoted\"", "internal").into_response();
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok());
            let needs = matches!(
                resp.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            );
            assert_eq!(challenge.is_some(), needs, "{code:?}: {challenge:?}");
            if let Some(c) = challenge {
                assert!(c.starts_with("Bearer realm=\"mandate-"), "{c}");
                assert!(!c.contains("\\") && !c.contains("\"quoted\""), "{c}");
            }
        }
    }
}
