//! The gateway's request path in process, without sockets: a real
//! [`Gateway`] (the quickstart Cedar policies, a SQLite audit log and
//! control store in a temporary directory, a development token issuer)
//! behind [`mandate_gateway::http::router`], driven with `oneshot`.
//!
//! One test per refusal a client can meet without any upstream being
//! reached: each checks the HTTP status, the JSON-RPC error and, where the
//! subject is authenticated, that the refusal was audited.
//!
//! Self-contained on purpose (public APIs only), so it adapts easily when
//! the gateway's modules move.

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode, header};
use mandate_audit::AuditLog;
use mandate_authn::dev::DevKey;
use mandate_authn::{Authenticator, AuthnConfig, IssuerConfig, JwksSource};
use mandate_control::ControlStore;
use mandate_core::ToolClass;
use mandate_gateway::{
    ApprovalConfig, Gateway, GatewayConfig, Isolation, Planes, Transport, UpstreamConfig,
};
use mandate_policy::PolicyEngine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ISSUER: &str = "mandate-dev";
const PUBLIC_URL: &str = "http://127.0.0.1:8943";
const AUDIENCE: &str = "http://127.0.0.1:8943/mcp";
const MAX_BODY: usize = 8 * 1024;
const MCP_ACCEPT: &str = "application/json, text/event-stream";

/// A gateway with its planes, and the issuer of its agents' tokens.
struct Env {
    router: Router,
    gateway: Arc<Gateway>,
    issuer: Arc<DevKey>,
    /// Where its stores live (owned by the first gateway of a test).
    path: std::path::PathBuf,
    upstreams: Vec<UpstreamConfig>,
    _dir: Option<tempfile::TempDir>,
}

/// One HTTP answer: status, headers, and the JSON-RPC messages of the body
/// (plain JSON or server-sent events).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    messages: Vec<Value>,
    text: String,
}

impl Reply {
    fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `error` member of the one message answering `id`.
    fn error(&self, id: &Value) -> Option<&Value> {
        self.messages
            .iter()
            .find(|m| m.get("id") == Some(id))
            .and_then(|m| m.get("error"))
    }

    fn error_code(&self, id: &Value) -> Option<i64> {
        self.error(id)
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
    }
}

fn upstream(name: &str, tools: &[(&str, ToolClass)]) -> UpstreamConfig {
    UpstreamConfig {
        name: name.to_owned(),
        // Never contacted by these tests (nothing listens on port 1).
        transport: Transport::Http {
            url: "http://127.0.0.1:1/mcp".to_owned(),
            headers: BTreeMap::new(),
        },
        timeout: Duration::from_secs(2),
        tools: tools.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect(),
        default_class: None,
        isolation: Isolation::Shared,
        provenance: BTreeMap::new(),
        default_provenance: Default::default(),
        approve_new_tools: false,
        max_result_bytes: UpstreamConfig::DEFAULT_MAX_RESULT_BYTES,
    }
}

impl Env {
    async fn new() -> Result<Self, Box<dyn std::error::Error>> {
        Self::with_upstreams(vec![
            upstream(
                "docs",
                &[
                    ("search", ToolClass::Read),
                    ("send_mail", ToolClass::Outbound),
                ],
            ),
            upstream(
                "bank",
                &[
                    ("get_balance", ToolClass::Read),
                    ("transfer", ToolClass::Financial),
                ],
            ),
        ])
        .await
    }

    async fn with_upstreams(
        upstreams: Vec<UpstreamConfig>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::in_temp_dir(upstreams, mandate_core::Clock::system()).await
    }

    /// A gateway (and control store) reading `clock`, with no upstream.
    async fn with_clock(clock: mandate_core::Clock) -> Result<Self, Box<dyn std::error::Error>> {
        Self::in_temp_dir(Vec::new(), clock).await
    }

