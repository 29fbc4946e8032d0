use super::*;

#[test]
fn a_hash_round_trips_and_verifies_only_its_password() -> Result<(), PasswordError> {
    let h = PasswordHash::new("correct horse", MIN_ITERATIONS)?;
    let text = h.to_string();
    assert!(text.starts_with("pbkdf2-sha256$i=100000$"), "{text}");
    let parsed = text.parse::<PasswordHash>()?;
    assert_eq!(parsed, h);
    assert!(parsed.verify("correct horse"));
    assert!(!parsed.verify("correct horse "));
    assert!(!parsed.verify(""));
    let hash_part = text.rsplit('$').next().unwrap_or_default();
    assert!(!format!("{parsed:?}").contains(hash_part));
    Ok(())
}

#[test]
fn weak_or_malformed_hashes_are_refused() {
    for bad in [
        "",
        "pbkdf2-sha256$i=600000$c2FsdA$aGFzaA",
        "pbkdf2-sha1$i=600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "pbkdf2-sha256$i=600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$x",
    ] {
        assert!(bad.parse::<PasswordHash>().is_err(), "{bad}");
    }
    assert!(matches!(
        "pbkdf2-sha256$i=1000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .parse::<PasswordHash>(),
        Err(PasswordError::TooFewIterations(1000))
    ));
    assert!(PasswordHash::new("x", 1000).is_err());
}

#[test]
fn the_decoy_matches_nothing() -> Result<(), &'static str> {
    let i = NonZeroU32::new(MIN_ITERATIONS).ok_or("MIN_ITERATIONS is 0")?;
    assert!(!PasswordHash::decoy(i).verify("anything"));
    Ok(())
}

/// Failures are counted in the control store: a second limiter on the
/// same store (another replica, or this one after a restart) sees them.
#[tokio::test]
async fn an_account_is_locked_after_repeated_failures() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("control.sqlite");
    let clock = mandate_core::ManualClock::at_secs(1_800_000_000);
    let open = || -> Result<LoginLimiter, mandate_control::ControlError> {
        let store = ControlStore::open(&path)?.with_clock(clock.clock());
        Ok(LoginLimiter::new(Arc::new(store), clock.clock()))
    };
    let (limiter, other) = (open()?, open()?);
    for _ in 0..MAX_FAILURES {
        assert!(limiter.allows("carol").await);
        limiter.failed("carol").await;
    }
    assert!(!limiter.allows("carol").await);
    assert!(
        !other.allows("carol").await,
        "another replica sees the count"
    );
    // Names that exist and names that do not are treated alike.
    assert!(limiter.allows("nobody").await);
    // The window passes: carol may try again.
    clock.advance(FAILURE_WINDOW + Duration::from_secs(1));
    assert!(other.allows("carol").await);
    for _ in 0..MAX_FAILURES {
        other.failed("carol").await;
    }
    assert!(!limiter.allows("carol").await);
    limiter.succeeded("carol").await;
    assert!(other.allows("carol").await);
    Ok(())
}
