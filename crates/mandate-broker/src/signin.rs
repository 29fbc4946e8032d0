//! MCP sign-in: the broker as the OAuth 2.1 authorization server of the
//! MCP authorization spec, so a standard MCP client (MCP Inspector, the
//! Python SDK's `OAuthClientProvider`, …) can sign its user in.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/oauth2/register` | RFC 7591 dynamic registration (public clients) |
//! | GET | `/oauth2/authorize` | authorization code request (PKCE S256, RFC 8707 `resource`) |
//! | GET | `/oauth2/signin/callback` | the OpenID Connect provider's redirect back |
//! | POST | `/oauth2/consent` | the user's decision on the consent page |
//! | POST | `/oauth2/token` | `grant_type=authorization_code` (beside token exchange) |
//!
//! The flow: the client registers; `/authorize` checks the request and
//! sends the user to the provider ([`mandate_authn::oidc::RelyingParty`],
//! shared with the operator console); back here, the scope is narrowed
//! (request ∩ `sign_in.scopes` ∩ the user's entitlements ∩ an approved
//! ceiling) and a consent page names the client and the scopes; approving
//! issues a single-use code valid 60 s, bound to the client, the redirect
//! URI, the PKCE challenge, the resource, the user and the scope; the token
//! endpoint checks all of that and returns a composite token: `sub` = the
//! user, `act` = `mcp-client-<client id>`, no `build`, no task.
//!
//! Everything held here (clients, sign-ins in progress, codes) lives in
//! this process and is bounded (`max_clients`, `max_pending`): replicas
//! need sticky routing for `/oauth2/*` (docs/BROKER.md).

use crate::config::{SIGNED_IN_ACTOR_PREFIX, SignInConfig};
use crate::error::{ErrorCode, Refusal};
use crate::exchange::{Exchange, act_claim};
use crate::scope::{Bounds, reduce_scope};
use crate::{Broker, token_type};
use axum::body::Bytes;
use axum::extract::{Query, RawQuery, State};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mandate_authn::oidc::{Callback, RelyingParty, RpConfig, pkce_challenge, random_token};
use mandate_control::ephemeral::{Kind, OnFull};
use mandate_control::{ControlError, ControlStore};
use mandate_core::html::escape;
use mandate_core::{AuditRecord, CallerData, DecisionRecord, Effect, Scope, Subject};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// How long a sign-in may take, from `/authorize` to the decision.
pub(crate) const PENDING_TTL_MS: i64 = 600_000;
/// How long an authorization code is valid.
pub(crate) const CODE_TTL_MS: i64 = 60_000;
/// The cookie binding a sign-in to the browser that started it
/// (`SameSite=Lax`: the provider's redirect back is cross-site).
const BINDING_COOKIE: &str = "mandate_signin";
/// Most redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 5;
/// Longest client name kept (shown on the consent page).
const MAX_CLIENT_NAME: usize = 100;
/// Longest `state` accepted from a client.
const MAX_STATE: usize = 512;
/// Largest registration request.
pub(crate) const MAX_REGISTRATION_BYTES: usize = 16 * 1024;

/// A dynamically registered public client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RegisteredClient {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) redirect_uris: Vec<String>,
}

impl RegisteredClient {
    /// The actor its tokens name.
    pub(crate) fn actor(&self) -> String {
        format!("{SIGNED_IN_ACTOR_PREFIX}{}", self.id)
    }
}

/// What a client asked for at `/authorize`, once checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthRequest {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) state: Option<String>,
    /// The PKCE S256 challenge.
    pub(crate) challenge: String,
    pub(crate) resource: String,
    /// The scope asked for (none: everything allowed).
    pub(crate) scope: Option<Scope>,
}

/// The signed-in user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) iss: String,
    pub(crate) sub: String,
}

/// A sign-in in progress.
#[derive(Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) request: AuthRequest,
    /// SHA-256 of the browser binding cookie (base64url).
    pub(crate) binding: String,
    pub(crate) started_ms: i64,
    pub(crate) stage: Stage,
}

/// Where a sign-in in progress is.
#[derive(Serialize, Deserialize)]
pub(crate) enum Stage {
    /// At the provider (keyed by the provider request's `state`).
    AtProvider {
        nonce: String,
        code_verifier: String,
    },
    /// On the consent page (keyed by the page's id).
    Consent {
        user: User,
        scope: Scope,
        csrf: String,
    },
}

/// An issued, unredeemed authorization code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub(crate) request: AuthRequest,
    pub(crate) user: User,
    pub(crate) scope: Scope,
    pub(crate) issued_ms: i64,
}

