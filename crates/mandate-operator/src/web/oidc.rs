//! Sign-in to the approval page through the configured OpenID Connect
//! provider. The protocol (discovery, the code flow with PKCE S256,
//! `state` and `nonce`, the code exchange, ID token checks) is
//! [`mandate_authn::oidc::RelyingParty`], shared with the broker's MCP
//! sign-in; this module binds each attempt to the browser that started it
//! and to where it lands afterwards.
//!
//! 1. `start`: a new authorization request, and a browser binding kept in
//!    a short-lived cookie; redirect to the authorization endpoint.
//! 2. `finish` (the callback): the `state` names the attempt (used once,
//!    10 minutes at most), which must have been started by this browser;
//!    then the relying party exchanges the code and verifies the ID token.

use crate::config::OidcConfig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use mandate_authn::Principal;
use mandate_authn::oidc::{RelyingParty, RpConfig};
use mandate_control::ControlStore;
use mandate_control::ephemeral::{Kind, OnFull};
use mandate_core::Clock;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use mandate_authn::oidc::Callback;

/// The cookie binding a sign-in attempt to the browser that started it.
/// `SameSite=Lax`, because the provider's redirect back is a cross-site
/// navigation (a `Strict` cookie would not be sent with it).
pub(crate) const FLOW_COOKIE: &str = "mandate_oidc";
/// How long a sign-in attempt may take.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// Most sign-in attempts in progress at once.
const MAX_FLOWS: usize = 10_000;

/// Why a sign-in through the provider failed. Messages are safe to show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OidcError {
    #[error(transparent)]
    Rp(#[from] mandate_authn::oidc::OidcError),
    #[error("this sign-in attempt is unknown or has expired; start again")]
    UnknownAttempt,
    #[error("this sign-in attempt was not started by this browser; start again")]
    OtherBrowser,
    #[error("too many sign-in attempts are in progress; try again in a few minutes")]
    Busy,
    #[error("sign-in is unavailable right now; try again shortly")]
    Store,
}

/// One sign-in attempt in progress, kept in the control store under its
/// `state` (so the callback may reach any replica) until [`FLOW_TTL`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Attempt {
    /// SHA-256 of the browser binding cookie (base64url).
    binding: String,
    nonce: String,
    code_verifier: String,
    /// Where to go after sign-in (`/approvals#<fragment>`).
    fragment: String,
}

/// A started sign-in: where to send the browser, and the binding cookie.
pub(crate) struct Started {
    pub(crate) location: String,
    pub(crate) cookie: HeaderValue,
}

/// The OpenID Connect client of the approval page.
pub(crate) struct Oidc {
    rp: RelyingParty,
    secure: bool,
    control: Arc<ControlStore>,
    clock: Clock,
}

impl Oidc {
    /// A client for `cfg`, redirecting back to `public_url`.
    pub(crate) fn new(
        cfg: OidcConfig,
        public_url: &str,
        control: Arc<ControlStore>,
        clock: Clock,
    ) -> Self {
        Self {
            rp: RelyingParty::new(RpConfig {
                issuer: cfg.issuer,
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                redirect_uri: format!("{public_url}/approvals/oidc/callback"),
                scope: "openid".into(),
            }),
            secure: public_url.starts_with("https://"),
            control,
            clock,
        }
    }

    /// The configured issuer.
    pub(crate) fn issuer(&self) -> &str {
        self.rp.issuer()
    }

    /// Starts a sign-in; `fragment` is where to land afterwards.
    pub(crate) async fn start(&self, fragment: &str) -> Result<Started, OidcError> {
        let request = self.rp.authorization().await?;
        let binding =
            mandate_authn::oidc::random_token().ok_or(mandate_authn::oidc::OidcError::Random)?;
        let attempt = Attempt {
            binding: URL_SAFE_NO_PAD.encode(Sha256::digest(binding.as_bytes())),
            nonce: request.nonce,
            code_verifier: request.code_verifier,
            fragment: fragment.to_owned(),
        };
        let value = serde_json::to_string(&attempt).map_err(|_| OidcError::Store)?;
        let until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(FLOW_TTL.as_millis()).unwrap_or(i64::MAX));
        match self
            .control
            .put_ephemeral(
                Kind::PageOidcAttempt,
                &request.state,
                value,
                until,
                MAX_FLOWS,
                OnFull::Refuse,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(OidcError::Busy),
            Err(e) => {
                tracing::error!(error = %e, "approval page: sign-in attempt not stored");
                return Err(OidcError::Store);
            }
        }
        let cookie = HeaderValue::from_str(&format!(
            "{FLOW_COOKIE}={binding}; Path=/approvals/oidc; HttpOnly; SameSite=Lax; Max-Age={}{}",
            FLOW_TTL.as_secs(),
            if self.secure { "; Secure" } else { "" }
        ))
        .map_err(|_| mandate_authn::oidc::OidcError::Random)?;
        Ok(Started {
            location: request.location,
            cookie,
        })
    }

    /// A `Set-Cookie` value removing the binding cookie.
    pub(crate) fn clearing_cookie() -> HeaderValue {
        HeaderValue::from_static(
            "mandate_oidc=; Path=/approvals/oidc; HttpOnly; SameSite=Lax; Max-Age=0",
        )
    }

    /// Completes a sign-in: returns the verified person and the fragment
    /// to land on.
    pub(crate) async fn finish(
        &self,
        binding_cookie: Option<&str>,
        mut cb: Callback,
    ) -> Result<(Principal, String), OidcError> {
        let state = cb.state.take().ok_or(OidcError::UnknownAttempt)?;
        // Used once, whatever happens next.
        let entry = self
            .control
            .take_ephemeral(Kind::PageOidcAttempt, &state)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "approval page: sign-in attempt not readable");
                OidcError::Store
            })?
            .ok_or(OidcError::UnknownAttempt)?;
        let attempt: Attempt =
            serde_json::from_str(&entry.value).map_err(|_| OidcError::UnknownAttempt)?;
        let binding = URL_SAFE_NO_PAD.encode(Sha256::digest(
            binding_cookie.unwrap_or_default().as_bytes(),
        ));
        if binding_cookie.is_none()
            || aws_lc_rs::constant_time::verify_slices_are_equal(
                binding.as_bytes(),
                attempt.binding.as_bytes(),
            )
            .is_err()
        {
            return Err(OidcError::OtherBrowser);
        }
        let code = self.rp.code_of(cb)?;
        let signed_in = self
            .rp
            .complete(&code, &attempt.code_verifier, &attempt.nonce)
            .await?;
        Ok((signed_in.principal, attempt.fragment))
    }
}
