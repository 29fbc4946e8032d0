use super::*;
use crate::dev::DevKey;
use serde_json::json;

const URL: &str = "https://mandate.test/mcp";

fn now_secs() -> u64 {
    mandate_core::Clock::system()
        .now_unsigned_secs()
        .unwrap_or_default()
}

fn proof(key: &DevKey, claims: &Value) -> Result<String, crate::AuthnError> {
    key.sign_typed("dpop+jwt", true, claims)
}

fn claims(token: Option<&str>) -> Value {
    let mut c = json!({
        "jti": uuid_like(),
        "htm": "POST",
        "htu": URL,
        "iat": now_secs(),
    });
    if let (Some(t), Some(obj)) = (token, c.as_object_mut()) {
        obj.insert("ath".into(), json!(token_hash(t)));
    }
    c
}

fn uuid_like() -> String {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&rng, &mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn req<'a>(token: Option<&'a str>, jkt: Option<&'a str>) -> ProofRequest<'a> {
    ProofRequest {
        method: "POST",
        url: URL,
        access_token: token,
        jkt,
    }
}

#[test]
fn a_valid_proof_yields_the_key_thumbprint_once() -> Result<(), Box<dyn std::error::Error>> {
    let v = DpopVerifier::new(false, 5)?;
    let key = DevKey::generate(Algorithm::ES256)?;
    let jkt = key.thumbprint()?;
    let p = proof(&key, &claims(Some("tok")))?;
    assert_eq!(v.verify(&p, req(Some("tok"), Some(&jkt))), Ok(jkt.clone()));
    // The same proof again is a replay.
    assert_eq!(
        v.verify(&p, req(Some("tok"), Some(&jkt))),
        Err(DpopError::Replayed)
    );
    Ok(())
}

#[test]
fn proofs_for_another_request_token_or_key_are_refused() -> Result<(), Box<dyn std::error::Error>> {
    let v = DpopVerifier::new(false, 5)?;
    let key = DevKey::generate(Algorithm::EdDSA)?;
    let other = DevKey::generate(Algorithm::EdDSA)?;
    let jkt = key.thumbprint()?;
    let mut c = claims(Some("tok"));
    if let Some(o) = c.as_object_mut() {
        o.insert("htu".into(), json!("https://mandate.test/other"));
    }
    assert_eq!(
        v.verify(&proof(&key, &c)?, req(Some("tok"), Some(&jkt))),
        Err(DpopError::WrongRequest)
    );
    let p = proof(&key, &claims(Some("tok")))?;
    let get = ProofRequest {
        method: "GET",
        ..req(Some("tok"), Some(&jkt))
    };
    assert_eq!(v.verify(&p, get), Err(DpopError::WrongRequest));
    assert_eq!(
        v.verify(
            &proof(&key, &claims(Some("tok")))?,
            req(Some("other-token"), Some(&jkt))
        ),
        Err(DpopError::TokenMismatch)
    );
    assert_eq!(
        v.verify(
            &proof(&other, &claims(Some("tok")))?,
            req(Some("tok"), Some(&jkt))
        ),
        Err(DpopError::KeyMismatch)
    );
    // Query and fragment do not take part in `htu`.
    let q = ProofRequest {
        url: "https://MANDATE.test/mcp?x=1",
        ..req(Some("tok"), Some(&jkt))
    };
    assert!(v.verify(&proof(&key, &claims(Some("tok")))?, q).is_ok());
    Ok(())
}

#[test]
fn stale_unsigned_or_wrongly_typed_proofs_are_refused() -> Result<(), Box<dyn std::error::Error>> {
    let v = DpopVerifier::new(false, 5)?;
    let key = DevKey::generate(Algorithm::EdDSA)?;
    let mut old = claims(None);
    if let Some(o) = old.as_object_mut() {
        o.insert("iat".into(), json!(now_secs() - 600));
    }
    assert_eq!(
        v.verify(&proof(&key, &old)?, req(None, None)),
        Err(DpopError::Stale)
    );
    let at = key.sign_typed("at+jwt", true, &claims(None))?;
    assert_eq!(v.verify(&at, req(None, None)), Err(DpopError::Header));
    let kid_only = key.sign_typed("dpop+jwt", false, &claims(None))?;
    assert_eq!(v.verify(&kid_only, req(None, None)), Err(DpopError::Header));
    // A flipped signature byte.
    let good = proof(&key, &claims(None))?;
    let mut forged = good.clone();
    let last = forged.pop().map(|c| if c == 'A' { 'B' } else { 'A' });
    if let Some(c) = last {
        forged.push(c);
    }
    assert!(v.verify(&forged, req(None, None)).is_err());
    assert!(v.verify(&good, req(None, None)).is_ok());
    assert_eq!(v.verify("a.b", req(None, None)), Err(DpopError::Malformed));
    Ok(())
}

#[test]
fn nonces_are_required_when_configured() -> Result<(), Box<dyn std::error::Error>> {
    let v = DpopVerifier::new(true, 5)?;
    let key = DevKey::generate(Algorithm::EdDSA)?;
    assert_eq!(
        v.verify(&proof(&key, &claims(None))?, req(None, None)),
        Err(DpopError::UseNonce)
    );
    let mut c = claims(None);
    if let Some(o) = c.as_object_mut() {
        o.insert("nonce".into(), json!(v.nonce()));
    }
    assert!(v.verify(&proof(&key, &c)?, req(None, None)).is_ok());
    let mut bad = claims(None);
    if let Some(o) = bad.as_object_mut() {
        o.insert("nonce".into(), json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    }
    assert_eq!(
        v.verify(&proof(&key, &bad)?, req(None, None)),
        Err(DpopError::UseNonce)
    );
    Ok(())
}

#[test]
fn the_replay_cache_is_bounded_and_fails_closed() {
    let c = ReplayCache::new(2);
    assert_eq!(c.first_use(b"a", 100, 10), Ok(true));
    assert_eq!(c.first_use(b"a", 100, 10), Ok(false));
    assert_eq!(c.first_use(b"b", 100, 10), Ok(true));
    assert_eq!(c.first_use(b"c", 100, 10), Err(()));
    // Once entries expire there is room again.
    assert_eq!(c.first_use(b"c", 300, 200), Ok(true));
}
