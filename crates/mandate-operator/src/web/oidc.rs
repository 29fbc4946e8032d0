//! Sign-in through the configured OpenID Connect provider: the
//! authorization code flow with PKCE (S256), `state` and `nonce`.
//!
//! Written on `reqwest` and `mandate-authn` rather than the `openidconnect`
//! crate, which brings its own HTTP client version and RustCrypto
//! signature code: here every HTTP request goes through the one reqwest +
//! rustls stack and every signature through jsonwebtoken on aws-lc-rs,
//! with the same key checks (asymmetric algorithms only, RSA ≥ 2048 bits,
//! `kid` lookup, JWKS refresh) as agents' tokens.
//!
//! 1. `start`: discover the provider (`{issuer}/.well-known/openid-configuration`,
//!    whose `issuer` must be the configured one, cached for an hour), make
//!    `state`, `nonce`, a PKCE verifier, and a browser binding kept in a
//!    short-lived cookie; redirect to the authorization endpoint.
//! 2. `finish` (the callback): the `state` names the attempt (used once,
//!    10 minutes at most), which must have been started by this browser;
//!    the code is exchanged (with the PKCE verifier, and the client secret
//!    if configured); the ID token is verified: signature (JWKS from
//!    discovery), `iss`, `aud` = client id (and `azp` when present), `exp`,
//!    `nbf`, `iat`, and `nonce`. A token with `act` (an agent) is refused.

use crate::config::OidcConfig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::HeaderValue;
use mandate_authn::Principal;
use mandate_authn::{Authenticator, AuthnConfig, IssuerConfig, JwksSource};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cookie binding a sign-in attempt to the browser that started it.
/// `SameSite=Lax`, because the provider's redirect back is a cross-site
/// navigation (a `Strict` cookie would not be sent with it).
pub(crate) const FLOW_COOKIE: &str = "mandate_oidc";
/// How long a sign-in attempt may take.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// Most sign-in attempts in progress at once.
const MAX_FLOWS: usize = 10_000;
/// How long discovery (and the key set it names) is trusted before it is
/// fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Timeout of each request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery document or token response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a sign-in through the provider failed. Messages are safe to show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OidcError {
    #[error("the identity provider could not be used: {0}")]
    Provider(String),
    #[error("this sign-in attempt is unknown or has expired; start again")]
    UnknownAttempt,
    #[error("this sign-in attempt was not started by this browser; start again")]
    OtherBrowser,
    #[error("the identity provider did not sign you in: {0}")]
    Refused(String),
    #[error("the identity provider's ID token was refused: {0}")]
    IdToken(String),
    #[error("too many sign-in attempts are in progress; try again in a few minutes")]
    Busy,
    #[error("no randomness available")]
    Random,
}

/// The provider's endpoints and an ID token verifier, from discovery.
struct Provider {
    authorization_endpoint: url::Url,
    token_endpoint: url::Url,
    /// `client_secret_basic` (else `client_secret_post`).
    basic_auth: bool,
    verifier: Authenticator,
    fetched: Instant,
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

/// The provider's redirect back to Mandate.
#[derive(Debug, Deserialize)]
pub(crate) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: when present it must be the configured issuer.
    iss: Option<String>,
}

/// The OpenID Connect client of the approval page.
pub(crate) struct Oidc {
    cfg: OidcConfig,
    redirect_uri: String,
    secure: bool,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
    attempts: DashMap<String, Attempt>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The ID token claims `mandate-authn` does not read.
#[derive(Deserialize)]
struct OidcClaims {
    nonce: Option<String>,
    azp: Option<String>,
    aud: serde_json::Value,
}

impl Oidc {
    /// A client for `cfg`, redirecting back to `public_url`.
    pub(crate) fn new(cfg: OidcConfig, public_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            cfg,
            redirect_uri: format!("{public_url}/approvals/oidc/callback"),
            secure: public_url.starts_with("https://"),
            http,
            provider: tokio::sync::Mutex::new(None),
            attempts: DashMap::new(),
        }
    }

