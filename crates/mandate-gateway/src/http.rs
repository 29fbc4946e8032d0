//! HTTP surface: `/mcp` (Streamable HTTP, via `rmcp`), protected resource
//! metadata (RFC 9728), `/healthz`, `/readyz` and `/metrics`.
//!
//! Every `/mcp` request passes [`mcp_entry`] first, in this order:
//! 1. authenticate the bearer token (401 + `WWW-Authenticate` on failure);
//! 2. check the transport session is bound to this subject (F-04);
//! 3. bound and read the body, and refuse `tools/call`s outside the token's
//!    scope with 403 `insufficient_scope` so clients can step up;
//! 4. hand the request, with the verified [`Principal`], to `rmcp`;
//! 5. bind a newly created transport session to the subject.

use crate::Gateway;
use crate::error::GatewayError;
use crate::handler::{GatewayHandler, PrincipalSource};
use crate::sessions::{Admission, Check, Sessions};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderValue, Method, StatusCode, header};
use mandate_authn::Principal;
use mandate_policy::Decision;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt as _;

const SESSION_HEADER: &str = "mcp-session-id";

#[derive(Clone)]
struct AppState {
    gw: Arc<Gateway>,
    mcp: StreamableHttpService<GatewayHandler, LocalSessionManager>,
    /// Transport sessions: whose, and how many.
    sessions: Arc<Sessions>,
}

/// The gateway's HTTP routes (the agents' side; the operator plane's
/// routes are `mandate_operator::router`, merged by the binary).
pub fn router(gw: Arc<Gateway>) -> Router {
    let cfg = gw.config();
    let mut mcp_cfg = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(cfg.max_body_bytes)
        .with_allowed_hosts(cfg.allowed_hosts.clone())
        .with_allowed_origins(cfg.allowed_origins.clone())
        .enforce_origin_validation()
        // A stateless (2026-07-28) call whose reply is its first message is
        // answered as plain JSON; rmcp falls back to SSE as soon as the
        // handler emits anything first (progress, elicitation), so nothing
        // is lost. Clients can then reuse their connection.
        .with_json_response(true);
    if cfg.allowed_hosts.is_empty() {
        mcp_cfg = mcp_cfg.disable_allowed_hosts();
    }
    let factory_gw = gw.clone();
    let limits = &cfg.limits;
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(limits.session_idle_timeout);
    let manager = Arc::new(manager);
    let sessions = Arc::new(Sessions::new(
        manager.clone(),
        gw.control().clone(),
        limits.max_sessions,
        limits.max_sessions_per_subject,
        gw.metrics().sessions.clone(),
    ));
    // Sessions opened on another replica (or before a restart) are carried
    // on: rmcp replays the handshake from what the control store keeps.
    mcp_cfg.session_store = Some(sessions.clone());
    let mcp = StreamableHttpService::new(
        move || {
            Ok(GatewayHandler::new(
                factory_gw.clone(),
                PrincipalSource::PerRequest,
            ))
        },
        manager,
        mcp_cfg,
    );
    // Forget sessions rmcp closed and sessions of expired tokens.
    let sweep = Arc::downgrade(&sessions);
    let clock = gw.clock().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            let Some(sessions) = sweep.upgrade() else {
                return;
            };
            let now = clock.now_secs().cast_unsigned();
            sessions.sweep(now, crate::usage::SESSION_GRACE_SECS).await;
        }
    });
    let state = AppState { gw, mcp, sessions };
    Router::new()
        .route("/mcp", any(mcp_entry))
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource_metadata),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// RFC 9728 protected resource metadata, so standard MCP clients can find
/// the authorization server.
async fn protected_resource_metadata(State(app): State<AppState>) -> Response {
    let cfg = app.gw.config();
    axum::Json(json!({
        "resource": cfg.resource,
        "authorization_servers": advertised_issuers(&cfg.authorization_servers),
        "bearer_methods_supported": ["header"],
        "resource_name": "Mandate MCP gateway",
        "scopes_supported": app.gw.config().upstreams.iter().map(|u| format!("{}.*", u.name)).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// The issuers a client could use as authorization servers: only those
/// that are URLs (RFC 9728 §2; a development issuer such as `mandate-dev`
/// is trusted but is not a server anyone can sign in at).
fn advertised_issuers(issuers: &[String]) -> Vec<&str> {
    issuers
        .iter()
        .map(String::as_str)
        .filter(|i| {
            reqwest::Url::parse(i)
                .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
        })
        .collect()
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app.gw.audit().health() {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        Err(e) => {
            // Unauthenticated: the store's error (paths, database
            // messages) goes to the log only.
            tracing::warn!(error = %e, "health check: the audit store cannot write");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({
                    "status": "degraded",
                    "audit": "unavailable",
                    "effect": "tool calls are denied until the audit store can write",
                })),
            )
                .into_response()
        }
    }
}

/// Ready to take calls: not stopping, the audit store's last write
/// succeeded and the control store answers a read. `/healthz` says the
/// process is alive; this says a load balancer may send it calls. What
/// failed is named; why goes to the log only (unauthenticated).
async fn readyz(State(app): State<AppState>) -> Response {
    app.gw.note_readiness_asked();
    let draining = app.gw.is_draining();
    let audit = app.gw.audit().health();
    if let Err(e) = &audit {
        tracing::warn!(error = %e, "readiness: the audit store cannot write");
    }
    let control = app.gw.control();
    let control_ok =
        match tokio::time::timeout(std::time::Duration::from_secs(2), control.tool_pins()).await {
            Ok(Ok(_)) if control.stale().is_none() => true,
            Ok(Ok(_)) => {
                tracing::warn!("readiness: the shared control store has not been re-read recently");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the control store cannot be read");
                false
            }
            Err(_) => false,
        };
    let policy_behind = app.gw.policy_behind();
    if let Some(why) = &policy_behind {
        tracing::warn!(reason = %why, "readiness: the policy set in force is not enforced here");
    }
    let ready = !draining && audit.is_ok() && control_ok && policy_behind.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "draining": draining,
            "audit": if audit.is_ok() { "ok" } else { "unavailable" },
            "control": if control_ok { "ok" } else { "unavailable" },
            // A policy set is loaded before the listener opens, and a
            // broken set never replaces it; with replicas, "behind" until
            // the set in force among them is installed here.
            "policies": if policy_behind.is_some() { "behind" } else { "loaded" },
        })),
    )
        .into_response()
}