    /// A gateway whose stores and JWKS live in a new temporary directory.
    async fn in_temp_dir(
        upstreams: Vec<UpstreamConfig>,
        clock: mandate_core::Clock,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let issuer = mandate_authn::dev::generate_ed25519()?;
        std::fs::write(dir.path().join("jwks.json"), issuer.jwks_json())?;
        let mut env = Self::build(
            dir.path(),
            Arc::new(issuer),
            upstreams,
            "audit.sqlite",
            clock,
        )
        .await?;
        env._dir = Some(dir);
        Ok(env)
    }

    /// Another gateway sharing this one's control store, issuer and
    /// upstreams, with an audit log of its own: a second replica (or this
    /// one after a restart).
    async fn replica(&self, name: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Self::build(
            &self.path,
            self.issuer.clone(),
            self.upstreams.clone(),
            &format!("audit-{name}.sqlite"),
            mandate_core::Clock::system(),
        )
        .await
    }

    async fn build(
        path: &std::path::Path,
        issuer: Arc<DevKey>,
        upstreams: Vec<UpstreamConfig>,
        audit_file: &str,
        clock: mandate_core::Clock,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let jwks = path.join("jwks.json");
        let authenticator = |audience: String, require_actor: bool| {
            let mut cfg = AuthnConfig::new(
                vec![IssuerConfig {
                    issuer: ISSUER.to_owned(),
                    jwks: JwksSource::File(jwks.clone()),
                }],
                audience,
            );
            cfg.require_actor = require_actor;
            Authenticator::new(cfg)
        };
        let authn = authenticator(AUDIENCE.to_owned(), true).await?;
        let operator_authn = authenticator(format!("{PUBLIC_URL}/api"), false).await?;
        let policy = PolicyEngine::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/quickstart/policies"),
        )?;
        let audit = AuditLog::open_sqlite(&path.join(audit_file))?;
        let control = ControlStore::open(&path.join("control.sqlite"))?.with_clock(clock.clone());
        let cfg = GatewayConfig {
            public_url: PUBLIC_URL.to_owned(),
            resource: AUDIENCE.to_owned(),
            authorization_servers: vec![ISSUER.to_owned()],
            upstreams: upstreams.clone(),
            max_body_bytes: MAX_BODY,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            operators: Vec::new(),
            approvals: ApprovalConfig::default(),
            change_gate: false,
            redaction: Default::default(),
            limits: Default::default(),
        };
        let gateway = Gateway::new(
            cfg,
            Planes {
                authn: Arc::new(authn),
                operator_authn: Arc::new(operator_authn),
                policy: Arc::new(policy),
                audit,
                control: Arc::new(control),
                clock,
            },
        );
        Ok(Self {
            router: mandate_gateway::http::router(gateway.clone()),
            gateway,
            issuer,
            path: path.to_owned(),
            upstreams,
            _dir: None,
        })
    }

    /// A composite token for `sub` (agent `assistant`) with these claims
    /// changed or added.
    fn token_with(
        &self,
        sub: &str,
        overrides: Value,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let now = self.gateway.clock().now_secs();
        let mut claims = json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": AUDIENCE,
            "act": {"sub": "assistant"},
            "scope": "docs.* bank.get_balance nosuch.*",
            "sid": format!("sid-{sub}"),
            "iat": now,
            "exp": now + 600,
        });
        if let (Some(c), Some(o)) = (claims.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                c.insert(k.clone(), v.clone());
            }
        }
        Ok(self.issuer.sign(&claims)?)
    }

    fn token(&self, sub: &str) -> Result<String, Box<dyn std::error::Error>> {
        self.token_with(sub, json!({}))
    }

    async fn send(&self, mut req: Request<Body>) -> Result<Reply, Box<dyn std::error::Error>> {
        // As every HTTP/1.1 client does (rmcp refuses a request without one).
        req.headers_mut()
            .entry(header::HOST)
            .or_insert(http::HeaderValue::from_static("127.0.0.1:8943"));
        let resp = self.router.clone().oneshot(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = tokio::time::timeout(
            Duration::from_secs(10),
            axum::body::to_bytes(resp.into_body(), 1024 * 1024),
        )
        .await??;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let messages = if is_sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(items)) => items,
                Ok(v) => vec![v],
                Err(_) => Vec::new(),
            }
        };
        Ok(Reply {
            status,
            headers,
            messages,
            text,
        })
    }

    /// POSTs `body` to `/mcp` as an MCP client does.
    async fn post(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        body: impl Into<Body>,
    ) -> Result<Reply, Box<dyn std::error::Error>> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/mcp")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, MCP_ACCEPT);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        self.send(req.body(body.into())?).await
    }

    /// Opens a transport session for `token`.
    async fn initialize(&self, token: &str) -> Result<String, Box<dyn std::error::Error>> {
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "request-path-test", "version": "0"}
            }
        });
        let reply = self.post(Some(token), None, init.to_string()).await?;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let session = reply.header("mcp-session-id").to_owned();
        assert!(!session.is_empty(), "no session id: {reply:?}");
        let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let ack = self
            .post(Some(token), Some(&session), done.to_string())
            .await?;
        assert!(ack.status.is_success(), "{ack:?}");
        Ok(session)
    }

    fn audited(&self) -> u64 {
        self.gateway.audit().appended_count()
    }
}

