//! Issuer key sets: loading a JWKS (file or URL), keeping only keys that
//! are safe to verify with, and re-loading on an unknown `kid`.

use crate::{AuthnError, JwksSource};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Largest JWKS document accepted, from a file or a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;
/// At most one re-load per issuer in this interval, however many unknown
/// `kid`s arrive: an attacker cannot turn random `kid`s into a request
/// flood against the IdP (or a file-read loop).
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// A key set older than this is re-loaded in the background (without
/// blocking any verify), so a key removed from the JWKS stops verifying
/// within roughly this time even when no unknown `kid` arrives.
const MAX_KEY_SET_AGE: Duration = Duration::from_secs(300);
/// Timeout for one JWKS fetch.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What kind of public key a JWK holds. Decides which `alg`s it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`. This is the check that
    /// stops an RSA key being used for ES256, a P-256 key for ES384, etc.
    pub(crate) fn supports(self, alg: Algorithm) -> bool {
        match self {
            Self::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Self::P256 => alg == Algorithm::ES256,
            Self::P384 => alg == Algorithm::ES384,
            Self::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One usable verification key.
#[derive(Debug)]
pub(crate) struct VerifyKey {
    pub(crate) kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) decoding: DecodingKey,
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.supports(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// An issuer's usable keys, by `kid`.
#[derive(Debug)]
pub(crate) struct KeySet {
    keys: HashMap<String, Arc<VerifyKey>>,
    /// The JWKs as loaded, to tell whether a re-load changed anything.
    jwks: BTreeMap<String, Jwk>,
    loaded_at: Instant,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are unusable (symmetric, wrong
    /// `use`, weak, unknown curve, no `kid`, inconsistent `alg`) are skipped
    /// with a warning; a document with no usable key at all is an error.
    pub(crate) fn parse(issuer: &str, bytes: &[u8]) -> Result<Self, AuthnError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(bytes)
            .map_err(|e| AuthnError::jwks(issuer, format!("not a JWKS document: {e}")))?;

        let mut keys = HashMap::new();
        let mut jwks = BTreeMap::new();
        for (index, value) in doc.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(e) => {
                    tracing::warn!(issuer, index, error = %e, "skipping unparsable JWK");
                    continue;
                }
            };
            let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
                tracing::warn!(issuer, index, "skipping JWK without kid");
                continue;
            };
            if keys.contains_key(&kid) {
                tracing::warn!(issuer, kid, "skipping JWK with duplicate kid");
                continue;
            }
            match usable_key(&jwk) {
                Ok(key) => {
                    keys.insert(kid.clone(), Arc::new(key));
                    jwks.insert(kid, jwk);
                }
                Err(why) => tracing::warn!(issuer, kid, why, "skipping unusable JWK"),
            }
        }
        if keys.is_empty() {
            return Err(AuthnError::jwks(
                issuer,
                "JWKS contains no usable signing key",
            ));
        }
        Ok(Self {
            keys,
            jwks,
            loaded_at: Instant::now(),
        })
    }

    pub(crate) fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.get(kid).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Checks one JWK and builds its verification key, or says why not.
pub(crate) fn usable_key(jwk: &Jwk) -> Result<VerifyKey, &'static str> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("use is not sig"),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include verify");
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => {
            let alg = Algorithm::try_from(ka).map_err(|_| "unsupported alg")?;
            if !is_asymmetric(alg) {
                return Err("symmetric alg");
            }
            Some(alg)
        }
    };
    let (kind, decoding) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64(&p.n)?;
            let e = b64(&p.e)?;
            if bit_length(&n) < MIN_RSA_BITS {
                return Err("RSA modulus shorter than 2048 bits");
            }
            if e.is_empty() {
                return Err("RSA exponent empty");
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                _ => return Err("unsupported EC curve"),
            };
            if b64(&p.x)?.len() != len || b64(&p.y)?.len() != len {
                return Err("EC coordinate has the wrong length");
            }
            let key = DecodingKey::from_ec_components(&p.x, &p.y).map_err(|_| "bad EC key")?;
            (kind, key)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve");
            }
            if b64(&p.x)?.len() != 32 {
                return Err("Ed25519 key has the wrong length");
            }
            let key = DecodingKey::from_ed_components(&p.x).map_err(|_| "bad OKP key")?;
            (KeyKind::Ed25519, key)
        }
        // A symmetric key in a JWKS would let anyone holding the JWKS mint
        // tokens; it is never loaded.
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) key"),
        _ => return Err("unsupported key type"),
    };
    if let Some(alg) = alg
        && !kind.supports(alg)
    {
        return Err("alg does not match key type");
    }
    Ok(VerifyKey {
        kind,
        alg,
        decoding,
    })
}