/// Why a code cannot be redeemed (all `invalid_grant` but the resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeProblem {
    /// Never issued, or already used.
    Unknown,
    /// Older than [`CODE_TTL_MS`].
    Expired,
    /// Issued to another client.
    OtherClient,
    /// Issued for another redirect URI.
    OtherRedirect,
    /// The PKCE verifier does not match the challenge.
    Verifier,
    /// Issued for another resource.
    OtherResource,
    /// The control store could not answer (the code is not spent).
    Unavailable,
}

impl CodeProblem {
    fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "unknown or already used code",
            Self::Expired => "expired code",
            Self::OtherClient => "code issued to another client",
            Self::OtherRedirect => "code issued for another redirect_uri",
            Self::Verifier => "PKCE verifier does not match",
            Self::OtherResource => "code issued for another resource",
            Self::Unavailable => "the sign-in store is unavailable",
        }
    }
}

/// A bound was reached (the request is refused, nothing is evicted that
/// is still valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// The SHA-256 of a secret, base64url (codes are kept by hash only).
fn digest(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

/// How long a registered client is kept (a client that is forgotten
/// registers again, as RFC 7591 clients do when told `invalid_client`).
pub(crate) const CLIENT_TTL_MS: i64 = 90 * 24 * 3600 * 1000;

/// Everything sign-in holds, in the control store (so a sign-in started
/// on one replica finishes on any, and a restart loses none), each kind
/// bounded. A store that cannot answer refuses (`Full`, or no client / no
/// sign-in found), never lets a step through.
pub(crate) struct SignInState {
    control: Arc<ControlStore>,
    max_clients: usize,
    max_pending: usize,
}

fn json<T: Serialize>(v: &T) -> Result<String, Full> {
    serde_json::to_string(v).map_err(|_| Full)
}

impl SignInState {
    pub(crate) fn new(control: Arc<ControlStore>, max_clients: usize, max_pending: usize) -> Self {
        Self {
            control,
            max_clients,
            max_pending,
        }
    }

    async fn put(
        &self,
        kind: Kind,
        key: &str,
        value: String,
        until: i64,
        max: usize,
    ) -> Result<(), Full> {
        match self
            .control
            .put_ephemeral(kind, key, value, until, max, OnFull::Refuse)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(
                    kind = kind.as_str(),
                    max,
                    "MCP sign-in: a bound is reached; refused"
                );
                Err(Full)
            }
            Err(e) => {
                tracing::error!(error = %e, "MCP sign-in: the control store is unavailable");
                Err(Full)
            }
        }
    }

    async fn take_value<T: for<'de> Deserialize<'de>>(
        &self,
        kind: Kind,
        key: &str,
    ) -> Result<Option<T>, ControlError> {
        Ok(self
            .control
            .take_ephemeral(kind, key)
            .await?
            .and_then(|e| serde_json::from_str(&e.value).ok()))
    }

    /// Registers a client, unless `max_clients` are registered.
    pub(crate) async fn register(&self, client: RegisteredClient, now_ms: i64) -> Result<(), Full> {
        let value = json(&client)?;
        self.put(
            Kind::McpClient,
            &client.id,
            value,
            now_ms.saturating_add(CLIENT_TTL_MS),
            self.max_clients,
        )
        .await
    }

    /// A registered client.
    pub(crate) async fn client(&self, id: &str) -> Option<RegisteredClient> {
        match self.control.ephemeral(Kind::McpClient, id).await {
            Ok(e) => e.and_then(|e| serde_json::from_str(&e.value).ok()),
            Err(e) => {
                tracing::error!(error = %e, "MCP sign-in: clients unreadable");
                None
            }
        }
    }

    /// Holds a sign-in in progress under `key`, unless `max_pending` are.
    pub(crate) async fn hold(&self, key: String, p: Pending) -> Result<(), Full> {
        let until = p.started_ms.saturating_add(PENDING_TTL_MS + 1);
        let value = json(&p)?;
        self.put(Kind::McpSignIn, &key, value, until, self.max_pending)
            .await
    }

    /// Takes (removes) a sign-in in progress: used once, and `None` once
    /// expired.
    pub(crate) async fn take(&self, key: &str, now_ms: i64) -> Option<Pending> {
        let p: Pending = match self.take_value(Kind::McpSignIn, key).await {
            Ok(p) => p?,
            Err(e) => {
                tracing::error!(error = %e, "MCP sign-in: sign-ins unreadable");
                return None;
            }
        };
        (now_ms.saturating_sub(p.started_ms) <= PENDING_TTL_MS).then_some(p)
    }

    /// Issues a code for `grant`, unless `max_pending` codes are unredeemed.
    pub(crate) async fn issue_code(&self, grant: Grant) -> Result<String, Full> {
        let code = random_token().ok_or(Full)?;
        let until = grant.issued_ms.saturating_add(CODE_TTL_MS + 1);
        let value = json(&grant)?;
        self.put(
            Kind::McpCode,
            &digest(&code),
            value,
            until,
            self.max_pending,
        )
        .await?;
        Ok(code)
    }

    /// Redeems `code`: it is gone after this call whatever the outcome
    /// (a second attempt is `Unknown`), and it must be within its 60 s,
    /// for this client and redirect URI, with the verifier of its
    /// challenge and (when named) for its resource.
    pub(crate) async fn redeem(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
        resource: Option<&str>,
        now_ms: i64,
    ) -> Result<Grant, CodeProblem> {
        let grant: Grant = self
            .take_value(Kind::McpCode, &digest(code))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "MCP sign-in: codes unreadable");
                CodeProblem::Unavailable
            })?
            .ok_or(CodeProblem::Unknown)?;
        if now_ms.saturating_sub(grant.issued_ms) > CODE_TTL_MS {
            return Err(CodeProblem::Expired);
        }
        if grant.request.client_id != client_id {
            return Err(CodeProblem::OtherClient);
        }
        if grant.request.redirect_uri != redirect_uri {
            return Err(CodeProblem::OtherRedirect);
        }
        if !verifier_well_formed(verifier)
            || aws_lc_rs::constant_time::verify_slices_are_equal(
                pkce_challenge(verifier).as_bytes(),
                grant.request.challenge.as_bytes(),
            )
            .is_err()
        {
            return Err(CodeProblem::Verifier);
        }
        if resource.is_some_and(|r| r != grant.request.resource) {
            return Err(CodeProblem::OtherResource);
        }
        Ok(grant)
    }
}

