//! The OpenID Connect relying party shared by the operator console's
//! sign-in and the broker's MCP sign-in: discovery, the authorization
//! request (code flow with PKCE S256, `state` and `nonce`), the code
//! exchange, and ID token validation.
//!
//! Written on `reqwest` and this crate's [`Authenticator`] rather than the
//! `openidconnect` crate, which brings its own HTTP client version and
//! RustCrypto signature code: every HTTP request goes through the one
//! reqwest + rustls stack and every signature through jsonwebtoken on
//! aws-lc-rs, with the same key checks (asymmetric algorithms only, RSA ≥
//! 2048 bits, `kid` lookup, JWKS refresh) as agents' tokens.
//!
//! What an attempt is bound to (a browser cookie, where to land after) is
//! the caller's business: [`RelyingParty::authorization`] hands back the
//! `state`, `nonce` and PKCE verifier to keep, and
//! [`RelyingParty::complete`] takes them back with the code.
//!
//! - Discovery: `{issuer}/.well-known/openid-configuration`, whose
//!   `issuer` must be the configured one; cached for an hour, a failure is
//!   not cached. Endpoints must be `https` (or `http` to a loopback host).
//! - The ID token: signature (JWKS from discovery), `iss`, `aud` = client
//!   id (and `azp` when present, required with several audiences), `exp`,
//!   `nbf`, `iat`, and `nonce`. A token naming an actor (`act`) is refused.

use crate::{Authenticator, AuthnConfig, IssuerConfig, JwksSource, Principal};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The value of cookie `name` among a request's `Cookie` header values,
/// if it is sent exactly once: two cookies of one name (one planted for a
/// wider path, say) are trusted neither. For the cookie that binds a
/// sign-in attempt to its browser, and the session cookies beside it.
pub fn cookie<'a>(header_values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    let mut found = None;
    for text in header_values {
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(v.to_owned());
            }
        }
    }
    found
}

/// How long discovery (and the key set it names) is trusted before it is
/// fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Timeout of each request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery document or token response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a sign-in through the provider failed. Messages are safe to show
/// (they never hold a code, a token or the client secret).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// Discovery, the key set or the token endpoint could not be used.
    #[error("the identity provider could not be used: {0}")]
    Provider(String),
    /// The provider answered with an error (or no code).
    #[error("the identity provider did not sign you in: {0}")]
    Refused(String),
    /// The ID token failed a check.
    #[error("the identity provider's ID token was refused: {0}")]
    IdToken(String),
    /// No randomness for `state`, `nonce` or the PKCE verifier.
    #[error("no randomness available")]
    Random,
}

/// A client secret that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself (for the token request only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// Who the relying party is at the provider.
#[derive(Debug, Clone)]
pub struct RpConfig {
    /// The provider's exact issuer identifier.
    pub issuer: String,
    /// Our client id at the provider (the ID token's `aud`).
    pub client_id: String,
    /// The client secret, if the client is confidential (otherwise a
    /// public client protected by PKCE).
    pub client_secret: Option<ClientSecret>,
    /// Where the provider sends the browser back.
    pub redirect_uri: String,
    /// The scopes asked for (`openid` at least).
    pub scope: String,
}

/// A started authorization request: where to send the browser, and what
/// to keep (by `state`) until the provider redirects back.
#[derive(Debug)]
pub struct AuthorizationRequest {
    /// The provider's authorization endpoint with the request's parameters.
    pub location: String,
    /// The request's `state` (the caller's key for the attempt).
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier for the code exchange.
    pub code_verifier: String,
}

/// The provider's redirect back.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` of the request.
    pub state: Option<String>,
    /// An error code, instead of a code.
    pub error: Option<String>,
    /// Its description.
    pub error_description: Option<String>,
    /// RFC 9207: when present it must be the configured issuer.
    pub iss: Option<String>,
}

/// A verified sign-in: the person and every claim of their ID token.
#[derive(Debug)]
pub struct SignedIn {
    /// The person (`iss`, `sub`).
    pub principal: Principal,
    /// The ID token's claims (for `groups` and the like).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The provider's endpoints and an ID token verifier, from discovery.
struct Provider {
    authorization_endpoint: reqwest::Url,
    token_endpoint: reqwest::Url,
    /// `client_secret_basic` (else `client_secret_post`).
    basic_auth: bool,
    verifier: Authenticator,
    fetched: Instant,
}

/// An OpenID Connect client of one provider.
pub struct RelyingParty {
    cfg: RpConfig,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.cfg.issuer)
            .field("client_id", &self.cfg.client_id)
            .finish_non_exhaustive()
    }
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

/// 32 random bytes, base64url: a `state`, `nonce`, verifier or cookie.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `url` may be used: `https`, or `http` to a loopback host.
pub fn url_allowed(url: &reqwest::Url) -> bool {
    crate::jwks::url_allowed(url)
}