fn tools_call(id: i64, name: &str, arguments: Value) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}
    })
    .to_string()
}

fn tools_list(id: i64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {}}).to_string()
}

/// A 401 as RFC 6750 and RFC 9728 want it: a `Bearer` challenge pointing at
/// the protected resource metadata, and a JSON-RPC error.
fn assert_unauthorized(reply: &Reply, error: Option<&str>) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    let challenge = reply.header(header::WWW_AUTHENTICATE);
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!(
                "resource_metadata=\"{PUBLIC_URL}/.well-known/oauth-protected-resource/mcp\""
            )),
        "{challenge}"
    );
    match error {
        Some(code) => assert!(
            challenge.contains(&format!("error=\"{code}\"")),
            "{challenge}"
        ),
        None => assert!(!challenge.contains("error="), "{challenge}"),
    }
    assert_eq!(
        reply.error_code(&Value::Null),
        Some(-32001),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn missing_token_is_401_with_a_challenge() -> TestResult {
    let env = Env::new().await?;
    let before = env.audited();
    let reply = env.post(None, None, tools_list(1)).await?;
    assert_unauthorized(&reply, None);
    // Unauthenticated requests are counted, never written to the evidence log.
    assert_eq!(env.audited(), before);
    assert_eq!(env.gateway.metrics().auth_failures.get(), 1);
    Ok(())
}

#[tokio::test]
async fn malformed_or_forged_token_is_401_invalid_token() -> TestResult {
    let env = Env::new().await?;
    let other_issuer = mandate_authn::dev::generate_ed25519()?;
    let forged = other_issuer.sign(&json!({
        "iss": ISSUER, "sub": "alice@example.com", "aud": AUDIENCE,
        "act": {"sub": "assistant"}, "exp": 4_102_444_800u64,
    }))?;
    for token in [
        "not-a-jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
        forged.as_str(),
    ] {
        let reply = env.post(Some(token), None, tools_list(1)).await?;
        assert_unauthorized(&reply, Some("invalid_token"));
    }
    // An expired token and one naming no agent are refused the same way.
    let expired = env.token_with(
        "alice@example.com",
        json!({"exp": 1_000_000, "iat": 999_000}),
    )?;
    assert_unauthorized(
        &env.post(Some(&expired), None, tools_list(1)).await?,
        Some("invalid_token"),
    );
    let no_agent = env.token_with("alice@example.com", json!({"act": null}))?;
    assert_unauthorized(
        &env.post(Some(&no_agent), None, tools_list(1)).await?,
        Some("invalid_token"),
    );
    Ok(())
}

#[tokio::test]
async fn token_for_another_audience_is_401() -> TestResult {
    let env = Env::new().await?;
    for aud in [
        json!("http://other.example/mcp"),
        json!(["x", "y"]),
        json!(format!("{PUBLIC_URL}/api")),
    ] {
        let token = env.token_with("alice@example.com", json!({"aud": aud}))?;
        let reply = env.post(Some(&token), None, tools_list(1)).await?;
        assert_unauthorized(&reply, Some("invalid_token"));
    }
    Ok(())
}

#[tokio::test]
async fn call_outside_the_scope_is_403_insufficient_scope() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    let before = env.audited();
    let reply = env
        .post(
            Some(&token),
            None,
            tools_call(7, "bank.transfer", json!({"amount": 10, "to": "x"})),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let challenge = reply.header(header::WWW_AUTHENTICATE);
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"bank.transfer\""),
        "{challenge}"
    );
    let error = reply.error(&json!(7)).ok_or("no error for id 7")?;
    assert_eq!(error.get("code"), Some(&json!(-32003)), "{error}");
    let data = error.get("data").ok_or("no data")?;
    assert_eq!(data.get("reason"), Some(&json!("insufficient_scope")));
    assert_eq!(data.get("tool"), Some(&json!("bank.transfer")));
    assert!(
        data.get("decision_id").is_some_and(Value::is_string),
        "{data}"
    );
    // The refusal of an authenticated subject is evidence: audited.
    assert_eq!(env.audited(), before + 1);
    assert_eq!(env.gateway.metrics().scope_refusals.get(), 1);

    // Inside a batch, one call outside the scope refuses the whole request.
    let batch = format!(
        "[{},{}]",
        tools_list(1),
        tools_call(8, "mail.send", json!({}))
    );
    let reply = env.post(Some(&token), None, batch).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    for body in [
        &b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": "[..],
        &b"\x00\xff\xfe garbage"[..],
        &b""[..],
    ] {
        let reply = env.post(Some(&token), None, body.to_vec()).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        assert_eq!(
            reply.error_code(&Value::Null),
            Some(-32700),
            "{}",
            reply.text
        );
    }
    Ok(())
}