/// Prometheus text, or OpenMetrics when the scraper's `Accept` asks for it.
async fn metrics(State(app): State<AppState>, headers: http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::negotiate(accept);
    // A slow control store must not hold the scrape up.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        app.gw.metrics().count_shared_state(app.gw.control()),
    )
    .await;
    let body = app.gw.metrics().render(format);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        body,
    )
        .into_response()
}

/// Marks a response sent before the request body was read: the connection
/// cannot be reused (the unread body would be taken for the next request).
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Checks a parsed body is a JSON-RPC 2.0 message (or a non-empty batch of
/// them), and that `tools/call` params have the shape MCP requires, so
/// malformed input gets the JSON-RPC error it deserves, not a transport one.
fn envelope_problem(body: &Value) -> Option<(Value, GatewayError)> {
    fn one(m: &Value) -> Option<(Value, GatewayError)> {
        let invalid = |msg: &str| Some((Value::Null, GatewayError::invalid_message(msg)));
        let Some(obj) = m.as_object() else {
            return invalid("expected an object");
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return invalid("\"jsonrpc\" must be \"2.0\"");
        }
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
            return invalid("\"id\" must be a string or a number");
        }
        match obj.get("method") {
            Some(Value::String(method)) => {
                if method == "tools/call" {
                    let params = obj.get("params");
                    let bad = match params.and_then(Value::as_object) {
                        None => Some("params must be an object"),
                        Some(p) if !p.get("name").is_some_and(Value::is_string) => {
                            Some("params.name must be a string")
                        }
                        Some(p) if p.get("arguments").is_some_and(|a| !a.is_object()) => {
                            Some("params.arguments must be an object")
                        }
                        Some(_) => None,
                    };
                    if let Some(msg) = bad {
                        return Some((id, GatewayError::invalid_params(msg)));
                    }
                }
                None
            }
            Some(_) => invalid("\"method\" must be a string"),
            None if obj.contains_key("result") || obj.contains_key("error") => None,
            None => invalid("neither a request, a notification nor a response"),
        }
    }
    match body {
        Value::Array(items) if items.is_empty() => {
            Some((Value::Null, GatewayError::invalid_message("empty batch")))
        }
        Value::Array(items) => items.iter().find_map(one),
        other => one(other),
    }
}

