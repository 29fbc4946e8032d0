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

#[test]
fn sign_in_rotates_the_id_and_the_token() -> Result<(), Box<dyn std::error::Error>> {
    let clock = mandate_core::ManualClock::at_secs(1_800_000_000);
    let sessions = Sessions::new(
        Duration::from_secs(60),
        Duration::from_secs(600),
        true,
        clock.clock(),
    );
    let (anon, set) = sessions.start_anonymous()?;
    let text = set.to_str().unwrap_or_default();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/approvals", "Secure"] {
        assert!(text.contains(attr), "{text} lacks {attr}");
    }
    let req = headers(&[("cookie", &cookie_value(&set))]);
    let found = sessions
        .current(&req)
        .ok_or("the anonymous session was not found")?;
    assert_eq!(found.csrf, anon.csrf);
    assert!(found.person.is_none());

    let person = Person {
        sub: "carol@example.com".into(),
        iss: "local".into(),
        method: Method::Local,
    };
    let (signed, set2) = sessions.sign_in(Some(anon.key), person.clone())?;
    assert_ne!(signed.csrf, anon.csrf);
    assert_eq!(signed.expires_unix, 1_800_000_600);
    // The old id no longer works; the new one does.
    assert!(sessions.current(&req).is_none());
    let req2 = headers(&[("cookie", &cookie_value(&set2))]);
    assert_eq!(sessions.current(&req2).and_then(|s| s.person), Some(person));
    let _ = sessions.end(signed.key);
    assert!(sessions.current(&req2).is_none());
    Ok(())
}

#[test]
fn idle_sessions_end() -> Result<(), SessionError> {
    let sessions = Sessions::new(
        Duration::from_millis(1),
        Duration::from_secs(600),
        false,
        Clock::system(),
    );
    let person = Person {
        sub: "carol".into(),
        iss: "local".into(),
        method: Method::Local,
    };
    let (s, set) = sessions.sign_in(None, person)?;
    assert!(!set.to_str().unwrap_or_default().contains("Secure"));
    std::thread::sleep(Duration::from_millis(20));
    assert!(!sessions.is_live(s.key));
    assert!(
        sessions
            .current(&headers(&[("cookie", &cookie_value(&set))]))
            .is_none()
    );
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
