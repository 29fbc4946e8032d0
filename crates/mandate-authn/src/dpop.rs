//! DPoP (RFC 9449): proof-of-possession for sender-constrained tokens.
//!
//! Hand-written because no maintained Rust crate verifies DPoP proofs on
//! the server side with the `jsonwebtoken` + aws-lc-rs stack Mandate
//! already uses; the checks are few and each is listed in RFC 9449 §4.3:
//!
//! 1. one compact JWS, header `typ` = `dpop+jwt`, an allow-listed
//!    asymmetric `alg`, a public `jwk` (never a private one);
//! 2. the signature verifies under that `jwk`;
//! 3. `htm` and `htu` match the request (`htu` without query and fragment);
//! 4. `iat` is recent (within [`MAX_PROOF_AGE`] plus leeway);
//! 5. `jti` has not been seen (a bounded replay cache, entries kept until
//!    the proof would be stale anyway);
//! 6. at a resource: `ath` = base64url(SHA-256(access token)), and the key's
//!    thumbprint equals the token's `cnf.jkt`;
//! 7. when nonces are required: `nonce` is one this server issued recently.
//!
//! The broker uses the same verifier at its token endpoint, where the proof
//! key's thumbprint becomes the issued token's `cnf.jkt`.

use crate::jwks::usable_key;
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::str::FromStr;

/// How old a proof (`iat`) may be.
pub const MAX_PROOF_AGE: u64 = 60;
/// Largest proof accepted, in bytes.
const MAX_PROOF_BYTES: usize = 8 * 1024;
/// How long a server nonce stays valid (it is accepted for this window and
/// the previous one).
const NONCE_WINDOW_SECS: u64 = 300;

/// Why a DPoP proof was refused. `Display` is safe for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// No proof where one is required.
    #[error("a DPoP proof is required")]
    Missing,
    /// More than one `DPoP` header.
    #[error("exactly one DPoP proof is allowed")]
    Multiple,
    /// Not a well-formed proof.
    #[error("malformed DPoP proof")]
    Malformed,
    /// `typ` is not `dpop+jwt`, or the algorithm or key is unacceptable.
    #[error("DPoP proof header is not acceptable")]
    Header,
    /// The signature does not verify.
    #[error("DPoP proof signature is invalid")]
    Signature,
    /// `htm` or `htu` does not match the request.
    #[error("DPoP proof is for another request")]
    WrongRequest,
    /// `iat` is too old or in the future.
    #[error("DPoP proof is stale")]
    Stale,
    /// The `jti` was seen before.
    #[error("DPoP proof was replayed")]
    Replayed,
    /// `ath` does not match the access token.
    #[error("DPoP proof is not bound to this access token")]
    TokenMismatch,
    /// The proof key is not the one the token is bound to.
    #[error("DPoP proof key does not match the token's binding")]
    KeyMismatch,
    /// The nonce is missing or not current (answer `use_dpop_nonce`).
    #[error("a current DPoP nonce is required")]
    UseNonce,
    /// The replay cache is full: refusing is the safe answer.
    #[error("too many DPoP proofs in flight")]
    Busy,
}

/// What one request must prove.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The request URL as the server is reached (`htu`).
    pub url: &'a str,
    /// At a resource server: the access token presented with the proof.
    pub access_token: Option<&'a str>,
    /// At a resource server: the token's `cnf.jkt`.
    pub jkt: Option<&'a str>,
}

/// Single-use identifiers (DPoP `jti`, client assertion `jti`), kept until
/// they would be refused as expired anyway. Bounded: when full of live
/// entries it refuses new ones (fail closed) rather than forgetting.
#[derive(Debug)]
pub struct ReplayCache {
    seen: DashMap<[u8; 32], u64>,
    capacity: usize,
}

impl ReplayCache {
    /// A cache for at most `capacity` live entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id` (any bytes; hashed) as used until `expires` (Unix
    /// seconds). `Ok(true)` when it is new, `Ok(false)` when it was seen,
    /// `Err(())` when the cache is full.
    #[expect(clippy::result_unit_err, reason = "one failure: full")]
    pub fn first_use(&self, id: &[u8], expires: u64, now: u64) -> Result<bool, ()> {
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, exp| *exp >= now);
            if self.seen.len() >= self.capacity {
                return Err(());
            }
        }
        let key: [u8; 32] = Sha256::digest(id).into();
        match self.seen.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() < now {
                    // Expired entry: the id is usable again only because
                    // whatever carried it is refused as stale anyway.
                    e.insert(expires);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(expires);
                Ok(true)
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Verifies DPoP proofs and issues server nonces.
pub struct DpopVerifier {
    replay: ReplayCache,
    nonce_key: hmac::Key,
    require_nonce: bool,
    leeway: u64,
    clock: mandate_core::Clock,
}

impl std::fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("require_nonce", &self.require_nonce)
            .field("seen", &self.replay.len())
            .finish_non_exhaustive()
    }
}

/// The `ath` of an access token.
pub fn token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// `htu` comparison form: scheme and host lower-cased, no query or fragment.
fn normalise_url(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let mut s = format!("{}://{}", u.scheme(), u.host_str()?.to_ascii_lowercase());
    if let Some(port) = u.port() {
        s.push_str(&format!(":{port}"));
    }
    s.push_str(u.path());
    Some(s)
}