async fn authenticate(
    gw: &Gateway,
    headers: &http::HeaderMap,
    method: &Method,
) -> Result<Arc<Principal>, Response> {
    // One credential per request: with two, which one counts would be a
    // guess (RFC 9110 §5.3 allows no list form for Authorization).
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        gw.metrics().auth_failures.inc();
        return Err(GatewayError::two_credentials().into_http(Value::Null));
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // `DPoP <token>` (RFC 9449 §7.1) or `Bearer <token>`.
    if let Some(token) = header.and_then(|h| mandate_authn::token_of(h, "DPoP")) {
        return crate::dpop::authenticate(gw, headers, method, token).await;
    }
    let Some(token) = header.and_then(|h| mandate_authn::token_of(h, "Bearer")) else {
        gw.metrics().auth_failures.inc();
        return Err(GatewayError::credential_required(gw).into_http(Value::Null));
    };
    match gw.authenticate(token).await {
        Ok(p) => Ok(Arc::new(p)),
        Err(e) => {
            gw.metrics().auth_failures.inc();
            let desc = e.description();
            tracing::info!(reason = %desc, "bearer token refused");
            Err(GatewayError::invalid_token(gw, &desc).into_http(Value::Null))
        }
    }
}

/// Records a refusal made at the HTTP layer for an authenticated subject.
/// A refused tool call keeps its argument hash and, per the redaction
/// rules, its arguments, exactly as a policy denial would.
pub(crate) async fn audit_refusal(
    gw: &Gateway,
    principal: &Principal,
    tool: &str,
    args: Option<&serde_json::Map<String, Value>>,
    reason: String,
) -> Decision {
    gw.record_refusal(principal.subject(), tool, args, reason)
        .await
}

/// A `tools/call` request found in a body: its id, tool name and arguments.
type CalledTool<'a> = (Value, String, Option<&'a serde_json::Map<String, Value>>);