/// RFC 7636 §4.1: 43–128 unreserved characters.
fn verifier_well_formed(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge: 43 base64url characters (a SHA-256).
fn challenge_well_formed(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The broker's sign-in: its settings, its relying party at the
/// provider, and its state.
pub(crate) struct SignIn {
    cfg: SignInConfig,
    rp: RelyingParty,
    pub(crate) state: SignInState,
    /// The broker's origin (for `Origin` checks and cookies).
    origin: String,
    secure: bool,
}

impl SignIn {
    pub(crate) fn new(cfg: &SignInConfig, broker_issuer: &str, control: Arc<ControlStore>) -> Self {
        let issuer = broker_issuer.trim_end_matches('/');
        let origin = reqwest::Url::parse(issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Self {
            rp: RelyingParty::new(RpConfig {
                issuer: cfg.provider_issuer.clone(),
                client_id: cfg.client_id.clone(),
                client_secret: cfg.client_secret.clone(),
                redirect_uri: format!("{issuer}/oauth2/signin/callback"),
                scope: "openid".into(),
            }),
            state: SignInState::new(control, cfg.max_clients, cfg.max_pending),
            secure: issuer.starts_with("https://"),
            origin,
            cfg: cfg.clone(),
        }
    }

    /// The scopes a signed-in client may be granted at most.
    pub(crate) fn scope(&self) -> &Scope {
        &self.cfg.scope
    }
}

/// The sign-in routes (mounted only when sign-in is configured).
pub(crate) fn routes() -> axum::Router<Arc<Broker>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/oauth2/register", post(register))
        .route("/oauth2/authorize", get(authorize))
        .route("/oauth2/signin/callback", get(callback))
        .route("/oauth2/consent", post(consent))
}

/// What a sign-in step learnt, for its audit record.
#[derive(Debug, Default)]
struct Trail {
    step: &'static str,
    client: Option<String>,
    user: Option<User>,
    scope: Option<String>,
    resource: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
    exp: Option<u64>,
}

impl Broker {
    fn sign_in(&self) -> Option<&SignIn> {
        self.signin.as_ref()
    }

    /// Appends a sign-in step's audit record (`error` is `None` when it
    /// issued a token); `false` when it could not be written.
    async fn record_sign_in(&self, trail: &Trail, error: Option<(&str, &str)>) -> bool {
        let (effect, reason) = match error {
            None => (
                Effect::Allow,
                "token issued to a signed-in MCP client".to_owned(),
            ),
            Some((code, why)) => (Effect::Deny, format!("{code}: {why}")),
        };
        let decision = DecisionRecord::control(effect, "broker", reason);
        let subject = Subject {
            iss: trail
                .user
                .as_ref()
                .map(|u| u.iss.clone())
                .unwrap_or_default(),
            sub: trail
                .user
                .as_ref()
                .map(|u| u.sub.clone())
                .unwrap_or_default(),
            act: trail
                .client
                .iter()
                .map(|c| format!("{SIGNED_IN_ACTOR_PREFIX}{c}"))
                .collect(),
            scope: trail.scope.clone().unwrap_or_default(),
            task_id: None,
            build: None,
            session: trail
                .sid
                .as_ref()
                .map(|s| format!("sid:{s}"))
                .unwrap_or_else(|| "broker".into()),
        };
        let detail = json!({
            "step": trail.step,
            "client_id": trail.client,
            "resource": trail.resource,
            "jti": trail.jti,
            "exp": trail.exp,
            "error": error.map(|(code, _)| code),
        });
        let record = AuditRecord::control(
            self.clock.now_ms(),
            decision,
            subject,
            "broker/sign_in",
            &detail,
        );
        match self.audit.append(record).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "could not record an MCP sign-in step");
                false
            }
        }
    }

    /// `grant_type=authorization_code`: redeems a sign-in code for a
    /// composite token, and records the outcome.
    pub(crate) async fn redeem_code(&self, req: &Exchange) -> Result<Value, Refusal> {
        let mut trail = Trail {
            step: "token",
            ..Trail::default()
        };
        let result = self.redeem_inner(req, &mut trail).await;
        match &result {
            Ok(_) => {
                // The token is only handed out once its record is durable.
                if !self.record_sign_in(&trail, None).await {
                    return Err(Refusal::audit_unavailable());
                }
                tracing::info!(client = ?trail.client, "MCP sign-in: token issued");
            }
            Err(r) => {
                tracing::info!(error = %r, "MCP sign-in: token refused");
                self.record_sign_in(&trail, Some((r.code.as_str(), &r.reason)))
                    .await;
            }
        }
        result
    }

    async fn redeem_inner(&self, req: &Exchange, trail: &mut Trail) -> Result<Value, Refusal> {
        let Some(signin) = self.sign_in() else {
            return Err(Refusal::new(
                ErrorCode::UnsupportedGrantType,
                "this grant type is not enabled",
                "authorization_code without [broker.sign_in]",
            ));
        };
        // 1. The client: a registered public client, named.
        let client_id = req
            .get("client_id")
            .ok_or_else(|| Refusal::client("no client_id"))?;
        let client = signin
            .state
            .client(client_id)
            .await
            .ok_or_else(|| Refusal::client("unknown sign-in client"))?;
        trail.client = Some(client.id.clone());
        if req.get("client_assertion").is_some() || req.get("client_secret").is_some() {
            return Err(Refusal::client("a public sign-in client sent credentials"));
        }
        // 2. The request's shape.
        let code = req
            .get("code")
            .ok_or_else(|| Refusal::request("code is missing"))?;
        let redirect_uri = req
            .get("redirect_uri")
            .ok_or_else(|| Refusal::request("redirect_uri is missing"))?;
        let verifier = req
            .get("code_verifier")
            .ok_or_else(|| Refusal::request("code_verifier is missing"))?;
        let resource = req.get("resource");
        trail.resource = resource.map(|r| r.chars().take(200).collect());
        // 3. The code: used once, whatever happens next.
        let now_ms = self.clock.now_ms();
        let grant = signin
            .state
            .redeem(code, &client.id, redirect_uri, verifier, resource, now_ms)
            .await
            .map_err(|p| match p {
                CodeProblem::Unavailable => Refusal::new(
                    ErrorCode::TemporarilyUnavailable,
                    "sign-in is unavailable right now; try again shortly",
                    p.describe(),
                ),
                CodeProblem::OtherResource => Refusal::new(
                    ErrorCode::InvalidTarget,
                    "the resource is not the one the code was issued for",
                    p.describe(),
                ),
                _ => Refusal::new(
                    ErrorCode::InvalidGrant,
                    "the authorization code is invalid, expired, already used, or does not match this request",
                    p.describe(),
                ),
            })?;
        trail.user = Some(grant.user.clone());
        trail.resource = Some(grant.request.resource.clone());
        trail.scope = Some(grant.scope.to_oauth_string());
        // 4. The token: one session per token, no task, no build.
        let now = self.now_secs();
        let exp = now.saturating_add(signin.cfg.token_ttl.as_secs());
        let sid = uuid::Uuid::new_v4().to_string();
        let jti = uuid::Uuid::new_v4().to_string();
        trail.sid = Some(sid.clone());
        trail.jti = Some(jti.clone());
        trail.exp = Some(exp);
        let chain = vec![client.actor()];
        let issued = CallerData {
            iss: self.cfg.issuer.clone(),
            sub: grant.user.sub.clone(),
            act: chain.clone(),
            scope: grant.scope.clone(),
            task_id: None,
            build: None,
            sid: Some(sid.clone()),
            jti: Some(jti.clone()),
        };
        if let Some(r) = self.control.check(&issued.caller()) {
            return Err(Refusal::new(
                ErrorCode::InvalidGrant,
                "delegation is revoked for this user or client",
                format!("revoked: {} {}", r.kind, r.value),
            ));
        }
        if let Some(age) = self.control.stale() {
            return Err(Refusal::server(format!(
                "the shared control store was last read {} s ago",
                age.as_secs()
            )));
        }
        let claims = json!({
            "iss": self.cfg.issuer,
            "aud": grant.request.resource,
            "sub": issued.sub,
            "act": act_claim(&chain),
            "scope": grant.scope.to_oauth_string(),
            "sid": sid,
            "jti": jti,
            "iat": now,
            "exp": exp,
            "client_id": client.id,
        });
        let access_token = self.keys().signing().sign(&claims).map_err(|e| {
            Refusal::new(
                ErrorCode::ServerError,
                "the token could not be signed",
                e.to_string(),
            )
        })?;
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": exp.saturating_sub(now),
            "scope": grant.scope.to_oauth_string(),
            "issued_token_type": token_type::ACCESS_TOKEN,
        }))
    }
}

