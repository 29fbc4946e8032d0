use super::*;

const ORIGIN: &str = "https://mandate.example";

/// Recorded with every sign-in (`method` in the audit detail).
#[test]
fn method_spellings_are_unchanged() {
    use strum::VariantArray as _;
    let table = [(Method::Local, "local"), (Method::Oidc, "oidc")];
    assert_eq!(table.len(), Method::VARIANTS.len());
    for (method, spelled) in table {
        assert_eq!(method.as_str(), spelled);
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(*k, v);
        }
    }
    h
}

fn cookie_value(set_cookie: &HeaderValue) -> String {
    set_cookie
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned()
}

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Two `Sessions` on one control store: two replicas, or one process
/// before and after a restart.
fn pair(
    dir: &tempfile::TempDir,
    idle: Duration,
    secure: bool,
    clock: &mandate_core::ManualClock,
) -> Result<(Sessions, Sessions), ControlError> {
    let path = dir.path().join("control.sqlite");
    let open = || -> Result<Sessions, ControlError> {
        let store = ControlStore::open(&path)?.with_clock(clock.clock());
        Ok(Sessions::new(
            Arc::new(store),
            idle,
            Duration::from_secs(600),
            secure,
            clock.clock(),
        ))
    };
    Ok((open()?, open()?))
}

#[tokio::test]
async fn sign_in_rotates_the_id_and_the_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = mandate_core::ManualClock::at_secs(1_800_000_000);
    let (sessions, other) = pair(&dir, Duration::from_secs(60), true, &clock)?;
    let (anon, set) = sessions.start_anonymous().await?;
    let text = set.to_str().unwrap_or_default();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/approvals", "Secure"] {
        assert!(text.contains(attr), "{text} lacks {attr}");
    }
    let req = headers(&[("cookie", &cookie_value(&set))]);
    let found = sessions
        .current(&req)
        .await?
        .ok_or("the anonymous session was not found")?;
    assert_eq!(found.csrf, anon.csrf);
    assert!(found.person.is_none());

    let person = Person {
        sub: "carol@example.com".into(),
        iss: "local".into(),
        method: Method::Local,
    };
    let (signed, set2) = sessions.sign_in(Some(anon.key), person.clone()).await?;
    assert_ne!(signed.csrf, anon.csrf);
    assert_eq!(signed.expires_unix, 1_800_000_600);
    // The old id no longer works; the new one does, on any replica.
    assert!(sessions.current(&req).await?.is_none());
    let req2 = headers(&[("cookie", &cookie_value(&set2))]);
    assert_eq!(
        other.current(&req2).await?.and_then(|s| s.person),
        Some(person)
    );
    assert!(other.is_live(signed.key).await);
    // Signed out on one replica: signed out on every one.
    let _ = other.end(signed.key).await?;
    assert!(sessions.current(&req2).await?.is_none());
    assert!(!sessions.is_live(signed.key).await);
    Ok(())
}

#[tokio::test]
async fn idle_sessions_end_and_use_keeps_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = mandate_core::ManualClock::at_secs(1_800_000_000);
    let (sessions, other) = pair(&dir, Duration::from_secs(60), false, &clock)?;
    let person = Person {
        sub: "carol".into(),
        iss: "local".into(),
        method: Method::Local,
    };
    let (s, set) = sessions.sign_in(None, person).await?;
    assert!(!set.to_str().unwrap_or_default().contains("Secure"));
    let req = headers(&[("cookie", &cookie_value(&set))]);
    // Used every 50 s on alternating replicas: still live after 200 s.
    for turn in 0..4 {
        clock.advance(Duration::from_secs(50));
        let by = if turn % 2 == 0 { &other } else { &sessions };
        assert!(by.current(&req).await?.is_some(), "turn {turn}");
    }
    // Then 61 s idle: ended everywhere.
    clock.advance(Duration::from_secs(61));
    assert!(!sessions.is_live(s.key).await);
    assert!(other.current(&req).await?.is_none());
    Ok(())
}

#[test]
fn a_duplicated_cookie_is_not_trusted() {
    let h = headers(&[("cookie", "mandate_approvals=a; mandate_approvals=b")]);
    assert_eq!(cookie(&h, COOKIE), None);
    let h = headers(&[("cookie", "x=1; mandate_approvals=abc")]);
    assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
}

#[test]
fn csrf_needs_both_the_origin_and_the_token() {
    let ok = headers(&[("origin", ORIGIN)]);
    assert_eq!(check_csrf(&ok, ORIGIN, "tok", Some("tok")), Ok(()));
    let via_header = headers(&[("origin", ORIGIN), ("x-csrf-token", "tok")]);
    assert_eq!(check_csrf(&via_header, ORIGIN, "tok", None), Ok(()));
    let referer = headers(&[("referer", "https://mandate.example/approvals")]);
    assert_eq!(check_csrf(&referer, ORIGIN, "tok", Some("tok")), Ok(()));

    assert_eq!(
        check_csrf(&ok, ORIGIN, "tok", None),
        Err(CsrfRefusal::NoToken)
    );
    assert_eq!(
        check_csrf(&ok, ORIGIN, "tok", Some("other")),
        Err(CsrfRefusal::WrongToken)
    );
    for foreign in [
        "https://evil.example",
        "null",
        "https://mandate.example.evil",
        "http://mandate.example",
    ] {
        let h = headers(&[("origin", foreign)]);
        assert_eq!(
            check_csrf(&h, ORIGIN, "tok", Some("tok")),
            Err(CsrfRefusal::ForeignOrigin),
            "{foreign}"
        );
    }
    let bad_referer = headers(&[("referer", "https://mandate.example.evil/approvals")]);
    assert_eq!(
        check_csrf(&bad_referer, ORIGIN, "tok", Some("tok")),
        Err(CsrfRefusal::ForeignOrigin)
    );
    assert_eq!(
        check_csrf(&HeaderMap::new(), ORIGIN, "tok", Some("tok")),
        Err(CsrfRefusal::NoOrigin)
    );
}