#[tokio::test]
async fn invalid_json_rpc_is_an_invalid_request() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    for body in [
        json!({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}),
        json!({"id": 1, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": 42}),
        json!({"jsonrpc": "2.0", "id": {"nested": true}, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 1}),
        json!([]),
        json!(42),
        json!("tools/list"),
        Value::Null,
    ] {
        let reply = env.post(Some(&token), None, body.to_string()).await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert_eq!(
            reply.error_code(&Value::Null),
            Some(-32600),
            "{body}: {}",
            reply.text
        );
    }
    Ok(())
}

#[tokio::test]
async fn malformed_tools_call_params_are_invalid_params() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    let before = env.audited();
    for (id, params) in [
        (20, json!("docs.search")),
        (21, json!({"arguments": {"query": "x"}})),
        (22, json!({"name": 7, "arguments": {}})),
        (23, json!({"name": "docs.search", "arguments": "query=x"})),
        (24, json!({"name": "docs.search", "arguments": [1, 2]})),
    ] {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        let reply = env.post(Some(&token), None, body.to_string()).await?;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text);
        assert_eq!(
            reply.error_code(&json!(id)),
            Some(-32602),
            "{body}: {}",
            reply.text
        );
    }
    // Malformed requests decide nothing, so they record nothing.
    assert_eq!(env.audited(), before);
    Ok(())
}

#[tokio::test]
async fn body_over_the_limit_is_413() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    let big = tools_call(
        3,
        "docs.search",
        json!({"query": "A".repeat(MAX_BODY + 10)}),
    );
    let reply = env.post(Some(&token), None, big).await?;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.error_code(&Value::Null),
        Some(-32600),
        "{}",
        reply.text
    );
    // The rest of the body was never read: the connection must close.
    assert_eq!(reply.header(header::CONNECTION), "close");
    // Without a Content-Length (a stream of chunks), the limit still holds.
    let chunks = futures_chunks(tools_call(
        4,
        "docs.search",
        json!({"query": "B".repeat(2 * MAX_BODY)}),
    ));
    let req = Request::post("/mcp")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, MCP_ACCEPT)
        .body(chunks)?;
    let reply = env.send(req).await?;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    Ok(())
}

/// A body streamed in 1 KiB chunks, with no length known up front.
fn futures_chunks(text: String) -> Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = text
        .into_bytes()
        .chunks(1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures::stream::iter(chunks))
}

