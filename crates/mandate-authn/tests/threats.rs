//! Security tests for token verification, each named for the threat it
//! closes. Real keys, real signatures, real files and sockets; no mocks.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mandate_authn::dev::{self, DevKey};
use mandate_authn::{
    Authenticator, AuthnConfig, AuthnError, IssuerConfig, JwksSource, MAX_ACTOR_DEPTH,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ISS: &str = "https://idp.example";
const AUD: &str = "mandate-gateway";

fn now() -> u64 {
    mandate_core::Clock::system()
        .now_unsigned_secs()
        .unwrap_or_default()
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "sub": "alice@example.com",
        "aud": AUD,
        "exp": now() + 300,
        "iat": now(),
        "act": {"sub": "research-agent", "act": {"sub": "orchestrator"}},
        "scope": "docs.search mail.*",
        "task_id": "task-42",
        "build": "sha256:abc",
        "sid": "sess-1",
        "jti": "tok-1",
        "unknown_claim": {"ignored": true},
    })
}

fn claims_with(extra: Value) -> Value {
    let mut c = claims();
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn jwks_of(keys: &[&DevKey]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| serde_json::to_value(k.jwk()).unwrap_or(Value::Null))
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A JWKS file for `keys`, and a config trusting it as `ISS`.
fn setup(keys: &[&DevKey]) -> std::io::Result<(tempfile::TempDir, PathBuf, AuthnConfig)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_of(keys))?;
    let mut cfg = AuthnConfig::new(
        vec![IssuerConfig {
            issuer: ISS.into(),
            jwks: JwksSource::File(path.clone()),
        }],
        AUD,
    );
    cfg.leeway_secs = 30;
    Ok((dir, path, cfg))
}

async fn trusting(
    keys: &[&DevKey],
) -> Result<(tempfile::TempDir, PathBuf, Authenticator), Box<dyn std::error::Error>> {
    let (dir, path, cfg) = setup(keys)?;
    Ok((dir, path, Authenticator::new(cfg).await?))
}

/// Rewrites a JWKS file atomically (write + rename), as an operator would.
fn rotate(path: &Path, keys: &[&DevKey]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, jwks_of(keys))?;
    std::fs::rename(tmp, path)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Signs `claims` under an arbitrary header with `key`'s private key.
fn sign_raw(
    key: &DevKey,
    header: &Value,
    claims: &Value,
) -> Result<String, Box<dyn std::error::Error>> {
    let message = format!("{}.{}", b64(header), b64(claims));
    let encoding = match key.algorithm() {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key.pkcs8_pem.as_bytes())?,
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(key.pkcs8_pem.as_bytes())?,
        _ => EncodingKey::from_rsa_pem(key.pkcs8_pem.as_bytes())?,
    };
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &encoding, key.algorithm())?;
    Ok(format!("{message}.{sig}"))
}

fn is_err<T: std::fmt::Debug>(
    r: &Result<T, AuthnError>,
    want: impl Fn(&AuthnError) -> bool,
) -> bool {
    match r {
        Err(e) => want(e),
        Ok(_) => false,
    }
}

// ---------------------------------------------------------------------------
// The happy path

#[tokio::test]
async fn valid_token_yields_principal_with_act_chain() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let exp = now() + 300;
    let token = key.sign(&claims_with(json!({ "exp": exp })))?;

    let p = authn.verify(&token).await?;
    assert_eq!(p.iss(), ISS);
    assert_eq!(p.sub(), "alice@example.com");
    assert_eq!(
        p.act(),
        vec!["research-agent".to_owned(), "orchestrator".to_owned()]
    );
    assert_eq!(p.agent(), Some("research-agent"));
    assert!(p.scope().covers("docs.search") && p.scope().covers("mail.send"));
    assert!(!p.scope().covers("bank.transfer"));
    assert_eq!(p.task_id(), Some("task-42"));
    assert_eq!(p.build(), Some("sha256:abc"));
    assert_eq!(p.sid(), Some("sess-1"));
    assert_eq!(p.jti(), Some("tok-1"));
    assert_eq!(p.exp(), exp);

    // The cached path answers identically, and so does the uncached one.
    assert_eq!(authn.verify(&token).await?, p);
    assert_eq!(authn.verify_uncached(&token).await?, p);
    assert_eq!(authn.audience(), AUD);
    Ok(())
}