fn b64(s: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "key parameter is not base64url")
}

/// Bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let mut rest = bytes.iter().skip_while(|b| **b == 0);
    match rest.next() {
        None => 0,
        Some(first) => {
            let tail = rest.count();
            tail.saturating_mul(8)
                .saturating_add(8usize.saturating_sub(first.leading_zeros() as usize))
        }
    }
}

/// The algorithms this crate will ever verify: public-key signatures only.
/// `_` refuses, so an algorithm added to `jsonwebtoken` later is not
/// silently allowed.
pub(crate) fn is_asymmetric(alg: Algorithm) -> bool {
    match alg {
        Algorithm::ES256
        | Algorithm::ES384
        | Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512
        | Algorithm::EdDSA => true,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => false,
        _ => false,
    }
}

/// One configured issuer and its current keys.
#[derive(Debug)]
pub(crate) struct IssuerKeys {
    pub(crate) issuer: String,
    source: JwksSource,
    client: reqwest::Client,
    current: RwLock<Arc<KeySet>>,
    /// Bumped whenever a re-load changes the key set, so cached principals
    /// verified under an older set are re-verified (a removed key stops
    /// working at once, not at the token's `exp`).
    generation: AtomicU64,
    /// Time of the last re-load attempt. The async mutex also serialises
    /// re-loads, so a burst of unknown `kid`s causes one fetch.
    last_refresh: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl IssuerKeys {
    /// Loads the issuer's JWKS once; failure is a startup error.
    pub(crate) async fn load(
        issuer: String,
        source: JwksSource,
        client: reqwest::Client,
    ) -> Result<Self, AuthnError> {
        let set = read_source(&issuer, &source, &client).await?;
        tracing::info!(issuer, keys = set.len(), "loaded JWKS");
        Ok(Self {
            issuer,
            source,
            client,
            current: RwLock::new(Arc::new(set)),
            generation: AtomicU64::new(0),
            // `None`: the first unknown kid may re-load immediately.
            last_refresh: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<KeySet> {
        // A poisoned lock only means a writer panicked between two whole-Arc
        // assignments; the value is still a complete key set.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key for `kid`. A known kid never waits on I/O. An unknown kid
    /// re-loads the JWKS (at most once per [`MIN_REFRESH_INTERVAL`]) and
    /// looks again, once.
    pub(crate) async fn key(self: &Arc<Self>, kid: &str) -> Result<Arc<VerifyKey>, AuthnError> {
        let set = self.current();
        if let Some(key) = set.get(kid) {
            if set.loaded_at.elapsed() > MAX_KEY_SET_AGE {
                self.refresh_in_background();
            }
            return Ok(key);
        }
        let mut last = self.last_refresh.lock().await;
        // Another task may have re-loaded while this one waited.
        if let Some(key) = self.current().get(kid) {
            return Ok(key);
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL) {
            tracing::debug!(
                issuer = self.issuer,
                "unknown kid; JWKS re-load rate-limited"
            );
            return Err(self.unknown_key());
        }
        *last = Some(Instant::now());
        self.reload().await;
        drop(last);
        self.current().get(kid).ok_or_else(|| self.unknown_key())
    }

    fn unknown_key(&self) -> AuthnError {
        AuthnError::UnknownKey {
            issuer: self.issuer.clone(),
        }
    }

    /// Re-loads the key set; on failure keeps the current one. Callers hold
    /// the refresh lock.
    async fn reload(&self) {
        match read_source(&self.issuer, &self.source, &self.client).await {
            Ok(set) => self.install(set),
            // The old keys stay in force. An unknown kid is then refused as
            // a bad token (401), not an outage: random kids must not be a
            // way to make the gateway report itself unavailable.
            Err(e) => tracing::warn!(error = %e, "JWKS re-load failed; keeping current keys"),
        }
    }

    fn install(&self, set: KeySet) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let changed = current.jwks != set.jwks;
        *current = Arc::new(set);
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            tracing::info!(issuer = self.issuer, keys = current.len(), "JWKS changed");
        }
    }

    /// Starts a re-load on the current tokio runtime unless one is running
    /// or one ran within [`MIN_REFRESH_INTERVAL`]. Never waits.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(mut guard) = Arc::clone(&self.last_refresh).try_lock_owned() else {
            return;
        };
        if guard.is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL) {
            return;
        }
        *guard = Some(Instant::now());
        let this = Arc::clone(self);
        handle.spawn(async move {
            this.reload().await;
            drop(guard);
        });
    }
}

