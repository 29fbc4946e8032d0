//! The operator plane in process, without sockets: a real [`Gateway`]
//! (the quickstart Cedar policies, a SQLite audit log and control store in
//! a temporary directory, a development token issuer) behind
//! [`mandate_operator::router`], driven with `oneshot`.
//!
//! One test per refusal or effect an operator request can meet: the
//! status, the `{"error", "error_description"}` body, the challenge, and
//! that whatever was decided for a verified subject is on the record
//! before it took effect.

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode, header};
use mandate_audit::{AuditLog, StoredRecord};
use mandate_authn::dev::DevKey;
use mandate_authn::{Authenticator, AuthnConfig, IssuerConfig, JwksSource};
use mandate_control::ControlStore;
use mandate_core::{Effect, RecordKind};
use mandate_gateway::{ApprovalConfig, Gateway, GatewayConfig, OperatorConfig, Planes, Role};
use mandate_policy::PolicyEngine;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt as _;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ISSUER: &str = "mandate-dev";
const PUBLIC_URL: &str = "http://127.0.0.1:8943";
const API_AUDIENCE: &str = "http://127.0.0.1:8943/api";

/// A gateway with its planes, the operator plane's router, and the issuer
/// of everyone's tokens.
struct Env {
    router: Router,
    gateway: Arc<Gateway>,
    issuer: DevKey,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn error(&self) -> &str {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

fn operator(sub: &str, role: Role) -> OperatorConfig {
    OperatorConfig {
        sub: sub.to_owned(),
        issuer: None,
        roles: BTreeSet::from([role]),
        approve_classes: BTreeSet::new(),
    }
}

impl Env {
    async fn new() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let issuer = mandate_authn::dev::generate_ed25519()?;
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks_json())?;
        let authenticator = |audience: &str, require_actor: bool| {
            let mut cfg = AuthnConfig::new(
                vec![IssuerConfig {
                    issuer: ISSUER.to_owned(),
                    jwks: JwksSource::File(jwks.clone()),
                }],
                audience.to_owned(),
            );
            cfg.require_actor = require_actor;
            Authenticator::new(cfg)
        };
        let authn = authenticator("http://127.0.0.1:8943/mcp", true).await?;
        let operator_authn = authenticator(API_AUDIENCE, false).await?;
        let policy = PolicyEngine::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/quickstart/policies"),
        )?;
        let audit = AuditLog::open_sqlite(&dir.path().join("audit.sqlite"))?;
        let control = ControlStore::open(&dir.path().join("control.sqlite"))?;
        let cfg = GatewayConfig {
            public_url: PUBLIC_URL.to_owned(),
            resource: "http://127.0.0.1:8943/mcp".to_owned(),
            authorization_servers: vec![ISSUER.to_owned()],
            upstreams: Vec::new(),
            max_body_bytes: 8 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            operators: vec![
                operator("alice", Role::Admin),
                operator("bob", Role::Approver),
            ],
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
                clock: mandate_core::Clock::system(),
            },
        );
        Ok(Self {
            router: mandate_operator::router(gateway.clone(), &Default::default()),
            gateway,
            issuer,
            _dir: dir,
        })
    }

    /// An operator token for `sub`, with these claims changed or added.
    fn token(&self, sub: &str, overrides: Value) -> Result<String, Box<dyn std::error::Error>> {
        let now = self.gateway.clock().now_secs();
        let mut claims = json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": API_AUDIENCE,
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

    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Reply, Box<dyn std::error::Error>> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8943");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string()))?,
            None => req.body(Body::empty())?,
        };
        let resp = self.router.clone().oneshot(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1024 * 1024).await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The records of operator `sub` (control decisions and their
    /// outcomes), in order.
    fn records_of(&self, sub: &str) -> Result<Vec<StoredRecord>, Box<dyn std::error::Error>> {
        Ok(mandate_audit::read_records(
            self.gateway.audit().store().clone(),
            Some(&format!("operator:{sub}")),
        )?)
    }
}