#[tokio::test]
async fn every_supported_algorithm_verifies_with_its_own_key_type() -> TestResult {
    let ed = dev::generate_ed25519()?;
    let p256 = DevKey::generate(Algorithm::ES256)?;
    let p384 = DevKey::generate(Algorithm::ES384)?;
    let rsa = DevKey::generate(Algorithm::RS256)?;
    let pss = DevKey::generate(Algorithm::PS256)?;
    let (_dir, _, mut cfg) = setup(&[&ed, &p256, &p384, &rsa, &pss])?;
    cfg.algorithms.push(Algorithm::ES384);
    let authn = Authenticator::new(cfg).await?;
    for key in [&ed, &p256, &p384, &rsa, &pss] {
        let p = authn.verify_uncached(&key.sign(&claims())?).await;
        assert!(p.is_ok(), "{:?}: {p:?}", key.algorithm());
    }
    Ok(())
}

#[tokio::test]
async fn audience_may_be_an_array_containing_ours() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let token = key.sign(&claims_with(json!({"aud": ["other", AUD]})))?;
    assert!(authn.verify(&token).await.is_ok());
    Ok(())
}

// ---------------------------------------------------------------------------
// Forged and confused tokens

#[tokio::test]
async fn forged_signature_with_same_kid_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let mut attacker = dev::generate_ed25519()?;
    attacker.kid = key.kid.clone();
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let r = authn.verify(&attacker.sign(&claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::BadSignature)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tampered_payload_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let token = key.sign(&claims())?;
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = b64(&claims_with(json!({"sub": "admin"})));
    if let Some(p) = parts.get_mut(1) {
        *p = &forged_payload;
    }
    let r = authn.verify(&parts.join(".")).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::BadSignature)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn alg_none_token_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    for alg in ["none", "None", "NONE"] {
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": key.kid, "typ": "at+jwt"})),
            b64(&claims())
        );
        let r = authn.verify(&unsigned).await;
        assert!(r.is_err(), "{alg}: {r:?}");
        // With a dummy signature segment the shape passes; the alg does not.
        let r = authn.verify(&format!("{unsigned}AAAA")).await;
        assert!(
            is_err(&r, |e| matches!(e, AuthnError::AlgorithmNotAllowed(_))),
            "{alg}: {r:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn hs256_token_keyed_with_the_issuers_public_key_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;

    // Every form in which an attacker could obtain the public key.
    let jwk = key.jwk();
    let jwk_json = serde_json::to_string(&jwk)?;
    let x = serde_json::to_value(&jwk)?
        .get("x")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_default();
    let raw = URL_SAFE_NO_PAD.decode(&x)?;
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(&raw);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let secrets: Vec<Vec<u8>> = vec![
        raw,
        x.into_bytes(),
        jwk_json.into_bytes(),
        key.jwks_json().into_bytes(),
        pem.into_bytes(),
        spki,
    ];
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        for secret in &secrets {
            let mut header = Header::new(alg);
            header.kid = Some(key.kid.clone());
            let token =
                jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret))?;
            let r = authn.verify(&token).await;
            assert!(
                is_err(&r, |e| matches!(e, AuthnError::AlgorithmNotAllowed(_))),
                "{alg:?}: {r:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn hmac_in_the_allow_list_is_rejected_by_the_constructor() -> TestResult {
    let key = dev::generate_ed25519()?;
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let (_dir, _, mut cfg) = setup(&[&key])?;
        cfg.algorithms.push(alg);
        let r = Authenticator::new(cfg).await;
        assert!(
            is_err(&r, |e| matches!(e, AuthnError::Config(_)) && e.is_config()),
            "{alg:?}"
        );
    }
    let (_dir, _, mut cfg) = setup(&[&key])?;
    cfg.algorithms.clear();
    assert!(Authenticator::new(cfg).await.is_err());
    Ok(())
}