    /// The configured issuer.
    pub(crate) fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// Starts a sign-in; `fragment` is where to land afterwards.
    pub(crate) async fn start(&self, fragment: &str) -> Result<Started, OidcError> {
        let provider = self.provider().await?;
        let token = || super::session::random_token().ok_or(OidcError::Random);
        let (state, nonce, code_verifier, binding) = (token()?, token()?, token()?, token()?);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()));
        if self.attempts.len() >= MAX_FLOWS {
            self.attempts.retain(|_, a| a.started.elapsed() <= FLOW_TTL);
            if self.attempts.len() >= MAX_FLOWS {
                return Err(OidcError::Busy);
            }
        }
        let mut location = provider.authorization_endpoint.clone();
        location
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", "openid")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        self.attempts.insert(
            state,
            Attempt {
                binding: Sha256::digest(binding.as_bytes()).into(),
                nonce,
                code_verifier,
                fragment: fragment.to_owned(),
                started: Instant::now(),
            },
        );
        let cookie = HeaderValue::from_str(&format!(
            "{FLOW_COOKIE}={binding}; Path=/approvals/oidc; HttpOnly; SameSite=Lax; Max-Age={}{}",
            FLOW_TTL.as_secs(),
            if self.secure { "; Secure" } else { "" }
        ))
        .map_err(|_| OidcError::Random)?;
        Ok(Started {
            location: location.into(),
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
        cb: Callback,
    ) -> Result<(Principal, String), OidcError> {
        let state = cb.state.ok_or(OidcError::UnknownAttempt)?;
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
        if let Some(iss) = &cb.iss
            && *iss != self.cfg.issuer
        {
            return Err(OidcError::Refused(
                "the response names another issuer".into(),
            ));
        }
        if let Some(error) = cb.error {
            return Err(OidcError::Refused(bounded(&match cb.error_description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            })));
        }
        let code = cb
            .code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OidcError::Refused("no authorization code".into()))?;
        let provider = self.provider().await?;
        let id_token = self
            .exchange(&provider, &code, &attempt.code_verifier)
            .await?;
        let principal = self.verify(&provider, &id_token, &attempt.nonce).await?;
        Ok((principal, attempt.fragment))
    }

    /// The authorization code → ID token exchange.
    async fn exchange(
        &self,
        provider: &Provider,
        code: &str,
        code_verifier: &str,
    ) -> Result<String, OidcError> {
        let mut request = self
            .http
            .post(provider.token_endpoint.clone())
            .header(http::header::ACCEPT, "application/json");
        // (The serializer is not `Send`: it must not live across an await.)
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("code_verifier", code_verifier);
            match &self.cfg.client_secret {
                Some(secret) if provider.basic_auth => {
                    // RFC 6749 §2.3.1: both parts form-encoded before base64.
                    let enc = |s: &str| {
                        url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                    };
                    request =
                        request.basic_auth(enc(&self.cfg.client_id), Some(enc(secret.expose())));
                }
                Some(secret) => {
                    form.append_pair("client_id", &self.cfg.client_id)
                        .append_pair("client_secret", secret.expose());
                }
                None => {
                    form.append_pair("client_id", &self.cfg.client_id);
                }
            }
            form.finish()
        };
        let response = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("token endpoint: {}", plain(&e))))?;
        let status = response.status();
        let body: TokenResponse = serde_json::from_slice(&read_bounded(response).await?)
            .map_err(|_| OidcError::Provider("the token response is not JSON".into()))?;
        if let Some(error) = body.error {
            return Err(OidcError::Refused(bounded(&match body.error_description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            })));
        }
        if !status.is_success() {
            return Err(OidcError::Provider(format!(
                "token endpoint answered HTTP {status}"
            )));
        }
        body.id_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OidcError::Provider("the token response has no id_token".into()))
    }

    /// Verifies the ID token and its OpenID Connect claims.
    async fn verify(
        &self,
        provider: &Provider,
        id_token: &str,
        nonce: &str,
    ) -> Result<Principal, OidcError> {
        let principal = provider
            .verifier
            .verify_uncached(id_token)
            .await
            .map_err(|e| OidcError::IdToken(e.description()))?;
        // The signature is verified: its payload can be read.
        let claims: OidcClaims = id_token
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| OidcError::IdToken("unreadable claims".into()))?;
        let nonce_ok = claims.nonce.as_deref().is_some_and(|n| {
            aws_lc_rs::constant_time::verify_slices_are_equal(n.as_bytes(), nonce.as_bytes())
                .is_ok()
        });
        if !nonce_ok {
            return Err(OidcError::IdToken("its nonce is not this sign-in's".into()));
        }
        let several_audiences = claims.aud.as_array().is_some_and(|a| a.len() > 1);
        match &claims.azp {
            Some(azp) if *azp != self.cfg.client_id => {
                return Err(OidcError::IdToken(
                    "it was issued to another client (azp)".into(),
                ));
            }
            None if several_audiences => {
                return Err(OidcError::IdToken(
                    "it has several audiences and no azp".into(),
                ));
            }
            _ => {}
        }
        if !principal.act().is_empty() {
            return Err(OidcError::IdToken(
                "it names an actor (act): agents never sign in".into(),
            ));
        }
        Ok(principal)
    }

    /// The discovered provider (cached for [`DISCOVERY_TTL`]; a failure is
    /// not cached).
    async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        let mut cached = self.provider.lock().await;
        if let Some(p) = cached.as_ref()
            && p.fetched.elapsed() < DISCOVERY_TTL
        {
            return Ok(p.clone());
        }
        let p = Arc::new(self.discover().await?);
        *cached = Some(p.clone());
        Ok(p)
    }

    async fn discover(&self) -> Result<Provider, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        );
        let response = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("discovery: {}", plain(&e))))?;
        if !response.status().is_success() {
            return Err(OidcError::Provider(format!(
                "discovery answered HTTP {}",
                response.status()
            )));
        }
        let doc: Discovery = serde_json::from_slice(&read_bounded(response).await?)
            .map_err(|e| OidcError::Provider(format!("discovery document: {e}")))?;
        if doc.issuer != self.cfg.issuer {
            return Err(OidcError::Provider(format!(
                "discovery names issuer {:?}, not the configured {:?}",
                doc.issuer, self.cfg.issuer
            )));
        }
        if let Some(methods) = &doc.code_challenge_methods_supported
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(OidcError::Provider(
                "the provider does not support PKCE with S256".into(),
            ));
        }
        let basic_auth = match &doc.token_endpoint_auth_methods_supported {
            // The default (OpenID Connect Discovery §3).
            None => true,
            Some(m) if m.iter().any(|m| m == "client_secret_basic") => true,
            Some(m) if m.iter().any(|m| m == "client_secret_post") => false,
            Some(_) if self.cfg.client_secret.is_some() => {
                return Err(OidcError::Provider(
                    "the token endpoint takes neither client_secret_basic nor client_secret_post"
                        .into(),
                ));
            }
            Some(_) => true,
        };
        let endpoint = |name: &str, value: &str| {
            url::Url::parse(value)
                .ok()
                .filter(url_allowed)
                .ok_or_else(|| {
                    OidcError::Provider(format!(
                        "{name} {value:?} must be an https URL (or http to a loopback host)"
                    ))
                })
        };
        let authorization_endpoint =
            endpoint("authorization_endpoint", &doc.authorization_endpoint)?;
        let token_endpoint = endpoint("token_endpoint", &doc.token_endpoint)?;
        endpoint("jwks_uri", &doc.jwks_uri)?;
        let verifier = Authenticator::new(AuthnConfig {
            issuers: vec![IssuerConfig {
                issuer: self.cfg.issuer.clone(),
                jwks: JwksSource::Url(doc.jwks_uri.clone()),
            }],
            audience: self.cfg.client_id.clone(),
            leeway_secs: mandate_authn::DEFAULT_LEEWAY_SECS,
            algorithms: AuthnConfig::default_algorithms(),
            require_actor: false,
        })
        .await
        .map_err(|e| OidcError::Provider(format!("key set: {}", e.description())))?;
        tracing::info!(issuer = %self.cfg.issuer, "OpenID Connect provider discovered");
        Ok(Provider {
            authorization_endpoint,
            token_endpoint,
            basic_auth,
            verifier,
            fetched: Instant::now(),
        })
    }
}

/// `https`, or `http` to a loopback host.
pub(crate) fn url_allowed(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, OidcError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OidcError::Provider(plain(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(OidcError::Provider("the response is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error without its URL (which may carry a code or state).
fn plain(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed".into()
    }
}

/// Provider-supplied text, bounded for display.
fn bounded(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}
