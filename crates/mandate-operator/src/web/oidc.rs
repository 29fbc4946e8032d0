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
use dashmap::DashMap;
use http::HeaderValue;
use mandate_authn::Principal;
use mandate_authn::oidc::{RelyingParty, RpConfig};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

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
}

/// One sign-in attempt in progress, keyed by its `state`.
struct Attempt {
    /// SHA-256 of the browser binding cookie.
    binding: [u8; 32],
    nonce: String,
    code_verifier: String,
    /// Where to go after sign-in (`/approvals#<fragment>`).
    fragment: String,
    started: Instant,
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
    attempts: DashMap<String, Attempt>,
}

impl Oidc {
    /// A client for `cfg`, redirecting back to `public_url`.
    pub(crate) fn new(cfg: OidcConfig, public_url: &str) -> Self {
        Self {
            rp: RelyingParty::new(RpConfig {
                issuer: cfg.issuer,
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                redirect_uri: format!("{public_url}/approvals/oidc/callback"),
                scope: "openid".into(),
            }),
            secure: public_url.starts_with("https://"),
            attempts: DashMap::new(),
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
        if self.attempts.len() >= MAX_FLOWS {
            self.attempts.retain(|_, a| a.started.elapsed() <= FLOW_TTL);
            if self.attempts.len() >= MAX_FLOWS {
                return Err(OidcError::Busy);
            }
        }
        self.attempts.insert(
            request.state,
            Attempt {
                binding: Sha256::digest(binding.as_bytes()).into(),
                nonce: request.nonce,
                code_verifier: request.code_verifier,
                fragment: fragment.to_owned(),
                started: Instant::now(),
            },
        );
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
        let (_, attempt) = self
            .attempts
            .remove(&state)
            .ok_or(OidcError::UnknownAttempt)?;
        if attempt.started.elapsed() > FLOW_TTL {
            return Err(OidcError::UnknownAttempt);
        }
        let binding: [u8; 32] =
            Sha256::digest(binding_cookie.unwrap_or_default().as_bytes()).into();
        if binding_cookie.is_none()
            || aws_lc_rs::constant_time::verify_slices_are_equal(&binding, &attempt.binding)
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
