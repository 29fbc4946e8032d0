//! The operator plane in process, without sockets: a real [`Gateway`]
//! (the quickstart Cedar policies, a SQLite audit log and control store in
//! a temporary directory, a development token issuer) behind
//! [`mandate_operator::router`], driven with `oneshot`.
//!
//! One test per refusal or effect an operator request can meet: the
//! status, the `{"error", "error_description"}` body, the challenge, and
//! that whatever was decided for a verified subject is on the record
//! before it took effect. The task API (`/api/tasks`) runs against a real
//! delegation broker on the same stores.

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode, header};
use mandate_audit::{AuditLog, StoredRecord};
use mandate_authn::dev::DevKey;
use mandate_authn::{Authenticator, AuthnConfig, IssuerConfig, JwksSource};
use mandate_broker::{Broker, BrokerConfig, TaskApi, TaskTemplate};
use mandate_control::ControlStore;
use mandate_core::{CallerData, Effect, RecordKind, Scope};
use mandate_gateway::{ApprovalConfig, Gateway, GatewayConfig, OperatorConfig, Planes, Role};
use mandate_policy::PolicyEngine;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
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
    dir: tempfile::TempDir,
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
    /// No broker: no task API.
    async fn new() -> Result<Self, Box<dyn std::error::Error>> {
        Self::build(false).await
    }

    /// With a delegation broker (one task template, `research`) on the
    /// gateway's audit log and control store.
    async fn with_tasks() -> Result<Self, Box<dyn std::error::Error>> {
        Self::build(true).await
    }

    async fn build(with_broker: bool) -> Result<Self, Box<dyn std::error::Error>> {
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
        let tasks = if with_broker {
            Some(broker(&gateway, dir.path()).await?)
        } else {
            None
        };
        Ok(Self {
            router: mandate_operator::router(gateway.clone(), &Default::default(), tasks),
            gateway,
            issuer,
            dir,
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

/// A broker with one task template (`research`: `docs.*`, an hour) on
/// the gateway's audit log and control store, as `mandate serve` wires it.
async fn broker(
    gateway: &Gateway,
    dir: &std::path::Path,
) -> Result<TaskApi, Box<dyn std::error::Error>> {
    let cfg = BrokerConfig {
        issuer: "http://127.0.0.1:8943".into(),
        resources: vec!["http://127.0.0.1:8943/mcp".into()],
        key_dir: dir.join("broker-keys"),
        key_algorithm: mandate_authn::Algorithm::EdDSA,
        max_token_ttl: Duration::from_secs(600),
        max_delegation_depth: 2,
        leeway_secs: 5,
        subject_issuers: Vec::new(),
        entitlements: Default::default(),
        agents: BTreeMap::new(),
        templates: BTreeMap::from([(
            "research".to_owned(),
            TaskTemplate {
                scope: Scope::parse("docs.*"),
                max_duration: Duration::from_secs(3600),
                agents: BTreeSet::new(),
            },
        )]),
        spiffe: None,
        dpop_require_nonce: false,
        sign_in: None,
    };
    let broker = Broker::new(cfg, gateway.audit().clone(), gateway.control().clone()).await?;
    Ok(TaskApi::new(Arc::new(broker)))
}

/// A token the broker minted for task `task`, as the gateway sees it.
fn task_token(task: &str) -> CallerData {
    CallerData {
        iss: "http://127.0.0.1:8943".into(),
        sub: "carol".into(),
        act: vec!["assistant".into()],
        scope: Scope::parse("docs.*"),
        task_id: Some(task.into()),
        build: None,
        sid: Some("sid-1".into()),
        jti: Some("jti-1".into()),
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

// ----- the task API ----------------------------------------------------------

/// Without a broker there is no task API: `/api/tasks` is not a route.
#[tokio::test]
async fn without_a_broker_there_is_no_task_api() -> TestResult {
    let env = Env::new().await?;
    let token = env.token("alice", json!({}))?;
    let reply = env
        .send(Method::GET, "/api/tasks", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let body = json!({"template": "research", "sub": "carol"});
    let reply = env
        .send(Method::POST, "/api/tasks", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(env.records_of("alice")?.is_empty());
    Ok(())
}

/// An admin starts, lists and completes a task; each change is decided
/// and recorded before it happens, its outcome after; completing it
/// revokes the tokens minted for it, and a task ends once.
#[tokio::test]
async fn an_admin_starts_lists_and_completes_a_task_on_the_record() -> TestResult {
    let env = Env::with_tasks().await?;
    let token = env.token("alice", json!({}))?;
    let body = json!({"template": "research", "sub": "carol", "id": "t-1"});
    let reply = env
        .send(Method::POST, "/api/tasks", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["id"], "t-1");
    assert_eq!(reply.body["status"], "active");
    assert_eq!(reply.body["template"], "research");
    assert_eq!(reply.body["sub"], "carol");
    assert_eq!(reply.body["started_by"], "alice");
    assert!(reply.body.get("intent").is_none(), "{}", reply.body);

    let started: Vec<_> = env
        .records_of("alice")?
        .into_iter()
        .filter(|r| r.record.tool == "broker/task.start")
        .collect();
    let [decided, outcome] = started.as_slice() else {
        return Err(format!("expected a decision and an outcome, got {}", started.len()).into());
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
    assert_eq!(outcome.record.outcome.as_deref(), Some("ok"));

    let reply = env
        .send(Method::GET, "/api/tasks", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["tasks"][0]["id"], "t-1");

    let minted = task_token("t-1");
    assert!(env.gateway.control().check(&minted.caller()).is_none());
    let reply = env
        .send(Method::POST, "/api/tasks/t-1/complete", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "completed");
    assert_eq!(reply.body["ended_by"], "alice");
    assert!(env.gateway.control().check(&minted.caller()).is_some());
    assert!(
        env.records_of("alice")?
            .iter()
            .any(|r| r.record.tool == "broker/task.complete"
                && r.record.decision.effect == Effect::Allow)
    );

    let reply = env
        .send(Method::GET, "/api/tasks", Some(&token), None)
        .await?;
    assert_eq!(reply.body["tasks"], json!([]));
    let reply = env
        .send(Method::GET, "/api/tasks?all=true", Some(&token), None)
        .await?;
    assert_eq!(reply.body["tasks"][0]["status"], "completed");

    let reply = env
        .send(Method::POST, "/api/tasks/t-1/cancel", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert_eq!(reply.error(), "conflict");
    Ok(())
}

/// A task started with an intent has it judged and recorded (no judge
/// here: every grant waits for the user's one approval); cancelling it
/// revokes its tokens.
#[tokio::test]
async fn a_task_with_an_intent_is_started_then_cancelled() -> TestResult {
    let env = Env::with_tasks().await?;
    let token = env.token("alice", json!({}))?;
    let intent = json!([{"type": "mandate_tool_call", "tool": "docs.send_mail",
                         "arguments": {"to": {"one_of": ["bob@example.com"]}}, "max_uses": 1}]);
    let body = json!({"template": "research", "sub": "carol", "authorization_details": intent});
    let reply = env
        .send(Method::POST, "/api/tasks", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().ok_or("no task id")?.to_owned();
    assert!(id.starts_with("task-"), "{id}");
    let recorded = &reply.body["intent"];
    assert_eq!(recorded["grants"][0]["status"], "pending", "{recorded}");
    assert!(recorded["approval_id"].is_string(), "{recorded}");
    assert_eq!(recorded["requested_by"], "alice");
    let start = env
        .records_of("alice")?
        .into_iter()
        .find(|r| r.record.tool == "broker/task.start")
        .ok_or("the start was not recorded")?;
    let detail: Value = serde_json::from_str(start.record.detail.as_deref().unwrap_or("{}"))?;
    assert_eq!(detail["intent_hash"], recorded["intent_hash"], "{detail}");

    let reply = env
        .send(
            Method::POST,
            &format!("/api/tasks/{id}/cancel"),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");
    assert!(
        env.gateway
            .control()
            .check(&task_token(&id).caller())
            .is_some()
    );
    Ok(())
}

/// A start request is checked before anything is recorded or started:
/// an unknown template, a missing user, an invalid intent; an unknown
/// action is not a route of the API.
#[tokio::test]
async fn a_bad_task_request_changes_nothing() -> TestResult {
    let env = Env::with_tasks().await?;
    let token = env.token("alice", json!({}))?;
    for (body, says) in [
        (
            json!({"template": "nope", "sub": "carol"}),
            "no task template",
        ),
        (json!({"template": "research", "sub": " "}), "sub must name"),
        (
            json!({"template": "research", "sub": "carol",
                   "authorization_details": [{"type": "mandate_tool_call", "tool": "docs.send_mail", "locations": ["x"]}]}),
            "not a valid intent",
        ),
        (json!({"template": "research"}), "sub"),
    ] {
        let reply = env
            .send(Method::POST, "/api/tasks", Some(&token), Some(body))
            .await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert_eq!(reply.error(), "invalid_request");
        assert!(
            reply.body["error_description"]
                .as_str()
                .is_some_and(|d| d.contains(says)),
            "{}",
            reply.body
        );
    }
    let reply = env
        .send(Method::POST, "/api/tasks/t-1/pause", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error(), "not_found");
    let reply = env
        .send(Method::POST, "/api/tasks/t-9/complete", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert!(env.gateway.control().tasks(true).await?.is_empty());
    assert!(
        env.records_of("alice")?
            .iter()
            .all(|r| r.record.tool == "broker/task.complete"),
        "only the completion of the unknown task was decided"
    );
    Ok(())
}

/// An operator without the admin role manages no task; the refusal is
/// recorded and nothing changes.
#[tokio::test]
async fn an_approver_cannot_manage_tasks_and_is_recorded() -> TestResult {
    let env = Env::with_tasks().await?;
    let token = env.token("bob", json!({}))?;
    let body = json!({"template": "research", "sub": "carol", "id": "t-1"});
    let reply = env
        .send(Method::POST, "/api/tasks", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.error(), "forbidden");
    assert!(
        reply
            .header(header::WWW_AUTHENTICATE)
            .contains("error=\"insufficient_scope\""),
        "{}",
        reply.header(header::WWW_AUTHENTICATE)
    );
    let reply = env
        .send(Method::GET, "/api/tasks", Some(&token), None)
        .await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = env.send(Method::GET, "/api/tasks", None, None).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error(), "invalid_token");

    let refused: Vec<_> = env
        .records_of("bob")?
        .into_iter()
        .filter(|r| r.record.decision.effect == Effect::Deny)
        .map(|r| r.record.tool)
        .collect();
    assert_eq!(refused, ["broker/task.start", "broker/task.list"]);
    assert!(env.gateway.control().tasks(true).await?.is_empty());
    Ok(())
}

/// When the audit log cannot write, no task starts and none ends: the
/// operator is told 503 and the task's tokens stay as they were.
#[tokio::test]
async fn no_task_changes_when_the_audit_log_cannot_write() -> TestResult {
    let env = Env::with_tasks().await?;
    let token = env.token("alice", json!({}))?;
    let body = json!({"template": "research", "sub": "carol", "id": "t-1"});
    let reply = env
        .send(Method::POST, "/api/tasks", Some(&token), Some(body))
        .await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    // The store refuses every record from now on.
    let path = env.dir.path().join("audit.sqlite");
    rusqlite::Connection::open(&path)?.execute_batch(
        "CREATE TRIGGER refuse_all BEFORE INSERT ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END;",
    )?;

    let body = json!({"template": "research", "sub": "carol", "id": "t-2"});
    let reply = env
        .send(Method::POST, "/api/tasks", Some(&token), Some(body))
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.error(), "temporarily_unavailable");
    let reply = env
        .send(Method::POST, "/api/tasks/t-1/cancel", Some(&token), None)
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );

    let tasks = env.gateway.control().tasks(true).await?;
    assert_eq!(tasks.len(), 1);
    assert!(tasks.iter().all(|t| t.id == "t-1" && t.ended_by.is_none()));
    assert!(
        env.gateway
            .control()
            .check(&task_token("t-1").caller())
            .is_none()
    );
    Ok(())
}