#[tokio::test]
async fn algorithm_outside_the_allow_list_is_refused() -> TestResult {
    // ES384 is supported but not in the default allow-list.
    let key = DevKey::generate(Algorithm::ES384)?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let r = authn.verify(&key.sign(&claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::AlgorithmNotAllowed(_))),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn key_of_another_type_than_the_alg_is_refused() -> TestResult {
    // An EC key published under the kid the attacker's EdDSA token names.
    let ec = DevKey::generate(Algorithm::ES256)?;
    let mut ed = dev::generate_ed25519()?;
    ed.kid = ec.kid.clone();
    let (_dir, _, authn) = trusting(&[&ec]).await?;
    let r = authn.verify(&ed.sign(&claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::KeyAlgorithmMismatch { .. })),
        "{r:?}"
    );

    // An RSA JWK pinned to RS256 does not verify PS256, though both are RSA.
    let rs = DevKey::generate(Algorithm::RS256)?;
    let (_dir2, _, authn) = trusting(&[&rs]).await?;
    let ps = rs.with_algorithm(Algorithm::PS256)?;
    let r = authn.verify(&ps.sign(&claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::KeyAlgorithmMismatch { .. })),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn key_embedded_in_the_header_is_ignored() -> TestResult {
    let key = dev::generate_ed25519()?;
    let attacker = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let header = json!({
        "alg": "EdDSA",
        "typ": "at+jwt",
        "kid": key.kid,
        "jwk": attacker.jwk(),
        "jku": "https://attacker.example/jwks.json",
    });
    let r = authn
        .verify(&sign_raw(&attacker, &header, &claims())?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::BadSignature)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn other_jwt_types_and_critical_headers_are_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let dpop = json!({"alg": "EdDSA", "kid": key.kid, "typ": "dpop+jwt"});
    let r = authn.verify(&sign_raw(&key, &dpop, &claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::UnsupportedType(_))),
        "{r:?}"
    );

    let crit = json!({"alg": "EdDSA", "kid": key.kid, "crit": ["b64"], "b64": false});
    let r = authn.verify(&sign_raw(&key, &crit, &claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::CriticalHeader)),
        "{r:?}"
    );

    let no_kid = json!({"alg": "EdDSA", "typ": "JWT"});
    let r = authn.verify(&sign_raw(&key, &no_kid, &claims())?).await;
    assert!(is_err(&r, |e| matches!(e, AuthnError::MissingKid)), "{r:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Claims

#[tokio::test]
async fn token_without_actor_is_refused_when_actor_required() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, mut cfg) = setup(&[&key])?;
    cfg.require_actor = true;
    let authn = Authenticator::new(cfg).await?;
    let r = authn
        .verify(&key.sign(&claims_with(json!({"act": null})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::ActorRequired)),
        "{r:?}"
    );
    assert!(authn.verify(&key.sign(&claims())?).await.is_ok());

    // Without the requirement the same token is a user-only principal.
    let (_dir2, _, lax) = trusting(&[&key]).await?;
    let p = lax
        .verify(&key.sign(&claims_with(json!({"act": null})))?)
        .await?;
    assert!(p.act().is_empty());
    Ok(())
}

#[tokio::test]
async fn expired_token_beyond_leeway_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let r = authn
        .verify(&key.sign(&claims_with(json!({"exp": now() - 35})))?)
        .await;
    assert!(is_err(&r, |e| matches!(e, AuthnError::Expired)), "{r:?}");
    // Inside the 30 s leeway a just-expired token still passes (clock skew).
    assert!(
        authn
            .verify(&key.sign(&claims_with(json!({"exp": now() - 10})))?)
            .await
            .is_ok()
    );
    let r = authn
        .verify(&key.sign(&claims_with(json!({"exp": null})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::MissingClaim("exp"))),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn token_not_yet_valid_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let r = authn
        .verify(&key.sign(&claims_with(json!({"nbf": now() + 120})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::NotYetValid)),
        "{r:?}"
    );
    let r = authn
        .verify(&key.sign(&claims_with(json!({"iat": now() + 120})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::IssuedInFuture)),
        "{r:?}"
    );
    assert!(
        authn
            .verify(&key.sign(&claims_with(json!({"nbf": now() + 10})))?)
            .await
            .is_ok()
    );
    Ok(())
}

