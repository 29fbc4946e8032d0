//! A real gateway for the JSON-RPC entry target: the quickstart Cedar
//! policies, a SQLite audit log and control store (on tmpfs), the fixture
//! issuer, and one upstream that is configured but unreachable (so calls in
//! scope go through resolution, policy and audit, and are then denied as
//! the catalogue cannot be read: nothing is ever forwarded).

use crate::{AUDIENCE, ISSUER, ISSUER_KID, ISSUER_PEM, PUBLIC_URL, finding, key, now};
use axum::body::Body;
use http::{Request, header};
use mandate_core::ToolClass;
use mandate_gateway::{
    ApprovalConfig, Gateway, GatewayConfig, Isolation, Transport, UpstreamConfig,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

/// The scope of the main fuzzing token.
pub const SCOPE: &str = "docs.* bank.get_balance";
/// The largest body the gateway accepts (small, so the limit is reachable).
pub const MAX_BODY: usize = 16 * 1024;
/// The `Host` every request carries (HTTP/1.1 requires one; rmcp refuses a
/// request without it).
pub const HOST: &str = "127.0.0.1:8943";
/// What MCP clients send as `Accept` on a POST.
pub const MCP_ACCEPT: &str = "application/json, text/event-stream";

/// A gateway, its router, tokens and two open transport sessions.
pub struct Harness {
    /// The gateway's HTTP routes.
    pub router: axum::Router,
    /// The gateway itself.
    pub gateway: Arc<Gateway>,
    /// alice's agent, scope [`SCOPE`].
    pub token: String,
    /// mallory's agent, scope [`SCOPE`].
    pub other_token: String,
    /// A transport session opened with `token`.
    pub session: Option<String>,
    /// A transport session opened with `other_token`.
    pub other_session: Option<String>,
    _dir: tempfile::TempDir,
}

/// A composite token from the fixture issuer.
pub fn mint(sub: &str, scope: &str, aud: &str) -> String {
    let now = now();
    key(ISSUER_PEM, ISSUER_KID)
        .sign(&serde_json::json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": aud,
            "act": {"sub": "assistant"},
            "scope": scope,
            "sid": format!("sid-{sub}"),
            "task_id": "t-1",
            "iat": now,
            "exp": now + 7 * 24 * 3600,
        }))
        .unwrap_or_else(|e| finding(format!("mint: {e}")))
}

fn config() -> GatewayConfig {
    let upstream = |name: &str, tools: &[(&str, ToolClass)]| UpstreamConfig {
        name: name.to_owned(),
        // Port 1 on loopback: nothing listens, connections are refused at once.
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
    };
    GatewayConfig {
        public_url: PUBLIC_URL.to_owned(),
        resource: AUDIENCE.to_owned(),
        authorization_servers: vec![ISSUER.to_owned()],
        upstreams: vec![
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
        ],
        max_body_bytes: MAX_BODY,
        allowed_hosts: Vec::new(),
        allowed_origins: vec![PUBLIC_URL.to_owned()],
        operators: Vec::new(),
        approvals: ApprovalConfig {
            timeout: Duration::from_secs(1),
            ..ApprovalConfig::default()
        },
        change_gate: false,
        limits: Default::default(),
        redaction: Default::default(),
    }
}

impl Harness {
    /// Builds the gateway and opens one transport session per subject.
    pub async fn new() -> Self {
        let dir = crate::scratch_dir();
        let jwks = crate::write_jwks(dir.path());
        let authn = crate::authenticator(&jwks, AUDIENCE, true).await;
        let operator_authn = crate::authenticator(&jwks, &format!("{PUBLIC_URL}/api"), false).await;
        let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/quickstart/policies");
        let policy = mandate_policy::PolicyEngine::load_dir(&policies)
            .unwrap_or_else(|e| finding(format!("policies: {e}")));
        let audit = mandate_audit::AuditLog::open_sqlite(&dir.path().join("audit.sqlite"))
            .unwrap_or_else(|e| finding(format!("audit: {e}")));
        let control = mandate_control::ControlStore::open(&dir.path().join("control.sqlite"))
            .unwrap_or_else(|e| finding(format!("control: {e}")));
        let gateway = Gateway::new(
            config(),
            mandate_gateway::Planes {
                authn: Arc::new(authn),
                operator_authn: Arc::new(operator_authn),
                policy: Arc::new(policy),
                audit,
                control: Arc::new(control),
                clock: mandate_core::Clock::system(),
            },
        );
        let router = mandate_gateway::http::router(gateway.clone());
        let token = mint("alice@example.com", SCOPE, AUDIENCE);
        let other_token = mint("mallory@example.com", SCOPE, AUDIENCE);
        let mut h = Self {
            router,
            gateway,
            token,
            other_token,
            session: None,
            other_session: None,
            _dir: dir,
        };
        h.session = h.initialize(&h.token.clone()).await;
        h.other_session = h.initialize(&h.other_token.clone()).await;
        if h.session.is_none() || h.other_session.is_none() {
            finding("the harness could not open its transport sessions");
        }
        h
    }

    /// Opens a transport session (`initialize`, then `initialized`).
    pub async fn initialize(&self, token: &str) -> Option<String> {
        let init = serde_json::json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "0"}
            }
        });
        let resp = self.post(token, None, &init).await?;
        let id = resp
            .headers()
            .get("mcp-session-id")?
            .to_str()
            .ok()?
            .to_owned();
        let _ = axum::body::to_bytes(resp.into_body(), MAX_BODY).await;
        let done = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(token, Some(&id), &done).await?;
        Some(id)
    }

    async fn post(
        &self,
        token: &str,
        session: Option<&str>,
        body: &serde_json::Value,
    ) -> Option<http::Response<Body>> {
        let mut req = Request::post("/mcp")
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, MCP_ACCEPT);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let req = req.body(Body::from(body.to_string())).ok()?;
        self.router.clone().oneshot(req).await.ok()
    }
}