impl DpopVerifier {
    /// A verifier; `require_nonce` makes every proof carry a server nonce.
    pub fn new(require_nonce: bool, leeway: u64) -> Result<Self, crate::AuthnError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let nonce_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| crate::AuthnError::Config("cannot create a DPoP nonce key".into()))?;
        Ok(Self {
            replay: ReplayCache::new(200_000),
            nonce_key,
            require_nonce,
            leeway: leeway.min(crate::MAX_LEEWAY_SECS),
            clock: mandate_core::Clock::system(),
        })
    }

    /// Checks proof times and nonce windows against `clock` instead of the
    /// system's.
    #[must_use]
    pub fn with_clock(mut self, clock: mandate_core::Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_unsigned_secs().unwrap_or(0)
    }

    /// Whether proofs must carry a nonce.
    pub fn requires_nonce(&self) -> bool {
        self.require_nonce
    }

    /// A fresh server nonce (send it as `DPoP-Nonce`).
    pub fn nonce(&self) -> String {
        self.nonce_for(self.now_secs() / NONCE_WINDOW_SECS)
    }

    fn nonce_for(&self, window: u64) -> String {
        let tag = hmac::sign(&self.nonce_key, &window.to_be_bytes());
        let mut bytes = window.to_be_bytes().to_vec();
        bytes.extend_from_slice(tag.as_ref().get(..16).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn nonce_ok(&self, nonce: &str) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Some(window) = bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
        else {
            return false;
        };
        let current = self.now_secs() / NONCE_WINDOW_SECS;
        if window != current && window.saturating_add(1) != current {
            return false;
        }
        // Constant-time comparison of the whole expected value.
        let expected = self.nonce_for(window);
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), nonce.as_bytes())
            .is_ok()
    }

    /// Verifies `proof` for `req`; returns the proof key's RFC 7638
    /// thumbprint (`jkt`).
    pub fn verify(&self, proof: &str, req: ProofRequest<'_>) -> Result<String, DpopError> {
        if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
            return Err(DpopError::Malformed);
        }
        // 1. Header.
        let header_b64 = proof.split('.').next().ok_or(DpopError::Malformed)?;
        if proof.split('.').count() != 3 {
            return Err(DpopError::Malformed);
        }
        let header: Value = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(DpopError::Malformed)?;
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(DpopError::Header);
        }
        if header.get("crit").is_some() {
            return Err(DpopError::Header);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| Algorithm::from_str(a).ok())
            .filter(|a| {
                matches!(
                    a,
                    Algorithm::EdDSA
                        | Algorithm::ES256
                        | Algorithm::ES384
                        | Algorithm::RS256
                        | Algorithm::PS256
                )
            })
            .ok_or(DpopError::Header)?;
        let jwk_value = header.get("jwk").ok_or(DpopError::Header)?;
        // A private key in the header would mean the client leaks it.
        if jwk_value.get("d").is_some() || jwk_value.get("k").is_some() {
            return Err(DpopError::Header);
        }
        let jwk: Jwk = serde_json::from_value(jwk_value.clone()).map_err(|_| DpopError::Header)?;
        let key = usable_key(&jwk).map_err(|_| DpopError::Header)?;
        if !key.accepts(alg) {
            return Err(DpopError::Header);
        }

        // 2. Signature (no registered claim is required by the library;
        //    the DPoP claims are checked below).
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            proof,
            &key.decoding,
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => DpopError::Signature,
            _ => DpopError::Malformed,
        })?
        .claims;

        // 3. The request.
        let htm = claims.get("htm").and_then(Value::as_str);
        let htu = claims.get("htu").and_then(Value::as_str);
        let (Some(htm), Some(htu)) = (htm, htu) else {
            return Err(DpopError::Malformed);
        };
        if htm != req.method {
            return Err(DpopError::WrongRequest);
        }
        match (normalise_url(htu), normalise_url(req.url)) {
            (Some(a), Some(b)) if a == b => {}
            _ => return Err(DpopError::WrongRequest),
        }

        // 4. Freshness.
        let now = self.now_secs();
        let iat = claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or(DpopError::Malformed)?;
        if iat > now.saturating_add(self.leeway)
            || iat
                .saturating_add(MAX_PROOF_AGE)
                .saturating_add(self.leeway)
                < now
        {
            return Err(DpopError::Stale);
        }

        // 6. Token binding (before the replay cache, so a proof refused for
        //    another reason does not burn its jti).
        let jkt = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| DpopError::Header)?;
        if let Some(token) = req.access_token {
            let ath = claims.get("ath").and_then(Value::as_str);
            if ath != Some(token_hash(token).as_str()) {
                return Err(DpopError::TokenMismatch);
            }
        }
        if let Some(bound) = req.jkt
            && bound != jkt
        {
            return Err(DpopError::KeyMismatch);
        }

        // 7. Nonce.
        if self.require_nonce {
            let ok = claims
                .get("nonce")
                .and_then(Value::as_str)
                .is_some_and(|n| self.nonce_ok(n));
            if !ok {
                return Err(DpopError::UseNonce);
            }
        }

        // 5. Single use, last: only a proof that passed everything else is
        //    remembered.
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(DpopError::Malformed)?;
        let until = iat
            .saturating_add(MAX_PROOF_AGE)
            .saturating_add(self.leeway.saturating_mul(2));
        let id = format!("{jkt}\n{jti}");
        match self.replay.first_use(id.as_bytes(), until, now) {
            Ok(true) => Ok(jkt),
            Ok(false) => Err(DpopError::Replayed),
            Err(()) => Err(DpopError::Busy),
        }
    }
}

#[cfg(test)]
#[path = "dpop_tests.rs"]
mod tests;