#[tokio::test]
async fn token_for_another_audience_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    for aud in [
        json!("other-service"),
        json!(["a", "b"]),
        json!([]),
        json!("mandate"),
    ] {
        let r = authn
            .verify(&key.sign(&claims_with(json!({"aud": aud})))?)
            .await;
        assert!(
            is_err(&r, |e| matches!(e, AuthnError::WrongAudience)),
            "{aud}: {r:?}"
        );
    }
    let r = authn
        .verify(&key.sign(&claims_with(json!({"aud": null})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::MissingClaim("aud"))),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn token_from_an_unconfigured_issuer_is_refused() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    for iss in [
        "https://evil.example",
        "https://idp.example/",
        "HTTPS://IDP.EXAMPLE",
    ] {
        let r = authn
            .verify(&key.sign(&claims_with(json!({"iss": iss})))?)
            .await;
        assert!(
            is_err(&r, |e| matches!(e, AuthnError::UnknownIssuer)),
            "{iss}: {r:?}"
        );
    }
    let r = authn
        .verify(&key.sign(&claims_with(json!({"iss": null})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::MissingClaim("iss"))),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn token_naming_one_issuer_but_signed_by_another_is_refused() -> TestResult {
    let a = dev::generate_ed25519()?;
    let mut b = dev::generate_ed25519()?;
    let (_dir, _, mut cfg) = setup(&[&a])?;
    let dir_b = tempfile::tempdir()?;
    let path_b = dir_b.path().join("b.json");
    std::fs::write(&path_b, jwks_of(&[&b]))?;
    cfg.issuers.push(IssuerConfig {
        issuer: "https://other-idp.example".into(),
        jwks: JwksSource::File(path_b),
    });
    let authn = Authenticator::new(cfg).await?;
    // B's key, A's iss, B's kid: not in A's key set.
    let r = authn.verify(&b.sign(&claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::UnknownKey { .. })),
        "{r:?}"
    );
    // B's key claiming A's kid: signature fails under A's key.
    b.kid = a.kid.clone();
    let r = authn.verify(&b.sign(&claims())?).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::BadSignature)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn nested_act_depth_is_bounded() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let chain = |depth: usize| {
        let mut act = json!({"sub": format!("agent-{depth}")});
        for i in (1..depth).rev() {
            act = json!({"sub": format!("agent-{i}"), "act": act});
        }
        act
    };
    let p = authn
        .verify(&key.sign(&claims_with(json!({"act": chain(MAX_ACTOR_DEPTH)})))?)
        .await?;
    assert_eq!(p.act().len(), MAX_ACTOR_DEPTH);
    assert_eq!(p.agent(), Some("agent-1"));
    let r = authn
        .verify(&key.sign(&claims_with(json!({"act": chain(MAX_ACTOR_DEPTH + 1)})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::ActorChainTooDeep(_))),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn leeway_above_60_seconds_is_clamped() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, mut cfg) = setup(&[&key])?;
    cfg.leeway_secs = 3600;
    let authn = Authenticator::new(cfg).await?;
    assert_eq!(authn.leeway_secs(), 60);
    let r = authn
        .verify(&key.sign(&claims_with(json!({"exp": now() - 120})))?)
        .await;
    assert!(is_err(&r, |e| matches!(e, AuthnError::Expired)), "{r:?}");
    let r = authn
        .verify(&key.sign(&claims_with(json!({"nbf": now() + 120})))?)
        .await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::NotYetValid)),
        "{r:?}"
    );
    assert!(
        authn
            .verify(&key.sign(&claims_with(json!({"exp": now() - 45})))?)
            .await
            .is_ok()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Cache

#[tokio::test]
async fn cache_hit_does_not_accept_an_expired_token() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, mut cfg) = setup(&[&key])?;
    cfg.leeway_secs = 0;
    let clock = mandate_core::ManualClock::at_secs(1_800_000_000);
    let authn = Authenticator::new(cfg).await?.with_clock(clock.clock());
    let exp = 1_800_000_001;
    let token = key.sign(&claims_with(json!({"exp": exp, "iat": exp - 1})))?;
    assert!(authn.verify(&token).await.is_ok()); // verified and cached
    assert!(authn.verify(&token).await.is_ok()); // cache hit
    clock.advance(std::time::Duration::from_secs(2));
    let r = authn.verify(&token).await;
    assert!(is_err(&r, |e| matches!(e, AuthnError::Expired)), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn key_removed_from_the_jwks_stops_cached_tokens() -> TestResult {
    let old = dev::generate_ed25519()?;
    let new = dev::generate_ed25519()?;
    let (_dir, path, authn) = trusting(&[&old]).await?;
    let old_token = old.sign(&claims())?;
    assert!(authn.verify(&old_token).await.is_ok()); // cached
    rotate(&path, &[&new])?;
    assert!(authn.verify(&new.sign(&claims())?).await.is_ok()); // unknown kid: re-read
    let r = authn.verify(&old_token).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::UnknownKey { .. })),
        "{r:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Key rotation and JWKS sources

