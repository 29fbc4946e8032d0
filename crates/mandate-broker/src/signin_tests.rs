use super::*;
use std::time::Duration;

/// A sign-in state on a fresh SQLite control store whose clock stands at
/// `T0` (the tests move it with the time they pass).
fn state(
    max_clients: usize,
    max_pending: usize,
) -> (SignInState, mandate_core::ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = mandate_core::ManualClock::at_ms(T0);
    let control = ControlStore::open(&dir.path().join("control.sqlite"))
        .unwrap()
        .with_clock(clock.clock());
    (
        SignInState::new(Arc::new(control), max_clients, max_pending),
        clock,
        dir,
    )
}

const T0: i64 = 1_800_000_000_000;
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r7wW1gFWFOEjXk";
const CHALLENGE: &str = "bwWFMyPfdG9qreDhH2lmftFx_dFeLDalzcT1gb_j68g";
const RESOURCE: &str = "https://gw.test/mcp";
const REDIRECT: &str = "http://127.0.0.1:5555/callback";

fn request(client: &str) -> AuthRequest {
    AuthRequest {
        client_id: client.into(),
        redirect_uri: REDIRECT.into(),
        state: Some("xyz".into()),
        challenge: CHALLENGE.into(),
        resource: RESOURCE.into(),
        scope: None,
    }
}

fn grant(client: &str, at: i64) -> Grant {
    Grant {
        request: request(client),
        user: User {
            iss: "https://idp.test".into(),
            sub: "alice".into(),
        },
        scope: Scope::parse("bank.get_balance"),
        issued_ms: at,
    }
}

fn pending(at: i64) -> Pending {
    Pending {
        request: request("c1"),
        binding: String::new(),
        started_ms: at,
        stage: Stage::AtProvider {
            nonce: "n".into(),
            code_verifier: "v".into(),
        },
    }
}

fn client(id: &str) -> RegisteredClient {
    RegisteredClient {
        id: id.into(),
        name: None,
        redirect_uris: vec![REDIRECT.into()],
    }
}

#[tokio::test]
async fn pkce_verifier_must_match_the_challenge() {
    let (s, _clock, _dir) = state(10, 10);
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    let wrong = "x".repeat(43);
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, &wrong, Some(RESOURCE), T0)
            .await
            .err(),
        Some(CodeProblem::Verifier)
    );
    // A malformed verifier (too short) is refused before hashing.
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, "short", None, T0)
            .await
            .err(),
        Some(CodeProblem::Verifier)
    );
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    let g = s
        .redeem(&code, "c1", REDIRECT, VERIFIER, Some(RESOURCE), T0)
        .await
        .unwrap();
    assert_eq!(g.user.sub, "alice");
}

#[tokio::test]
async fn a_code_is_used_once_even_when_the_first_attempt_fails() {
    let (s, _clock, _dir) = state(10, 10);
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    assert!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0)
            .await
            .is_ok()
    );
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0)
            .await
            .err(),
        Some(CodeProblem::Unknown)
    );
    // A failed attempt (wrong verifier) also spends the code.
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    assert!(
        s.redeem(&code, "c1", REDIRECT, &"y".repeat(50), None, T0)
            .await
            .is_err()
    );
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0)
            .await
            .err(),
        Some(CodeProblem::Unknown)
    );
    assert_eq!(s.control.count_ephemeral(Kind::McpCode).await.unwrap(), 0);
}

#[tokio::test]
async fn a_code_expires_after_60_seconds() {
    let (s, _clock, _dir) = state(10, 10);
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    assert!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0 + CODE_TTL_MS)
            .await
            .is_ok()
    );
    let code = s.issue_code(grant("c1", T0)).await.unwrap();
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0 + CODE_TTL_MS + 1)
            .await
            .err(),
        Some(CodeProblem::Expired)
    );
}

#[tokio::test]
async fn a_code_is_bound_to_client_redirect_uri_and_resource() {
    let (s, _clock, _dir) = state(10, 10);
    let cases = [
        ("c2", REDIRECT, Some(RESOURCE), CodeProblem::OtherClient),
        (
            "c1",
            "http://127.0.0.1:5555/other",
            Some(RESOURCE),
            CodeProblem::OtherRedirect,
        ),
        (
            "c1",
            REDIRECT,
            Some("https://elsewhere.test/mcp"),
            CodeProblem::OtherResource,
        ),
    ];
    for (client, redirect, resource, want) in cases {
        let code = s.issue_code(grant("c1", T0)).await.unwrap();
        assert_eq!(
            s.redeem(&code, client, redirect, VERIFIER, resource, T0)
                .await
                .err(),
            Some(want)
        );
    }
    assert_eq!(
        s.redeem("never-issued", "c1", REDIRECT, VERIFIER, None, T0)
            .await
            .err(),
        Some(CodeProblem::Unknown)
    );
}