/// The sign-in endpoints of the broker's RFC 8414 metadata.
pub(crate) fn metadata(b: &Broker, out: &mut serde_json::Map<String, Value>) {
    let Some(signin) = b.sign_in() else {
        return;
    };
    let iss = b.cfg.issuer.trim_end_matches('/');
    out.insert(
        "authorization_endpoint".into(),
        json!(format!("{iss}/oauth2/authorize")),
    );
    out.insert(
        "registration_endpoint".into(),
        json!(format!("{iss}/oauth2/register")),
    );
    out.insert("response_types_supported".into(), json!(["code"]));
    out.insert("response_modes_supported".into(), json!(["query"]));
    out.insert("code_challenge_methods_supported".into(), json!(["S256"]));
    out.insert(
        "authorization_response_iss_parameter_supported".into(),
        json!(true),
    );
    if let Some(Value::Array(grants)) = out.get_mut("grant_types_supported") {
        grants.push(json!("authorization_code"));
    }
    if let Some(Value::Array(methods)) = out.get_mut("token_endpoint_auth_methods_supported") {
        methods.push(json!("none"));
    }
    if let Some(Value::Array(scopes)) = out.get_mut("scopes_supported") {
        for s in signin.scope().iter() {
            if !scopes.iter().any(|v| v.as_str() == Some(s)) {
                scopes.push(json!(s));
            }
        }
    }
}