async fn read_source(
    issuer: &str,
    source: &JwksSource,
    client: &reqwest::Client,
) -> Result<KeySet, AuthnError> {
    let bytes = match source {
        JwksSource::File(path) => read_file(issuer, path).await?,
        JwksSource::Url(url) => fetch(issuer, url, client).await?,
    };
    KeySet::parse(issuer, &bytes)
}

async fn read_file(issuer: &str, path: &std::path::Path) -> Result<Vec<u8>, AuthnError> {
    let fail = |e: std::io::Error| AuthnError::jwks(issuer, format!("{}: {e}", path.display()));
    let meta = tokio::fs::metadata(path).await.map_err(fail)?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(AuthnError::jwks(
            issuer,
            format!("{}: larger than {MAX_JWKS_BYTES} bytes", path.display()),
        ));
    }
    tokio::fs::read(path).await.map_err(fail)
}

async fn fetch(issuer: &str, url: &str, client: &reqwest::Client) -> Result<Vec<u8>, AuthnError> {
    // `without_url`: reqwest errors would otherwise repeat the URL, which
    // is already in the message once.
    let fail = |e: reqwest::Error| AuthnError::jwks(issuer, format!("{url}: {}", e.without_url()));
    let mut response = client
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .send()
        .await
        .map_err(fail)?;
    let status = response.status();
    if !status.is_success() {
        return Err(AuthnError::jwks(issuer, format!("{url}: HTTP {status}")));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(AuthnError::jwks(
            issuer,
            format!("{url}: response too large"),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fail)? {
        if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
            return Err(AuthnError::jwks(
                issuer,
                format!("{url}: response too large"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a JWKS URL is acceptable: `https`, or `http` to a loopback host
/// only (a development IdP on the same machine). Keys fetched in clear text
/// from elsewhere could be replaced in transit.
pub(crate) fn url_allowed(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// The HTTP client for JWKS fetches: 5 s timeout, redirects followed only
/// to allowed URLs and at most 3 times.
pub(crate) fn http_client() -> Result<reqwest::Client, AuthnError> {
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > 3 || !url_allowed(attempt.url()) {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(redirects)
        .build()
        .map_err(|e| AuthnError::Config(format!("cannot build HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_counts_from_the_first_set_bit() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0, 0x7f, 0xff]), 15);
    }

    #[test]
    fn symmetric_and_mismatched_keys_are_never_loaded() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "pinned-wrong", "alg": "ES256",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ok",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        let set = KeySet::parse("iss", doc.to_string().as_bytes());
        assert!(set.is_ok());
        if let Ok(set) = set {
            assert_eq!(set.len(), 1);
            assert!(set.get("ok").is_some());
            assert!(set.get("hmac").is_none());
        }
        let only_oct = serde_json::json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]});
        assert!(matches!(
            KeySet::parse("iss", only_oct.to_string().as_bytes()),
            Err(AuthnError::JwksUnavailable { .. })
        ));
    }

    #[test]
    fn key_kinds_accept_only_their_algorithms() {
        assert!(KeyKind::Ed25519.supports(Algorithm::EdDSA));
        assert!(!KeyKind::Ed25519.supports(Algorithm::ES256));
        assert!(!KeyKind::P256.supports(Algorithm::ES384));
        assert!(!KeyKind::P384.supports(Algorithm::ES256));
        assert!(!KeyKind::Rsa.supports(Algorithm::HS256));
        assert!(KeyKind::Rsa.supports(Algorithm::PS256));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let ok = |s: &str| {
            reqwest::Url::parse(s)
                .map(|u| url_allowed(&u))
                .unwrap_or(false)
        };
        assert!(ok("https://idp.example/jwks"));
        assert!(ok("http://127.0.0.1:8080/jwks"));
        assert!(ok("http://localhost/jwks"));
        assert!(ok("http://[::1]/jwks"));
        assert!(!ok("http://idp.example/jwks"));
        assert!(!ok("file:///etc/passwd"));
    }
}
