use super::*;
use std::time::Duration;

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
        binding: [0; 32],
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

#[test]
fn pkce_verifier_must_match_the_challenge() {
    let s = SignInState::new(10, 10);
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    let wrong = "x".repeat(43);
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, &wrong, Some(RESOURCE), T0)
            .err(),
        Some(CodeProblem::Verifier)
    );
    // A malformed verifier (too short) is refused before hashing.
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, "short", None, T0).err(),
        Some(CodeProblem::Verifier)
    );
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    let g = s
        .redeem(&code, "c1", REDIRECT, VERIFIER, Some(RESOURCE), T0)
        .unwrap();
    assert_eq!(g.user.sub, "alice");
}

#[test]
fn a_code_is_used_once_even_when_the_first_attempt_fails() {
    let s = SignInState::new(10, 10);
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    assert!(s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0).is_ok());
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0).err(),
        Some(CodeProblem::Unknown)
    );
    // A failed attempt (wrong verifier) also spends the code.
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    assert!(
        s.redeem(&code, "c1", REDIRECT, &"y".repeat(50), None, T0)
            .is_err()
    );
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0).err(),
        Some(CodeProblem::Unknown)
    );
    assert_eq!(s.sizes().2, 0);
}

#[test]
fn a_code_expires_after_60_seconds() {
    let s = SignInState::new(10, 10);
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    assert!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0 + CODE_TTL_MS)
            .is_ok()
    );
    let code = s.issue_code(grant("c1", T0), T0).unwrap();
    assert_eq!(
        s.redeem(&code, "c1", REDIRECT, VERIFIER, None, T0 + CODE_TTL_MS + 1)
            .err(),
        Some(CodeProblem::Expired)
    );
}

#[test]
fn a_code_is_bound_to_client_redirect_uri_and_resource() {
    let s = SignInState::new(10, 10);
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
        let code = s.issue_code(grant("c1", T0), T0).unwrap();
        assert_eq!(
            s.redeem(&code, client, redirect, VERIFIER, resource, T0)
                .err(),
            Some(want)
        );
    }
    assert_eq!(
        s.redeem("never-issued", "c1", REDIRECT, VERIFIER, None, T0)
            .err(),
        Some(CodeProblem::Unknown)
    );
}

#[test]
fn registration_is_bounded_by_max_clients() {
    let s = SignInState::new(3, 10);
    for i in 0..3 {
        assert_eq!(s.register(client(&format!("c{i}"))), Ok(()));
    }
    assert_eq!(s.register(client("c3")), Err(Full));
    assert!(s.client("c3").is_none());
    assert_eq!(s.sizes().0, 3);
}

#[test]
fn sign_ins_in_progress_and_codes_are_bounded() {
    let s = SignInState::new(10, 2);
    assert!(s.hold("a".into(), pending(T0), T0).is_ok());
    assert!(s.hold("b".into(), pending(T0), T0).is_ok());
    assert_eq!(s.hold("c".into(), pending(T0), T0).err(), Some(Full));
    // Expired attempts make room; a taken attempt is gone.
    let later = T0 + PENDING_TTL_MS + 1;
    assert!(s.take("a", later).is_none());
    assert!(s.hold("c".into(), pending(later), later).is_ok());
    assert!(s.hold("d".into(), pending(later), later).is_ok());
    assert_eq!(s.sizes().1, 2);
    assert!(s.take("d", later).is_some());
    assert!(s.take("d", later).is_none());

    assert!(s.issue_code(grant("c1", T0), T0).is_ok());
    assert!(s.issue_code(grant("c1", T0), T0).is_ok());
    assert_eq!(s.issue_code(grant("c1", T0), T0).err(), Some(Full));
    let later = T0 + CODE_TTL_MS + 1;
    assert!(s.issue_code(grant("c1", later), later).is_ok());
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