// --- Registration (RFC 7591) ----------------------------------------------

#[derive(Debug, Deserialize)]
struct RegistrationRequest {
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
    #[serde(default)]
    client_name: Option<String>,
}

/// An RFC 7591 §3.2.2 error.
fn registration_error(error: &str, description: &str) -> Response {
    let mut resp = (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn register(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(signin) = b.sign_in() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut trail = Trail {
        step: "register",
        ..Trail::default()
    };
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    let refuse = async |b: &Broker, trail: &Trail, error: &str, description: &str| {
        b.record_sign_in(trail, Some((error, description))).await;
        registration_error(error, description)
    };
    if !json_body || body.len() > MAX_REGISTRATION_BYTES {
        return refuse(
            &b,
            &trail,
            "invalid_client_metadata",
            "the registration must be a JSON object of at most 16 KiB",
        )
        .await;
    }
    let Ok(meta) = serde_json::from_slice::<RegistrationRequest>(&body) else {
        return refuse(
            &b,
            &trail,
            "invalid_client_metadata",
            "the registration is not valid client metadata",
        )
        .await;
    };
    if meta.redirect_uris.is_empty()
        || meta.redirect_uris.len() > MAX_REDIRECT_URIS
        || !meta
            .redirect_uris
            .iter()
            .all(|u| signin.cfg.redirect_allowed(u))
    {
        return refuse(
            &b,
            &trail,
            "invalid_redirect_uri",
            "redirect URIs must be 1 to 5 http URIs to a loopback host or https URIs the broker allows",
        )
        .await;
    }
    if meta
        .grant_types
        .as_ref()
        .is_some_and(|g| !g.iter().any(|g| g == "authorization_code"))
        || meta
            .response_types
            .as_ref()
            .is_some_and(|r| !r.iter().any(|r| r == "code"))
    {
        return refuse(
            &b,
            &trail,
            "invalid_client_metadata",
            "only the authorization code grant (response type code) is supported",
        )
        .await;
    }
    let name = meta.client_name.map(|n| {
        n.chars()
            .filter(|c| !c.is_control())
            .take(MAX_CLIENT_NAME)
            .collect::<String>()
    });
    let client = RegisteredClient {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: name.filter(|n| !n.trim().is_empty()),
        redirect_uris: meta.redirect_uris,
    };
    trail.client = Some(client.id.clone());
    if signin
        .state
        .register(client.clone(), b.clock.now_ms())
        .await
        .is_err()
    {
        return refuse(
            &b,
            &trail,
            "invalid_client_metadata",
            "the broker holds as many registered clients as it may (max_clients); try again later",
        )
        .await;
    }
    tracing::info!(client = %client.id, "MCP sign-in: client registered");
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(json!({
            "client_id": client.id,
            "client_id_issued_at": b.now_secs(),
            "client_name": client.name,
            "redirect_uris": client.redirect_uris,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// --- Authorization ---------------------------------------------------------

/// A page for the person in the browser (nothing is redirected to an
/// unverified redirect URI).
fn page(status: StatusCode, title: &str, body_html: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         code{{background:#eee;padding:0 .2em}} button{{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}}</style>\
         </head><body><main><h1>{title}</h1>\n{body_html}\n</main></body></html>",
        title = escape(title),
    );
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    // (`no-referrer` would make browsers send `Origin: null` with the
    // consent form; `same-origin` leaks nothing to the client either.)
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

fn failed_page(why: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Sign-in failed",
        &format!("<p>{}</p>", escape(why)),
    )
}

/// A redirect back to the client (303, RFC 9207 `iss`, `state` echoed).
fn to_client(b: &Broker, request: &AuthRequest, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = reqwest::Url::parse(&request.redirect_uri) else {
        return failed_page("the client's redirect URI is unusable");
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(state) = &request.state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", &b.cfg.issuer);
    }
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(loc) = HeaderValue::from_str(url.as_str()) {
        h.insert(header::LOCATION, loc);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::SET_COOKIE, clearing_cookie());
    resp
}

/// An error redirect to the client, recorded.
async fn refuse_to_client(
    b: &Broker,
    trail: &Trail,
    request: &AuthRequest,
    error: &str,
    description: &str,
) -> Response {
    b.record_sign_in(trail, Some((error, description))).await;
    to_client(
        b,
        request,
        &[("error", error), ("error_description", description)],
    )
}

fn clearing_cookie() -> HeaderValue {
    HeaderValue::from_static("mandate_signin=; Path=/oauth2; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// Parameters, each at most once (RFC 6749 §3.1).
fn params_of(query: Option<&str>) -> Option<HashMap<String, String>> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).ok()?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if out.insert(k, v).is_some() {
            return None;
        }
    }
    Some(out)
}

async fn authorize(State(b): State<Arc<Broker>>, RawQuery(query): RawQuery) -> Response {
    let Some(signin) = b.sign_in() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut trail = Trail {
        step: "authorize",
        ..Trail::default()
    };
    let Some(params) = params_of(query.as_deref()) else {
        return failed_page("The request is malformed (a parameter is repeated).");
    };
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    // 1. Client and redirect URI: until both are known good, nothing is
    //    redirected anywhere (RFC 6749 §4.1.2.1).
    let client = match get("client_id") {
        Some(id) => signin.state.client(id).await,
        None => None,
    };
    let Some(client) = client else {
        b.record_sign_in(&trail, Some(("invalid_client", "unknown client_id")))
            .await;
        return failed_page("The application is not registered with this server.");
    };
    trail.client = Some(client.id.clone());
    let Some(redirect_uri) =
        get("redirect_uri").filter(|r| client.redirect_uris.iter().any(|u| u == r))
    else {
        b.record_sign_in(
            &trail,
            Some(("invalid_request", "redirect_uri is not registered")),
        )
        .await;
        return failed_page(
            "The application asked to be sent back to an address it did not register.",
        );
    };
    let state = get("state").map(str::to_owned);
    if state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
        return failed_page("The request's state is too long.");
    }
    let resource = get("resource").unwrap_or_default();
    trail.resource = Some(resource.chars().take(200).collect());
    let request = AuthRequest {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        state,
        challenge: get("code_challenge").unwrap_or_default().to_owned(),
        resource: resource.to_owned(),
        scope: get("scope").map(Scope::parse),
    };
    // 2. What is asked for.
    if get("response_type") != Some("code") {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "unsupported_response_type",
            "only response_type=code is supported",
        )
        .await;
    }
    if get("code_challenge_method") != Some("S256") || !challenge_well_formed(&request.challenge) {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required",
        )
        .await;
    }
    if !b.cfg.resources.iter().any(|r| r == resource) {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "invalid_target",
            "resource must name the MCP gateway this server issues tokens for",
        )
        .await;
    }
    if let Some(asked) = &request.scope
        && asked.intersect(signin.scope()).iter().next().is_none()
    {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "invalid_scope",
            "none of the requested scopes can be granted",
        )
        .await;
    }
    // 3. To the provider, the attempt bound to this browser.
    let (provider_request, binding) = match (signin.rp.authorization().await, random_token()) {
        (Ok(r), Some(binding)) => (r, binding),
        (Err(e), _) => {
            tracing::warn!(error = %e, "MCP sign-in: the identity provider cannot be used");
            return refuse_to_client(
                &b,
                &trail,
                &request,
                "temporarily_unavailable",
                "the identity provider cannot be reached right now",
            )
            .await;
        }
        (Ok(_), None) => {
            return refuse_to_client(&b, &trail, &request, "server_error", "no randomness").await;
        }
    };
    let pending = Pending {
        request: request.clone(),
        binding: digest(&binding),
        started_ms: b.clock.now_ms(),
        stage: Stage::AtProvider {
            nonce: provider_request.nonce,
            code_verifier: provider_request.code_verifier,
        },
    };
    if signin
        .state
        .hold(provider_request.state, pending)
        .await
        .is_err()
    {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "temporarily_unavailable",
            "too many sign-ins are in progress; try again in a few minutes",
        )
        .await;
    }
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(loc) = HeaderValue::from_str(&provider_request.location) {
        h.insert(header::LOCATION, loc);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{BINDING_COOKIE}={binding}; Path=/oauth2; HttpOnly; SameSite=Lax; Max-Age={}{}",
        PENDING_TTL_MS / 1000,
        if signin.secure { "; Secure" } else { "" }
    )) {
        h.insert(header::SET_COOKIE, cookie);
    }
    resp
}

