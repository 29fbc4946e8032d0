//! The broker's HTTP surface without a socket (axum `Router` + `oneshot`).

#[path = "../benches/fixture.rs"]
mod fixture;

use fixture::{Error, Fixture, ISSUER, RESOURCE, fixture};
use http::{Request, StatusCode};
use mandate_authn::Algorithm;
use mandate_broker::token_type::{ACCESS_TOKEN, ID_TOKEN};
use serde_json::{Value, json};
use tower::ServiceExt as _;

async fn post(
    f: &Fixture,
    path: &str,
    body: Vec<u8>,
    dpop: Option<&str>,
) -> Result<(StatusCode, Value), Error> {
    let mut req = Request::post(path).header("content-type", "application/x-www-form-urlencoded");
    if let Some(p) = dpop {
        req = req.header("dpop", p);
    }
    let resp = mandate_broker::router(f.broker.clone())
        .oneshot(req.body(axum::body::Body::from(body))?)
        .await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, v))
}

async fn exchange(
    f: &Fixture,
    agent: &str,
    subject: &str,
    subject_type: &str,
    extra: &[(&str, &str)],
) -> Result<(StatusCode, Value), Error> {
    let body = f.form(agent, subject, subject_type, extra)?;
    post(f, "/oauth2/token", body, None).await
}

fn error(v: &Value) -> &str {
    v.get("error").and_then(Value::as_str).unwrap_or("")
}

fn claims_of(token: &str) -> Result<Value, Error> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or("not a JWT")?;
    Ok(serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?,
    )?)
}