#[tokio::test]
async fn session_of_another_subject_is_403() -> TestResult {
    let env = Env::new().await?;
    let alice = env.token("alice@example.com")?;
    let session = env.initialize(&alice).await?;
    // alice's own session works.
    let reply = env
        .post(Some(&alice), Some(&session), tools_list(2))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(
        reply.messages.iter().any(|m| m.get("result").is_some()),
        "{}",
        reply.text
    );

    let before = env.audited();
    for other in [
        env.token("mallory@example.com")?,
        // Same user, another Mandate session (`sid`): another subject too.
        env.token_with("alice@example.com", json!({"sid": "another"}))?,
        // Same user and session, another agent.
        env.token_with("alice@example.com", json!({"act": {"sub": "other-agent"}}))?,
    ] {
        let reply = env
            .post(Some(&other), Some(&session), tools_list(3))
            .await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
        assert_eq!(
            reply.error_code(&Value::Null),
            Some(-32003),
            "{}",
            reply.text
        );
        assert!(
            reply.text.contains("belongs to another subject"),
            "{}",
            reply.text
        );
    }
    assert_eq!(env.audited(), before + 3);
    assert_eq!(env.gateway.metrics().session_refusals.get(), 3);
    // Deleting it is refused too, and alice's session survives.
    let req = Request::delete("/mcp")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", env.token("mallory@example.com")?),
        )
        .header("mcp-session-id", &session)
        .body(Body::empty())?;
    assert_eq!(env.send(req).await?.status, StatusCode::FORBIDDEN);
    let reply = env
        .post(Some(&alice), Some(&session), tools_list(4))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    Ok(())
}

#[tokio::test]
async fn unknown_session_is_404() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    let reply = env
        .post(Some(&token), Some("no-such-session"), tools_list(1))
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    // Its own code: -32001 is "unauthenticated" and nothing else.
    assert_eq!(
        reply.error_code(&Value::Null),
        Some(-32005),
        "{}",
        reply.text
    );
    Ok(())
}

#[tokio::test]
async fn unknown_tool_is_invalid_params_not_a_denial() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice@example.com")?;
    let session = env.initialize(&token).await?;
    let before = env.audited();
    // In scope (`nosuch.*`), but no upstream of that name exists.
    let reply = env
        .post(
            Some(&token),
            Some(&session),
            tools_call(9, "nosuch.tool", json!({})),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let error = reply.error(&json!(9)).ok_or("no error for id 9")?;
    assert_eq!(error.get("code"), Some(&json!(-32602)), "{error}");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(message.contains("unknown tool"), "{message}");
    // The agent can tell it apart from a denial, and it is still recorded.
    assert_ne!(error.get("code"), Some(&json!(-32003)));
    assert_eq!(env.audited(), before + 1);
    Ok(())
}

/// A real MCP server (rmcp) with one read tool, `lookup`, served over
/// Streamable HTTP until `stop` fires.
#[derive(Clone)]
struct Lookup;

impl rmcp::ServerHandler for Lookup {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _ctx: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let schema = json!({"type": "object", "properties": {"key": {"type": "string"}}});
        let schema = schema.as_object().cloned().unwrap_or_default();
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![
            rmcp::model::Tool::new("lookup", "Looks a key up.", schema),
        ]))
    }

    async fn call_tool(
        &self,
        _params: rmcp::model::CallToolRequestParams,
        _ctx: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        Ok(rmcp::model::CallToolResponse::Complete(
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text("found")]),
        ))
    }
}

/// Serves [`Lookup`] on a loopback port; the sender stops accepting
/// connections (and closes idle ones).
async fn lookup_server()
-> Result<(String, tokio::sync::oneshot::Sender<()>), Box<dyn std::error::Error>> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = StreamableHttpService::new(
        || Ok(Lookup),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = Router::new().nest_service("/mcp", service);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((format!("http://{addr}/mcp"), stop))
}