/// Whether the browser's binding cookie is the one the attempt was
/// started with.
fn same_browser(headers: &HeaderMap, binding: &str) -> bool {
    let Some(cookie) = cookie(headers, BINDING_COOKIE) else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(
        digest(&cookie).as_bytes(),
        binding.as_bytes(),
    )
    .is_ok()
}

/// The value of cookie `name`, if sent once.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    mandate_authn::oidc::cookie(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        name,
    )
}

async fn callback(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(mut cb): Query<Callback>,
) -> Response {
    let Some(signin) = b.sign_in() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now_ms = b.clock.now_ms();
    let pending = match cb.state.take() {
        Some(s) => signin.state.take(&s, now_ms).await,
        None => None,
    };
    let Some(pending) = pending else {
        return failed_page(
            "This sign-in is unknown or has expired; start again from your application.",
        );
    };
    if !same_browser(&headers, &pending.binding) {
        return failed_page(
            "This sign-in was not started in this browser; start again from your application.",
        );
    }
    let Stage::AtProvider {
        nonce,
        code_verifier,
    } = pending.stage
    else {
        return failed_page(
            "This sign-in is unknown or has expired; start again from your application.",
        );
    };
    let request = pending.request;
    let mut trail = Trail {
        step: "authorize",
        client: Some(request.client_id.clone()),
        resource: Some(request.resource.clone()),
        ..Trail::default()
    };
    let signed_in = match signin.rp.code_of(cb) {
        Ok(code) => signin.rp.complete(&code, &code_verifier, &nonce).await,
        Err(e) => Err(e),
    };
    let signed_in = match signed_in {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "MCP sign-in: the user was not signed in");
            b.record_sign_in(&trail, Some(("access_denied", &e.to_string())))
                .await;
            return to_client(
                &b,
                &request,
                &[
                    ("error", "access_denied"),
                    (
                        "error_description",
                        "the user could not be signed in at the identity provider",
                    ),
                ],
            );
        }
    };
    let user = User {
        iss: signed_in.principal.iss().to_owned(),
        sub: signed_in.principal.sub().to_owned(),
    };
    trail.user = Some(user.clone());
    let groups: Vec<String> = match signed_in.claims.get(&signin.cfg.groups_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    // The scope: request ∩ sign-in scopes ∩ the user's entitlements ∩ a
    // ceiling approved for this client through the change gate.
    let actor = format!("{SIGNED_IN_ACTOR_PREFIX}{}", request.client_id);
    let entitled = b
        .cfg
        .entitlements
        .of(&user.sub, groups.iter().map(String::as_str));
    let ceiling = match b.control.ceiling(&actor) {
        Some(approved) => signin.scope().intersect(&approved),
        None => signin.scope().clone(),
    };
    let scope = match reduce_scope(
        request.scope.as_ref(),
        Bounds {
            subject: &entitled,
            ceiling: &ceiling,
            template: signin.scope(),
        },
        false,
    ) {
        Ok(s) => s,
        Err(_) => {
            return refuse_to_client(
                &b,
                &trail,
                &request,
                "invalid_scope",
                "none of the requested scopes can be granted to this user",
            )
            .await;
        }
    };
    trail.scope = Some(scope.to_oauth_string());
    let (Some(id), Some(csrf)) = (random_token(), random_token()) else {
        return refuse_to_client(&b, &trail, &request, "server_error", "no randomness").await;
    };
    let client = signin.state.client(&request.client_id).await;
    let held = signin.state.hold(
        id.clone(),
        Pending {
            request: request.clone(),
            binding: pending.binding,
            started_ms: pending.started_ms,
            stage: Stage::Consent {
                user: user.clone(),
                scope: scope.clone(),
                csrf: csrf.clone(),
            },
        },
    );
    if held.await.is_err() {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "temporarily_unavailable",
            "too many sign-ins are in progress; try again in a few minutes",
        )
        .await;
    }
    consent_page(&request, client.as_ref(), &user, &scope, &id, &csrf)
}