#[tokio::test]
async fn unknown_kid_rereads_the_rotated_jwks_file() -> TestResult {
    let old = dev::generate_ed25519()?;
    let new = dev::generate_ed25519()?;
    let (_dir, path, authn) = trusting(&[&old]).await?;
    rotate(&path, &[&old, &new])?;
    let p = authn.verify(&new.sign(&claims())?).await?;
    assert_eq!(p.sub(), "alice@example.com");
    assert!(authn.verify(&old.sign(&claims())?).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn unknown_kid_rereads_are_rate_limited() -> TestResult {
    let old = dev::generate_ed25519()?;
    let new = dev::generate_ed25519()?;
    let (_dir, path, authn) = trusting(&[&old]).await?;
    let new_token = new.sign(&claims())?;
    // First unknown kid re-reads (and still does not find it).
    let r = authn.verify(&new_token).await;
    assert!(is_err(&r, |e| matches!(e, AuthnError::UnknownKey { .. })
        && !e.is_config()));
    rotate(&path, &[&old, &new])?;
    // Within 10 s no second re-read happens, so the new key is not seen yet.
    let r = authn.verify(&new_token).await;
    assert!(
        is_err(&r, |e| matches!(e, AuthnError::UnknownKey { .. })),
        "{r:?}"
    );
    // Known kids are unaffected.
    assert!(authn.verify(&old.sign(&claims())?).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn missing_or_invalid_jwks_file_is_a_config_error_naming_the_issuer() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, path, cfg) = setup(&[&key])?;
    std::fs::remove_file(&path)?;
    let r = Authenticator::new(cfg.clone()).await;
    assert!(
        is_err(&r, |e| e.is_config() && e.to_string().contains(ISS)),
        "{r:?}"
    );
    std::fs::write(
        &path,
        "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"k\", \"k\": \"c2VjcmV0\"}]}",
    )?;
    let r = Authenticator::new(cfg.clone()).await;
    assert!(
        is_err(&r, |e| e.is_config() && e.to_string().contains("no usable")),
        "{r:?}"
    );
    std::fs::write(&path, "not json")?;
    assert!(Authenticator::new(cfg).await.is_err());
    Ok(())
}

/// Serves `body` as a JWKS over plain HTTP on 127.0.0.1; counts requests.
async fn serve_jwks(
    body: Arc<std::sync::Mutex<String>>,
) -> std::io::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks.json", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let body = body.lock().map(|b| b.clone()).unwrap_or_default();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    Ok((url, hits))
}

#[tokio::test]
async fn jwks_url_is_fetched_and_refetched_on_unknown_kid() -> TestResult {
    let old = dev::generate_ed25519()?;
    let new = DevKey::generate(Algorithm::ES256)?;
    let body = Arc::new(std::sync::Mutex::new(jwks_of(&[&old])));
    let (url, hits) = serve_jwks(Arc::clone(&body)).await?;
    let cfg = AuthnConfig::new(
        vec![IssuerConfig {
            issuer: ISS.into(),
            jwks: JwksSource::Url(url),
        }],
        AUD,
    );
    let authn = Authenticator::new(cfg).await?;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(authn.verify(&old.sign(&claims())?).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a known kid never fetches");
    if let Ok(mut b) = body.lock() {
        *b = jwks_of(&[&old, &new]);
    }
    assert!(authn.verify(&new.sign(&claims())?).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn unreachable_jwks_url_is_a_config_error_naming_the_issuer() -> TestResult {
    // Bind then drop a listener: the port is (almost certainly) closed.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?
        .port();
    let cfg = AuthnConfig::new(
        vec![IssuerConfig {
            issuer: ISS.into(),
            jwks: JwksSource::Url(format!("http://127.0.0.1:{port}/jwks")),
        }],
        AUD,
    );
    let r = Authenticator::new(cfg).await;
    assert!(
        is_err(&r, |e| e.is_config() && e.to_string().contains(ISS)),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn cleartext_jwks_url_to_a_remote_host_is_refused() -> TestResult {
    let cfg = AuthnConfig::new(
        vec![IssuerConfig {
            issuer: ISS.into(),
            jwks: JwksSource::Url("http://idp.example/jwks".into()),
        }],
        AUD,
    );
    let r = Authenticator::new(cfg).await;
    assert!(
        is_err(&r, |e| e.is_config() && e.to_string().contains("https")),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn refusals_describe_themselves_without_echoing_the_token() -> TestResult {
    let key = dev::generate_ed25519()?;
    let (_dir, _, authn) = trusting(&[&key]).await?;
    let token = key.sign(&claims_with(json!({"aud": "elsewhere"})))?;
    let r = authn.verify(&token).await;
    if let Err(e) = r {
        let d = e.description();
        assert!(!d.is_empty() && !d.contains('"'));
        let first = token.split('.').next().unwrap_or_default();
        assert!(!d.contains(first) && !e.to_string().contains(first));
    } else {
        return Err("token for another audience was accepted".into());
    }
    Ok(())
}