/// An upstream that went away after its catalogue was read: the agent
/// gets "upstream unavailable" with the correlation id, never the
/// transport's words, the OS error or the upstream's address; those are
/// in the call's outcome record.
#[tokio::test]
async fn an_unreachable_upstream_leaks_no_internals_to_the_agent() -> TestResult {
    let (url, stop) = lookup_server().await?;
    let mut flaky = upstream("flaky", &[("lookup", ToolClass::Read)]);
    flaky.transport = Transport::Http {
        url: url.clone(),
        headers: BTreeMap::new(),
    };
    let env = Env::with_upstreams(vec![flaky]).await?;
    let token = env.token_with("alice@example.com", json!({"scope": "flaky.*"}))?;
    let session = env.initialize(&token).await?;
    // The catalogue is read (and cached) while the upstream is up.
    let listed = env
        .post(Some(&token), Some(&session), tools_list(1))
        .await?;
    assert!(listed.text.contains("flaky.lookup"), "{}", listed.text);

    // The upstream goes away: nothing listens on its port any more.
    let _ = stop.send(());
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&authority).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reply = env
        .post(
            Some(&token),
            Some(&session),
            tools_call(2, "flaky.lookup", json!({"key": "k"})),
        )
        .await?;
    let error = reply
        .error(&json!(2))
        .ok_or(format!("no error: {}", reply.text))?;
    assert_eq!(error.get("code"), Some(&json!(-32004)), "{error}");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(message.starts_with("upstream unavailable"), "{message}");
    let correlation = error
        .pointer("/data/correlation_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    assert!(
        !correlation.is_empty() && message.contains(&correlation),
        "{error}"
    );
    for internal in [
        "os error",
        "Connection refused",
        "connection refused",
        "error sending request",
        "tcp connect",
        url.as_str(),
        authority.as_str(),
    ] {
        assert!(
            !reply.text.contains(internal),
            "{internal:?} reached the agent: {}",
            reply.text
        );
    }

    // The detail is kept: the outcome record of that call says what failed.
    let store = env.gateway.audit().store().clone();
    let mut detail = None;
    for _ in 0..100 {
        let records = mandate_audit::read_records(store.clone(), None)?;
        detail = records
            .iter()
            .map(|r| &r.record)
            .find(|r| r.correlation_id.as_str() == correlation && r.outcome.is_some())
            .map(|r| (r.outcome.clone(), r.detail.clone()));
        if detail.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (outcome, detail) = detail.ok_or("no outcome record for the call")?;
    assert_eq!(outcome.as_deref(), Some("upstream_unavailable"));
    let detail = detail.unwrap_or_default();
    assert!(detail.contains(&authority), "outcome detail: {detail}");
    Ok(())
}

/// No sticky routing (F-04 kept): a transport session opened on one
/// gateway is carried on by another that shares its control store, as
/// replicas behind a load balancer do (or the same process after a
/// restart), for the subject it is bound to only.
#[tokio::test]
async fn a_session_opened_on_one_replica_carries_on_on_another_for_its_subject_only() -> TestResult
{
    let a = Env::new().await?;
    let b = a.replica("b").await?;
    let alice = a.token("alice@example.com")?;
    let session = a.initialize(&alice).await?;
    let ping = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string();

    // Another subject presenting it on B: refused as foreign, not taken over.
    let mallory = b.token("mallory@example.com")?;
    let foreign = b.post(Some(&mallory), Some(&session), ping(1)).await?;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text);
    // Nor by alice's user with another Mandate session (sid).
    let other_sid = b.token_with("alice@example.com", json!({"sid": "sid-other"}))?;
    let foreign = b.post(Some(&other_sid), Some(&session), ping(2)).await?;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text);
    let stats = &b.gateway.metrics().sessions;
    assert_eq!(
        stats.taken_over.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Its own subject: answered on B without a new handshake.
    let pong = b.post(Some(&alice), Some(&session), ping(3)).await?;
    assert_eq!(pong.status, StatusCode::OK, "{}", pong.text);
    assert!(
        pong.messages
            .iter()
            .any(|m| m.get("id") == Some(&json!(3)) && m.get("result").is_some()),
        "{}",
        pong.text
    );
    assert_eq!(
        stats.taken_over.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // And again on A, where it was opened.
    let pong = a.post(Some(&alice), Some(&session), ping(4)).await?;
    assert_eq!(pong.status, StatusCode::OK, "{}", pong.text);

    // Closed by its client on B: no replica carries it on any more.
    let mut close = Request::builder()
        .method(Method::DELETE)
        .uri("/mcp")
        .header(header::AUTHORIZATION, format!("Bearer {alice}"))
        .header("mcp-session-id", &session)
        .body(Body::empty())?;
    close.headers_mut().insert(
        "mcp-protocol-version",
        http::HeaderValue::from_static("2025-06-18"),
    );
    let closed = b.send(close).await?;
    assert!(closed.status.is_success(), "{closed:?}");
    let c = a.replica("c").await?;
    let gone = c.post(Some(&alice), Some(&session), ping(5)).await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);

    // A session id nobody opened: 404, as before.
    let unknown = b
        .post(Some(&alice), Some("no-such-session"), ping(6))
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    Ok(())
}