/// Without a token nothing is read, and the client is told how to
/// authenticate (RFC 6750 §3) and not to cache the answer.
#[tokio::test]
async fn no_operator_token_is_refused_with_a_challenge() -> TestResult {
    let env = Env::new().await?;
    let reply = env
        .send(Method::GET, "/api/revocations", None, None)
        .await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error(), "invalid_token");
    assert!(
        reply
            .header(header::WWW_AUTHENTICATE)
            .starts_with("Bearer realm=\"mandate-api\""),
        "{}",
        reply.header(header::WWW_AUTHENTICATE)
    );
    assert_eq!(reply.header(header::CACHE_CONTROL), "no-store");
    Ok(())
}

/// A correctly signed agent token (with `act`) never operates Mandate,
/// and the attempt is on the record.
#[tokio::test]
async fn an_agent_token_cannot_operate_and_is_recorded() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice", json!({"act": {"sub": "assistant"}}))?;
    let reply = env
        .send(Method::GET, "/api/revocations", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error(), "forbidden");
    let records = env.records_of("alice")?;
    let refused = records
        .iter()
        .find(|r| r.record.tool == "control/revocations.list")
        .ok_or("the refusal was not recorded")?;
    assert_eq!(refused.record.decision.effect, Effect::Deny);
    Ok(())
}

/// An operator without the admin role cannot pull a kill switch; the
/// refusal is recorded and nothing changes.
#[tokio::test]
async fn an_approver_cannot_revoke() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("bob", json!({}))?;
    let body = json!({"kind": "user", "value": "mallory"});
    let reply = env
        .send(Method::POST, "/api/revocations", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        reply.body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("lacks the admin role")),
        "{}",
        reply.body
    );
    assert!(
        env.records_of("bob")?
            .iter()
            .any(|r| r.record.tool == "control/revoke" && r.record.decision.effect == Effect::Deny)
    );
    assert!(env.gateway.control().revocations(true).await?.is_empty());
    Ok(())
}

/// An admin's kill switch is decided and recorded before it takes effect,
/// and its outcome is recorded after.
#[tokio::test]
async fn an_admin_revokes_on_the_record() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice", json!({}))?;
    let body = json!({"kind": "user", "value": "mallory", "reason": "test"});
    let reply = env
        .send(Method::POST, "/api/revocations", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let revoke: Vec<_> = env
        .records_of("alice")?
        .into_iter()
        .filter(|r| r.record.tool == "control/revoke")
        .collect();
    let [decided, outcome] = revoke.as_slice() else {
        return Err(format!("expected a decision and an outcome, got {}", revoke.len()).into());
    };
    assert_eq!(decided.record.kind, RecordKind::Control);
    assert_eq!(decided.record.decision.effect, Effect::Allow);
    assert_eq!(
        decided.record.decision.policies,
        vec!["operator-role:admin".to_owned()]
    );
    assert_eq!(
        decided.record.decision.policy_hash,
        env.gateway.policy().policy_hash()
    );
    assert!(decided.seq < outcome.seq);
    assert_eq!(outcome.record.kind, RecordKind::Outcome);
    assert_eq!(outcome.record.outcome.as_deref(), Some("ok"));
    assert_eq!(env.gateway.control().revocations(false).await?.len(), 1);
    Ok(())
}

/// A decision on the approval page needs a signed-in session: a bearer
/// token is not read there at all.
#[tokio::test]
async fn the_approval_page_ignores_bearer_tokens() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("bob", json!({}))?;
    let reply = env
        .send(
            Method::POST,
            "/approvals/requests/apr-1/approve",
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error(), "unauthenticated");
    assert!(
        reply
            .header(header::CONTENT_SECURITY_POLICY)
            .contains("frame-ancestors 'none'")
    );
    assert!(env.records_of("bob")?.is_empty());
    Ok(())
}