/// The consent page: who is signed in, which application, where it sends
/// the browser back, and the scopes it would get.
fn consent_page(
    request: &AuthRequest,
    client: Option<&RegisteredClient>,
    user: &User,
    scope: &Scope,
    id: &str,
    csrf: &str,
) -> Response {
    let name = client
        .and_then(|c| c.name.clone())
        .unwrap_or_else(|| "An unnamed application".into());
    let back_to = reqwest::Url::parse(&request.redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let mut scopes = String::new();
    for s in scope.iter() {
        scopes.push_str("<li><code>");
        scopes.push_str(&escape(s));
        scopes.push_str("</code></li>");
    }
    let body = format!(
        "<p>Signed in as <strong id=\"user\">{user}</strong>.</p>\n\
         <p><strong id=\"client-name\">{name}</strong> (client <code id=\"client-id\">{client_id}</code>, \
         returning to <code>{back_to}</code>) asks to use Mandate's MCP gateway on your behalf with:</p>\n\
         <ul id=\"scopes\">{scopes}</ul>\n\
         <p>Every call it makes is checked against policy and recorded under your name.</p>\n\
         <form method=\"post\" action=\"/oauth2/consent\">\
         <input type=\"hidden\" name=\"id\" value=\"{id}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        user = escape(&user.sub),
        name = escape(&name),
        client_id = escape(&request.client_id),
        back_to = escape(&back_to),
        id = escape(id),
        csrf = escape(csrf),
    );
    page(StatusCode::OK, "Allow access?", &body)
}

#[derive(Debug, Deserialize)]
struct ConsentForm {
    id: String,
    csrf: String,
    decision: String,
}

async fn consent(State(b): State<Arc<Broker>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(signin) = b.sign_in() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A cross-site form (CSRF) names another origin; the binding cookie
    // (SameSite=Lax) is not sent with one either.
    if let Some(origin) = headers.get(header::ORIGIN)
        && origin.as_bytes() != signin.origin.as_bytes()
    {
        return page(
            StatusCode::FORBIDDEN,
            "Refused",
            "<p>This decision did not come from the consent page.</p>",
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<ConsentForm>(&body) else {
        return failed_page("The decision is malformed.");
    };
    let now_ms = b.clock.now_ms();
    // Used once, whatever happens next.
    let Some(pending) = signin.state.take(&form.id, now_ms).await else {
        return failed_page(
            "This sign-in is unknown or has expired; start again from your application.",
        );
    };
    let Stage::Consent { user, scope, csrf } = pending.stage else {
        return failed_page(
            "This sign-in is unknown or has expired; start again from your application.",
        );
    };
    let csrf_ok =
        aws_lc_rs::constant_time::verify_slices_are_equal(csrf.as_bytes(), form.csrf.as_bytes())
            .is_ok();
    if !csrf_ok || !same_browser(&headers, &pending.binding) {
        return page(
            StatusCode::FORBIDDEN,
            "Refused",
            "<p>This decision did not come from the consent page.</p>",
        );
    }
    let request = pending.request;
    let trail = Trail {
        step: "consent",
        client: Some(request.client_id.clone()),
        user: Some(user.clone()),
        scope: Some(scope.to_oauth_string()),
        resource: Some(request.resource.clone()),
        ..Trail::default()
    };
    if form.decision != "approve" {
        return refuse_to_client(
            &b,
            &trail,
            &request,
            "access_denied",
            "the user denied the request",
        )
        .await;
    }
    let grant = Grant {
        request: request.clone(),
        user,
        scope,
        issued_ms: now_ms,
    };
    match signin.state.issue_code(grant).await {
        Ok(code) => to_client(&b, &request, &[("code", &code)]),
        Err(Full) => {
            refuse_to_client(
                &b,
                &trail,
                &request,
                "temporarily_unavailable",
                "too many sign-ins are in progress; try again in a few minutes",
            )
            .await
        }
    }
}

#[cfg(test)]
#[path = "signin_tests.rs"]
mod tests;