#[tokio::test]
async fn registration_is_bounded_by_max_clients() {
    let (s, _clock, _dir) = state(3, 10);
    for i in 0..3 {
        assert_eq!(s.register(client(&format!("c{i}")), T0).await, Ok(()));
    }
    assert_eq!(s.register(client("c3"), T0).await, Err(Full));
    assert!(s.client("c3").await.is_none());
    assert_eq!(s.control.count_ephemeral(Kind::McpClient).await.unwrap(), 3);
}

#[tokio::test]
async fn sign_ins_in_progress_and_codes_are_bounded() {
    let (s, clock, _dir) = state(10, 2);
    assert!(s.hold("a".into(), pending(T0)).await.is_ok());
    assert!(s.hold("b".into(), pending(T0)).await.is_ok());
    assert_eq!(s.hold("c".into(), pending(T0)).await.err(), Some(Full));
    // Expired attempts make room; a taken attempt is gone.
    let later = T0 + PENDING_TTL_MS + 1;
    clock.set_ms(later);
    assert!(s.take("a", later).await.is_none());
    assert!(s.hold("c".into(), pending(later)).await.is_ok());
    assert!(s.hold("d".into(), pending(later)).await.is_ok());
    assert_eq!(s.control.count_ephemeral(Kind::McpSignIn).await.unwrap(), 2);
    assert!(s.take("d", later).await.is_some());
    assert!(s.take("d", later).await.is_none());

    assert!(s.issue_code(grant("c1", later)).await.is_ok());
    assert!(s.issue_code(grant("c1", later)).await.is_ok());
    assert_eq!(s.issue_code(grant("c1", later)).await.err(), Some(Full));
    let later = later + CODE_TTL_MS + 1;
    clock.set_ms(later);
    assert!(s.issue_code(grant("c1", later)).await.is_ok());
}

fn sign_in_config() -> SignInConfig {
    SignInConfig {
        provider_issuer: "https://idp.test".into(),
        client_id: "broker".into(),
        client_secret: None,
        groups_claim: "groups".into(),
        loopback_redirects: true,
        https_redirect_prefixes: vec!["https://app.example/oauth/".into()],
        scope: Scope::parse("bank.get_balance"),
        token_ttl: Duration::from_secs(600),
        max_clients: 1000,
        max_pending: 1000,
    }
}

#[test]
fn redirect_uris_are_loopback_http_or_allowed_https() {
    let c = sign_in_config();
    for ok in [
        "http://127.0.0.1:33418/callback",
        "http://localhost:8080/cb",
        "http://[::1]:9000/",
        "https://app.example/oauth/callback",
    ] {
        assert!(c.redirect_allowed(ok), "{ok}");
    }
    for bad in [
        "http://example.com/callback",
        "http://10.0.0.1/cb",
        "https://app.example/other",
        "https://app.example.evil.test/oauth/",
        "myapp://callback",
        "javascript:alert(1)",
        "http://127.0.0.1:1/cb#frag",
        "http://user:pw@127.0.0.1/cb",
        "not a url",
    ] {
        assert!(!c.redirect_allowed(bad), "{bad}");
    }
    let mut no_loopback = sign_in_config();
    no_loopback.loopback_redirects = false;
    assert!(!no_loopback.redirect_allowed("http://127.0.0.1:33418/callback"));
}

#[test]
fn consent_page_escapes_what_clients_and_users_chose() {
    let mut c = client("c1");
    c.name = Some("<script>alert(1)</script>".into());
    let user = User {
        iss: "https://idp.test".into(),
        sub: "\"><img src=x>".into(),
    };
    let resp = consent_page(
        &request("c1"),
        Some(&c),
        &user,
        &Scope::parse("bank.get_balance"),
        "id",
        "tok",
    );
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
    let body = futures_body(resp);
    assert!(!body.contains("<script>alert") && body.contains("&lt;script&gt;"));
    assert!(!body.contains("\"><img"));
    assert!(body.contains("bank.get_balance"));
}

fn futures_body(resp: Response) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = rt
        .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}
