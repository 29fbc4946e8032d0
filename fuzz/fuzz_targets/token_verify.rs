//! Token verification (`mandate_authn::Authenticator`) of arbitrary input.
//!
//! Input: a mode byte, then
//! * mode even: the rest is the token text (any string, as it arrives in
//!   an `Authorization` header);
//! * mode odd: `header JSON 0xFF claims JSON`, which the harness signs with
//!   the trusted issuer's key, so the claim checks behind the signature are
//!   reached (small integer `exp`/`nbf`/`iat` are offsets from now).
//!
//! Invariants, beyond "no panic":
//! * a token that verifies was signed by the trusted key (the signature is
//!   recomputed: Ed25519 is deterministic);
//! * what it yields is well formed: the configured issuer, not expired,
//!   an actor chain within `MAX_ACTOR_DEPTH`, no control characters in
//!   identifiers;
//! * the verified-claims cache answers exactly as a fresh verification.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use mandate_authn::Authenticator;
use mandate_fuzz::{AUDIENCE, ISSUER, ISSUER_PEM, finding, runtime, sign_raw, split_ff};
use std::sync::LazyLock;

struct Fixture {
    authn: Authenticator,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = mandate_fuzz::scratch_dir();
    let jwks = mandate_fuzz::write_jwks(dir.path());
    let authn = runtime().block_on(mandate_fuzz::authenticator(&jwks, AUDIENCE, false));
    Fixture { authn, _dir: dir }
});

/// Whether `token`'s signature is the trusted key's over its first two parts.
fn signed_by_issuer(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(h), Ok(p), Ok(sig)) = (
        URL_SAFE_NO_PAD.decode(h),
        URL_SAFE_NO_PAD.decode(p),
        URL_SAFE_NO_PAD.decode(sig),
    ) else {
        return false;
    };
    let ours = sign_raw(ISSUER_PEM, &h, &p);
    ours.rsplit('.')
        .next()
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .is_some_and(|s| s == sig)
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, claims) = split_ff(rest);
        let claims = match serde_json::from_slice::<serde_json::Value>(claims) {
            Ok(mut v) => {
                mandate_fuzz::relative_times(&mut v, &["exp", "nbf", "iat"]);
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => claims.to_vec(),
        };
        sign_raw(ISSUER_PEM, header, &claims)
    };
    let authn = &FIXTURE.authn;
    runtime().block_on(async {
        let before = mandate_fuzz::now();
        let fresh = authn.verify_uncached(&token).await;
        let cached_first = authn.verify(&token).await;
        let cached_again = authn.verify(&token).await;
        // A second boundary crossed mid-way may legitimately expire it.
        let same_second = mandate_fuzz::now() == before;
        match (&fresh, &cached_first, &cached_again) {
            (Ok(a), Ok(b), Ok(c)) if a == b && b == c => {}
            (Err(_), Err(_), Err(_)) => {}
            _ if !same_second => {}
            _ => finding(format!(
                "cache disagrees: uncached {fresh:?}, first {cached_first:?}, again {cached_again:?}"
            )),
        }
        let Ok(p) = fresh else { return };
        if !signed_by_issuer(&token) {
            finding(format!("verified a token the issuer did not sign: {token}"));
        }
        if p.iss() != ISSUER {
            finding(format!("issuer {:?}", p.iss()));
        }
        if p.exp().saturating_add(authn.leeway_secs()) < before {
            finding(format!("expired token accepted: exp {}", p.exp()));
        }
        if p.act().len() > mandate_authn::MAX_ACTOR_DEPTH {
            finding(format!("actor chain of {}", p.act().len()));
        }
        let ids = std::iter::once(p.sub())
            .chain(p.act().iter().map(String::as_str))
            .chain(p.task_id())
            .chain(p.sid())
            .chain(p.build())
            .chain(p.jti());
        for id in ids {
            if id.is_empty() || id.chars().any(char::is_control) {
                finding(format!("identifier {id:?} accepted"));
            }
        }
    });
});