fn held_call_request(tool: &str, deadline_ms: i64) -> mandate_control::NewApproval {
    mandate_control::NewApproval {
        sub: "alice@example.com".into(),
        act: vec!["assistant".into()],
        build: None,
        task_id: None,
        session: "sid:orphan-test".into(),
        tool: tool.into(),
        class: "financial".into(),
        args: json!({"amount": 75}),
        args_hash: format!("hash-of-{tool}"),
        policies: vec!["high-impact".into()],
        reasons: vec!["a person approves payments".into()],
        taint: Vec::new(),
        untrusted_sources: Vec::new(),
        decision_id: format!("decision-{tool}"),
        correlation_id: format!("correlation-{tool}"),
        deadline_ms,
        holder: "a-replica-that-died".into(),
    }
}

/// A replica killed while holding a call leaves its approval request
/// pending with nobody waiting on it: the sweep withdraws it once its
/// grace has passed (approving it would release nothing), and leaves
/// alone a request whose holder still marks it as held, until the mark
/// lapses.
#[tokio::test]
async fn an_approval_request_no_process_holds_is_withdrawn_by_the_sweep() -> TestResult {
    use mandate_control::ApprovalStatus;
    use mandate_control::ephemeral::{Kind, OnFull};
    let manual = mandate_core::ManualClock::at_ms(1_900_000_000_000);
    let env = Env::with_clock(manual.clock()).await?;
    let control = env.gateway.control().clone();
    let deadline = manual.clock().now_ms() + 3_600_000;
    let orphan = control
        .create_approval(held_call_request("bank.transfer", deadline))
        .await?;
    let held = control
        .create_approval(held_call_request("bank.close_account", deadline))
        .await?;

    manual.advance(Duration::from_secs(5));
    assert_eq!(
        env.gateway.sweep_orphaned_holds().await,
        0,
        "a request just created is not taken for an orphan"
    );

    manual.advance(Duration::from_secs(60));
    let mark_until = manual.clock().now_ms() + 20_000;
    assert!(
        control
            .put_ephemeral(
                Kind::HeldCall,
                &held.id,
                String::new(),
                mark_until,
                8,
                OnFull::Refuse
            )
            .await?
    );
    assert_eq!(env.gateway.sweep_orphaned_holds().await, 1);
    assert_eq!(
        control.approval(&orphan.id).await?.status,
        ApprovalStatus::Withdrawn
    );
    assert_eq!(
        control.approval(&held.id).await?.status,
        ApprovalStatus::Pending,
        "a request whose holder renews its mark stays"
    );
    let metrics = env
        .gateway
        .metrics()
        .render(mandate_gateway::MetricsFormat::Prometheus);
    assert!(
        metrics.contains("mandate_approvals_orphaned_total 1"),
        "{metrics}"
    );

    // The holder stops renewing (it died too): withdrawn once the mark lapses.
    manual.advance(Duration::from_secs(21));
    assert_eq!(env.gateway.sweep_orphaned_holds().await, 1);
    assert_eq!(
        control.approval(&held.id).await?.status,
        ApprovalStatus::Withdrawn
    );
    Ok(())
}