impl RelyingParty {
    /// A client for `cfg`.
    pub fn new(cfg: RpConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            cfg,
            http,
            provider: tokio::sync::Mutex::new(None),
        }
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// Starts an authorization request (discovering the provider first).
    pub async fn authorization(&self) -> Result<AuthorizationRequest, OidcError> {
        let provider = self.provider().await?;
        let token = || random_token().ok_or(OidcError::Random);
        let (state, nonce, code_verifier) = (token()?, token()?, token()?);
        let mut location = provider.authorization_endpoint.clone();
        location
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", &self.cfg.redirect_uri)
            .append_pair("scope", &self.cfg.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&code_verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(AuthorizationRequest {
            location: location.into(),
            state,
            nonce,
            code_verifier,
        })
    }

    /// The code of a redirect back, or why there is none (an error from
    /// the provider, another issuer named by RFC 9207 `iss`).
    pub fn code_of(&self, cb: Callback) -> Result<String, OidcError> {
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
        cb.code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| OidcError::Refused("no authorization code".into()))
    }

    /// Exchanges `code` (with the request's PKCE verifier) and verifies the
    /// ID token (with the request's nonce).
    pub async fn complete(
        &self,
        code: &str,
        code_verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, OidcError> {
        let provider = self.provider().await?;
        let id_token = self.exchange(&provider, code, code_verifier).await?;
        self.verify(&provider, &id_token, nonce).await
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
            .header(reqwest::header::ACCEPT, "application/json");
        // (The serializer is not `Send`: it must not live across an await.)
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.cfg.redirect_uri)
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
                reqwest::header::CONTENT_TYPE,
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
    ) -> Result<SignedIn, OidcError> {
        let (principal, claims) = provider
            .verifier
            .verify_with_claims(id_token)
            .await
            .map_err(|e| OidcError::IdToken(e.description()))?;
        let nonce_ok = claims
            .get("nonce")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|n| {
                aws_lc_rs::constant_time::verify_slices_are_equal(n.as_bytes(), nonce.as_bytes())
                    .is_ok()
            });
        if !nonce_ok {
            return Err(OidcError::IdToken("its nonce is not this sign-in's".into()));
        }
        let several_audiences = claims
            .get("aud")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|a| a.len() > 1);
        match claims.get("azp") {
            Some(azp) if azp.as_str() != Some(self.cfg.client_id.as_str()) => {
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
        Ok(SignedIn { principal, claims })
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
            .header(reqwest::header::ACCEPT, "application/json")
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
            reqwest::Url::parse(value)
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
            leeway_secs: crate::DEFAULT_LEEWAY_SECS,
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

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, OidcError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| OidcError::Provider(plain(&e)))?
    {
        if body.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_counts_only_when_sent_once() {
        assert_eq!(cookie(["a=1; flow=x", "b=2"], "flow").as_deref(), Some("x"));
        assert_eq!(cookie(["flow=x", "flow=y"], "flow"), None, "planted twice");
        assert_eq!(cookie(["flow=x; flow=x"], "flow"), None);
        assert_eq!(cookie(["flows=x; xflow=y"], "flow"), None);
        assert_eq!(cookie(std::iter::empty::<&str>(), "flow"), None);
    }

    /// base64url(SHA-256(verifier)) without padding (RFC 7636 §4.2), the
    /// expected value computed independently with Python's hashlib.
    #[test]
    fn pkce_challenge_is_s256() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r7wW1gFWFOEjXk"),
            "bwWFMyPfdG9qreDhH2lmftFx_dFeLDalzcT1gb_j68g"
        );
    }

    #[test]
    fn provider_errors_are_refusals_and_another_issuer_is_refused() {
        let rp = RelyingParty::new(RpConfig {
            issuer: "https://idp.test".into(),
            client_id: "c".into(),
            client_secret: Some(ClientSecret::new("s3cret")),
            redirect_uri: "https://rp.test/cb".into(),
            scope: "openid".into(),
        });
        let cb = Callback {
            error: Some("access_denied".into()),
            ..Callback::default()
        };
        assert!(matches!(rp.code_of(cb), Err(OidcError::Refused(_))));
        let cb = Callback {
            code: Some("abc".into()),
            iss: Some("https://evil.test".into()),
            ..Callback::default()
        };
        assert!(matches!(rp.code_of(cb), Err(OidcError::Refused(_))));
        let cb = Callback {
            code: Some("abc".into()),
            iss: Some("https://idp.test".into()),
            ..Callback::default()
        };
        assert_eq!(rp.code_of(cb).ok().as_deref(), Some("abc"));
        assert!(!format!("{rp:?}").contains("s3cret"));
    }
}
