//! DPoP proof verification (`mandate_authn::dpop::DpopVerifier`) of
//! arbitrary input.
//!
//! Input: a mode byte, a request selector byte, then
//! * mode even: the rest is the proof text (any string, as in a `DPoP`
//!   header);
//! * mode odd: `header JSON 0xFF claims JSON`, signed by the harness with
//!   the client's key so the checks behind the signature are reached. In
//!   the header `"jwk": "$JWK"` becomes the client's public key; in the
//!   claims `"ath": "$ATH"` the access token's hash, `"nonce": "$NONCE"` a
//!   current server nonce, and a small integer `iat` an offset from now.
//!
//! The selector picks the request (method, URL), whether an access token
//! and a `cnf.jkt` binding are checked, and whether nonces are required.
//!
//! Invariants, beyond "no panic": an accepted proof matches the request's
//! method, binds the access token (`ath`) and key (`jkt`) asked for,
//! carries a nonce when one is required, is fresh, was made with the key
//! whose thumbprint is returned, and is refused when replayed.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use mandate_authn::dpop::{DpopError, DpopVerifier, MAX_PROOF_AGE, ProofRequest, token_hash};
use mandate_fuzz::{DPOP_PEM, finding, key, now, sign_raw, split_ff};
use serde_json::Value;
use std::sync::LazyLock;

const ACCESS_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
const LEEWAY: u64 = 5;

struct Fixture {
    plain: DpopVerifier,
    nonces: DpopVerifier,
    jwk: Value,
    jkt: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let k = key(DPOP_PEM, "client");
    let mut jwk = serde_json::to_value(k.jwk()).unwrap_or_default();
    if let Some(m) = jwk.as_object_mut() {
        m.remove("kid");
    }
    Fixture {
        plain: DpopVerifier::new(false, LEEWAY).unwrap_or_else(|e| finding(e)),
        nonces: DpopVerifier::new(true, LEEWAY).unwrap_or_else(|e| finding(e)),
        jwk,
        jkt: k.thumbprint().unwrap_or_else(|e| finding(e)),
    }
});

fn replace(v: &mut Value, name: &str, placeholder: &str, with: Value) {
    if let Some(slot) = v.as_object_mut().and_then(|m| m.get_mut(name))
        && slot.as_str() == Some(placeholder)
    {
        *slot = with;
    }
}

fn payload_of(proof: &str) -> Option<serde_json::Map<String, Value>> {
    let p = proof.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let (Some(mode), Some(sel)) = (data.first().copied(), data.get(1).copied()) else {
        return;
    };
    let rest = data.get(2..).unwrap_or_default();
    let verifier = if sel & 0x40 != 0 { &f.nonces } else { &f.plain };

    let proof = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = split_ff(rest);
        let header = match serde_json::from_slice::<Value>(header) {
            Ok(mut h) => {
                replace(&mut h, "jwk", "$JWK", f.jwk.clone());
                serde_json::to_vec(&h).unwrap_or_default()
            }
            Err(_) => header.to_vec(),
        };
        let claims = match serde_json::from_slice::<Value>(claims) {
            Ok(mut c) => {
                mandate_fuzz::relative_times(&mut c, &["iat"]);
                replace(&mut c, "ath", "$ATH", Value::from(token_hash(ACCESS_TOKEN)));
                replace(&mut c, "nonce", "$NONCE", Value::from(verifier.nonce()));
                serde_json::to_vec(&c).unwrap_or_default()
            }
            Err(_) => claims.to_vec(),
        };
        sign_raw(DPOP_PEM, &header, &claims)
    };

    let method = ["POST", "GET", "DELETE", "post"]
        .get(usize::from(sel & 3))
        .copied()
        .unwrap_or("POST");
    let url = [
        "http://127.0.0.1:8943/mcp",
        "https://Mandate.Example:443/mcp?x=1#f",
        "http://127.0.0.1:8943/oauth2/token",
        "not a url",
    ]
    .get(usize::from((sel >> 2) & 3))
    .copied()
    .unwrap_or_default();
    let access_token = (sel & 0x10 != 0).then_some(ACCESS_TOKEN);
    let jkt = (sel & 0x20 != 0).then_some(if sel & 0x80 != 0 {
        "someone-else"
    } else {
        f.jkt.as_str()
    });
    let req = ProofRequest {
        method,
        url,
        access_token,
        jkt,
    };

    let before = now();
    let result = verifier.verify(&proof, req);
    let Ok(thumbprint) = result else { return };

    if mode % 2 == 1 && thumbprint != f.jkt {
        finding(format!(
            "a proof signed by the client key yielded jkt {thumbprint}"
        ));
    }
    if let Some(bound) = jkt
        && bound != thumbprint
    {
        finding(format!(
            "bound to {bound} but accepted a proof by {thumbprint}"
        ));
    }
    let Some(claims) = payload_of(&proof) else {
        finding("accepted a proof whose payload does not parse");
    };
    if claims.get("htm").and_then(Value::as_str) != Some(method) {
        finding(format!("htm {:?} accepted for {method}", claims.get("htm")));
    }
    if let Some(t) = access_token
        && claims.get("ath").and_then(Value::as_str) != Some(token_hash(t).as_str())
    {
        finding("accepted a proof not bound to the access token");
    }
    if verifier.requires_nonce() && !claims.get("nonce").is_some_and(Value::is_string) {
        finding("accepted a proof without a nonce");
    }
    let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
    if iat > before + 1 + LEEWAY || iat + MAX_PROOF_AGE + LEEWAY < before {
        finding(format!("accepted a stale proof: iat {iat}, now {before}"));
    }
    match verifier.verify(&proof, req) {
        Err(DpopError::Replayed | DpopError::Busy) => {}
        other => finding(format!("a replayed proof got {other:?}")),
    }
});