#[tokio::test]
async fn an_exchange_issues_a_narrowed_composite_token() -> Result<(), Error> {
    let f = fixture(Algorithm::EdDSA).await?;
    let user = f.user_token("alice", json!({}))?;
    let (status, body) = exchange(
        &f,
        "assistant",
        &user,
        ID_TOKEN,
        &[("scope", "docs.search bank.get_balance mail.send")],
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The template carries only docs.*: balance and mail are dropped.
    assert_eq!(body.get("scope"), Some(&json!("docs.search")));
    assert_eq!(body.get("token_type"), Some(&json!("Bearer")));
    assert_eq!(body.get("issued_token_type"), Some(&json!(ACCESS_TOKEN)));
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or("no token")?;
    let c = claims_of(token)?;
    assert_eq!(c.get("iss"), Some(&json!(ISSUER)));
    assert_eq!(c.get("aud"), Some(&json!(RESOURCE)));
    assert_eq!(c.get("act"), Some(&json!({"sub": "assistant"})));
    assert_eq!(c.get("task_id"), Some(&json!("task-1")));
    assert_eq!(c.get("client_id"), Some(&json!("assistant")));

    // The gateway's view: the broker's own keys verify it.
    let mut ac = mandate_authn::AuthnConfig::new(
        vec![mandate_authn::IssuerConfig {
            issuer: ISSUER.into(),
            jwks: mandate_authn::JwksSource::File(f.dir.path().join("keys/jwks.json")),
        }],
        RESOURCE,
    );
    ac.require_actor = true;
    let p = mandate_authn::Authenticator::new(ac)
        .await?
        .verify(token)
        .await?;
    assert_eq!(p.sub(), "alice");
    assert_eq!(p.act(), vec!["assistant".to_owned()]);

    // Every exchange is audited.
    let records = mandate_audit::read_records(&f.audit_path, None)?;
    assert!(
        records
            .iter()
            .any(|r| r.record.tool == "broker/token_exchange")
    );
    Ok(())
}

#[tokio::test]
async fn refusals_carry_the_rfc_error_codes() -> Result<(), Error> {
    let f = fixture(Algorithm::ES256).await?;
    let user = f.user_token("alice", json!({}))?;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "escalation",
            vec![("scope", "bank.transfer")],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "target",
            vec![("resource", "https://elsewhere.test")],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            "build",
            vec![("build", "ff")],
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
        ),
        (
            "no actor",
            vec![("actor_token", ""), ("actor_token_type", "")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "no task",
            vec![("task_id", "")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grant",
            vec![("grant_type", "client_credentials")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "no client auth",
            vec![("client_assertion", "")],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
    ];
    for (name, extra, status, code) in cases {
        let (s, body) = exchange(&f, "assistant", &user, ID_TOKEN, &extra).await?;
        assert_eq!((s, error(&body)), (status, code), "{name}: {body}");
        // Only the two RFC 6749 members, never an internal reason.
        assert!(
            body.as_object()
                .is_some_and(|o| o.keys().all(|k| k == "error" || k == "error_description"))
        );
    }
    // A subject token for another audience, and one the agent may not act for.
    let other = f.user_token("alice", json!({"aud": "other-app"}))?;
    let (_, body) = exchange(&f, "assistant", &other, ID_TOKEN, &[]).await?;
    assert_eq!(error(&body), "invalid_request");
    let may_act = f.user_token("alice", json!({"may_act": {"sub": "someone-else"}}))?;
    let (_, body) = exchange(&f, "assistant", &may_act, ID_TOKEN, &[]).await?;
    assert_eq!(error(&body), "invalid_request");
    // A user token that already names an actor: that chain was never
    // checked against any agent's delegation rights.
    let acted = f.user_token("alice", json!({"act": {"sub": "someone"}}))?;
    let (_, body) = exchange(&f, "assistant", &acted, ID_TOKEN, &[]).await?;
    assert_eq!(error(&body), "invalid_request");
    let bound = f.user_token("alice", json!({"cnf": {"jkt": "abc"}}))?;
    let (_, body) = exchange(&f, "assistant", &bound, ID_TOKEN, &[]).await?;
    assert_eq!(error(&body), "invalid_request");
    let stranger = f.user_token("mallory", json!({"groups": []}))?;
    let (_, body) = exchange(&f, "assistant", &stranger, ID_TOKEN, &[]).await?;
    assert_eq!(error(&body), "unauthorized_client");
    // Another agent's actor token.
    let theirs = f.actor("summariser")?;
    let (_, body) = exchange(
        &f,
        "assistant",
        &user,
        ID_TOKEN,
        &[("actor_token", &theirs)],
    )
    .await?;
    assert_eq!(error(&body), "invalid_request");
    Ok(())
}

#[tokio::test]
async fn a_client_assertion_is_single_use() -> Result<(), Error> {
    let f = fixture(Algorithm::EdDSA).await?;
    let user = f.user_token("alice", json!({}))?;
    let assertion = f.assertion("assistant")?;
    let body = f.form(
        "assistant",
        &user,
        ID_TOKEN,
        &[("client_assertion", &assertion)],
    )?;
    let (s, b) = post(&f, "/oauth2/token", body.clone(), None).await?;
    assert_eq!(s, StatusCode::OK, "{b}");
    let body = f.form(
        "assistant",
        &user,
        ID_TOKEN,
        &[("client_assertion", &assertion)],
    )?;
    let (s, b) = post(&f, "/oauth2/token", body, None).await?;
    assert_eq!((s, error(&b)), (StatusCode::UNAUTHORIZED, "invalid_client"));
    Ok(())
}

#[tokio::test]
async fn sub_delegation_nests_act_narrows_and_is_bounded() -> Result<(), Error> {
    let f = fixture(Algorithm::EdDSA).await?;
    let user = f.user_token("alice", json!({}))?;
    let (_, parent) = exchange(&f, "assistant", &user, ID_TOKEN, &[("scope", "docs.*")]).await?;
    let parent = parent
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or("no token")?
        .to_owned();
    let (s, child) = exchange(
        &f,
        "summariser",
        &parent,
        ACCESS_TOKEN,
        &[("task_template", "")],
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{child}");
    let token = child
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or("no token")?;
    let c = claims_of(token)?;
    assert_eq!(
        c.get("act"),
        Some(&json!({"sub": "summariser", "act": {"sub": "assistant"}}))
    );
    assert_eq!(c.get("scope"), Some(&json!("docs.search")));
    // Widening is refused.
    let (_, wide) = exchange(
        &f,
        "summariser",
        &parent,
        ACCESS_TOKEN,
        &[
            ("scope", "docs.search bank.get_balance"),
            ("task_template", ""),
        ],
    )
    .await?;
    assert_eq!(error(&wide), "invalid_scope");
    // Depth 2 reached: the child's token cannot be delegated again.
    let (_, deeper) = exchange(
        &f,
        "assistant",
        token,
        ACCESS_TOKEN,
        &[("task_template", "")],
    )
    .await?;
    assert_eq!(error(&deeper), "invalid_request");
    // The assistant may not delegate to `stranger`.
    let (_, stray) = exchange(
        &f,
        "stranger",
        &parent,
        ACCESS_TOKEN,
        &[("task_template", "")],
    )
    .await?;
    assert_eq!(error(&stray), "unauthorized_client");
    Ok(())
}

#[tokio::test]
async fn dpop_binds_the_token_to_the_proof_key() -> Result<(), Error> {
    let f = fixture(Algorithm::EdDSA).await?;
    let user = f.user_token("alice", json!({}))?;
    let (_, missing) = exchange(&f, "bound", &user, ID_TOKEN, &[]).await?;
    assert_eq!(error(&missing), "invalid_dpop_proof");
    let key = mandate_authn::dev::DevKey::generate(Algorithm::ES256)?;
    let proof = key.sign_typed(
        "dpop+jwt",
        true,
        &json!({"jti": "p1", "htm": "POST", "htu": format!("{ISSUER}/oauth2/token"), "iat": fixture::now()}),
    )?;
    let body = f.form("bound", &user, ID_TOKEN, &[])?;
    let (s, b) = post(&f, "/oauth2/token", body, Some(&proof)).await?;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b.get("token_type"), Some(&json!("DPoP")));
    let c = claims_of(
        b.get("access_token")
            .and_then(Value::as_str)
            .ok_or("no token")?,
    )?;
    assert_eq!(
        c.pointer("/cnf/jkt").and_then(Value::as_str),
        Some(key.thumbprint()?.as_str())
    );
    // The same proof again is a replay.
    let body = f.form("bound", &user, ID_TOKEN, &[])?;
    let (_, b) = post(&f, "/oauth2/token", body, Some(&proof)).await?;
    assert_eq!(error(&b), "invalid_dpop_proof");
    Ok(())
}

#[tokio::test]
async fn metadata_and_jwks_describe_the_server() -> Result<(), Error> {
    let f = fixture(Algorithm::ES256).await?;
    let router = mandate_broker::router(f.broker.clone());
    let resp = router
        .clone()
        .oneshot(
            Request::get("/.well-known/oauth-authorization-server")
                .body(axum::body::Body::empty())?,
        )
        .await?;
    let meta: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?;
    assert_eq!(meta.get("issuer"), Some(&json!(ISSUER)));
    assert_eq!(
        meta.get("token_endpoint_auth_methods_supported"),
        Some(&json!(["private_key_jwt"]))
    );
    let resp = router
        .oneshot(Request::get("/.well-known/jwks.json").body(axum::body::Body::empty())?)
        .await?;
    let jwks: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no keys")?;
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys.first().and_then(|k| k.get("crv")),
        Some(&json!("P-256"))
    );
    assert!(keys.iter().all(|k| k.get("d").is_none()));
    Ok(())
}

/// Without `[broker.sign_in]` the authorization code grant and the
/// sign-in endpoints do not exist, and the metadata does not name them.
#[tokio::test]
async fn without_sign_in_there_is_no_authorization_code_grant() -> Result<(), Error> {
    let f = fixture(Algorithm::ES256).await?;
    let body = b"grant_type=authorization_code&client_id=c&code=x&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb&code_verifier=v".to_vec();
    let (status, v) = post(&f, "/oauth2/token", body, None).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v.get("error"), Some(&json!("unsupported_grant_type")));
    let resp = mandate_broker::router(f.broker.clone())
        .oneshot(
            Request::post("/oauth2/register")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(
                    r#"{"redirect_uris":["http://127.0.0.1/cb"]}"#,
                ))?,
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = mandate_broker::router(f.broker.clone())
        .oneshot(
            Request::get("/.well-known/oauth-authorization-server")
                .body(axum::body::Body::empty())?,
        )
        .await?;
    let meta: Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await?)?;
    assert!(meta.get("authorization_endpoint").is_none());
    assert!(meta.get("registration_endpoint").is_none());
    Ok(())
}