/// The `tools/call` requests in a body (one message, or a batch).
fn called_tools(body: &Value) -> Vec<CalledTool<'_>> {
    fn one(m: &Value) -> Option<CalledTool<'_>> {
        if m.get("method")?.as_str()? != "tools/call" {
            return None;
        }
        let params = m.get("params")?;
        let name = params.get("name")?.as_str()?.to_owned();
        let args = params.get("arguments").and_then(Value::as_object);
        Some((m.get("id").cloned().unwrap_or(Value::Null), name, args))
    }
    match body {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// Whether a `Content-Type` value is `application/json` (media types are
/// case-insensitive, RFC 9110 §8.3.1; parameters such as `charset` are
/// ignored).
fn is_json_media_type(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether a body is (or a batch holds) an `initialize` request, the only
/// request that opens a transport session.
fn opens_session(body: &Value) -> bool {
    let one = |m: &Value| m.get("method").and_then(Value::as_str) == Some("initialize");
    match body {
        Value::Array(items) => items.iter().any(one),
        other => one(other),
    }
}

async fn mcp_entry(State(app): State<AppState>, req: Request) -> Response {
    let gw = &app.gw;

    // 1. Authenticate. The phase is recorded under the tool the request
    //    calls: by the handler for a `tools/call` that reaches it (the tool
    //    has its label by then), else here when the request ends.
    let started = std::time::Instant::now();
    let authenticated = authenticate(gw, req.headers(), req.method()).await;
    let mut auth_phase = AuthPhase {
        gw,
        took: started.elapsed(),
        tool: None,
        handed_over: false,
    };
    let principal = match authenticated {
        Ok(p) => p,
        Err(resp) => return closing(resp),
    };

    // 2. Session binding: a transport session belongs to the issuer,
    //    subject pair and Mandate session that opened it.
    let session_id = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session_id {
        match app.sessions.check(id, &principal).await {
            Check::Bound => {}
            Check::Foreign => {
                gw.metrics().session_refusals.inc();
                let d = audit_refusal(
                    gw,
                    &principal,
                    "mcp/session",
                    None,
                    "transport session is bound to another subject".into(),
                )
                .await;
                return closing(GatewayError::foreign_session(&d).into_http(Value::Null));
            }
            Check::Unknown => {
                return closing(GatewayError::SessionNotFound.into_http(Value::Null));
            }
            // Fail closed: a session nobody here can place is not served.
            Check::Refused | Check::Unavailable => {
                return closing(GatewayError::Overloaded.into_http(Value::Null));
            }
        }
    }

    // 3. Read the body (bounded) and check scope for tool calls. The media
    //    type decides nothing here: whatever the client calls it, a body
    //    that parses as JSON gets the same checks (rmcp refuses what it
    //    cannot take).
    let (mut parts, body) = req.into_parts();
    let bytes = if parts.method == Method::POST {
        match axum::body::to_bytes(body, gw.config().max_body_bytes).await {
            Ok(b) => b,
            Err(_) => {
                return closing(
                    GatewayError::too_large(gw.config().max_body_bytes).into_http(Value::Null),
                );
            }
        }
    } else {
        bytes::Bytes::new()
    };
    let declared_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_media_type);
    let mut reservation = None;
    if parts.method == Method::POST {
        let message = match serde_json::from_slice::<Value>(&bytes) {
            Ok(m) => Some(m),
            Err(e) if declared_json => {
                return GatewayError::parse_error(&e).into_http(Value::Null);
            }
            // Not JSON and not declared as JSON: rmcp answers 415.
            Err(_) => None,
        };
        if let Some(message) = message {
            if let Some((id, error)) = envelope_problem(&message) {
                return error.into_http(id);
            }
            let called = called_tools(&message);
            if let [(_, tool, _)] = called.as_slice() {
                auth_phase.tool = Some(tool.clone());
            }
            for (id, tool, args) in called {
                if !principal.scope().covers(&tool) {
                    return scope_refusal(gw, &principal, id, tool, args).await;
                }
            }
            // A new transport session takes a slot of its subject's (and
            // the process's) session budget.
            if session_id.is_none() && opens_session(&message) {
                match app.sessions.admit(&principal).await {
                    Admission::Admitted(r) => reservation = Some(r),
                    Admission::Refused => {
                        return closing(GatewayError::Overloaded.into_http(Value::Null));
                    }
                }
            }
        }
    }

    // 4. Hand over to rmcp with the verified principal attached.
    parts.extensions.insert(principal.clone());
    if auth_phase.tool.is_some() {
        parts
            .extensions
            .insert(crate::metrics::AuthTook(auth_phase.took));
        auth_phase.handed_over = true;
    }
    let is_delete = parts.method == Method::DELETE;
    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = match app.mcp.clone().oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    };

    // 5. Bind a newly created transport session; forget a deleted one.
    if let Some(r) = reservation {
        match resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(new_id) => app.sessions.opened(r, new_id, &principal).await,
            None => app.sessions.abandoned(r),
        }
    }
    if is_delete
        && resp.status().is_success()
        && let Some(id) = &session_id
    {
        app.sessions.closed(id);
    }
    resp
}

/// The authenticate phase of one `/mcp` request, recorded when dropped
/// unless it was handed to the handler with the request.
struct AuthPhase<'a> {
    gw: &'a Gateway,
    took: std::time::Duration,
    /// The tool of a request that is one `tools/call`.
    tool: Option<String>,
    /// The handler records it (`metrics::AuthTook`).
    handed_over: bool,
}

impl Drop for AuthPhase<'_> {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let metrics = self.gw.metrics();
        let tool = match &self.tool {
            Some(name) => metrics.tool_seen(name),
            None => metrics.no_tool(),
        };
        metrics.observe_phase(crate::metrics::Phase::Authenticate, &tool, self.took);
    }
}

/// Refuses (and records) a `tools/call` outside the token's scope, with
/// the challenge a client needs to step up (RFC 6750 §3.1).
async fn scope_refusal(
    gw: &Gateway,
    principal: &Principal,
    id: Value,
    tool: String,
    args: Option<&serde_json::Map<String, Value>>,
) -> Response {
    gw.metrics().scope_refusals.inc();
    let d = audit_refusal(
        gw,
        principal,
        &tool,
        Some(args.unwrap_or(&serde_json::Map::new())),
        format!("scope does not cover {tool}"),
    )
    .await;
    GatewayError::out_of_scope(gw, &tool, &d).into_http(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_issuers_that_are_urls_are_advertised() {
        let issuers = [
            "https://broker.example".to_owned(),
            "mandate-dev".to_owned(),
            "http://127.0.0.1:8080".to_owned(),
            "urn:example:issuer".to_owned(),
        ];
        assert_eq!(
            super::advertised_issuers(&issuers),
            ["https://broker.example", "http://127.0.0.1:8080"]
        );
    }
}
