#![doc = include_str!("../README.md")]

mod cache;
pub mod challenge;
mod claims;
pub mod dev;
pub mod dpop;
mod error;
mod jwks;
pub mod oidc;
mod principal;

pub use challenge::Challenge;
pub use claims::MAX_ACTOR_DEPTH;
pub use error::AuthnError;
/// Re-exported so callers can name algorithms without depending on
/// `jsonwebtoken` themselves.
pub use jsonwebtoken::Algorithm;
pub use principal::Principal;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cache::{PrincipalCache, TokenHash};
use claims::{Clock, RawClaims};
use jwks::{IssuerKeys, VerifyKey};
use mandate_core::ScopeCeilings;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// Largest clock-skew allowance honoured; larger configured values are clamped.
pub const MAX_LEEWAY_SECS: u64 = 60;
/// Leeway used by [`AuthnConfig::new`].
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Largest bearer token accepted, in bytes. Checked before any decoding,
/// hashing or cache lookup.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The token of an `Authorization` header value using `scheme` (`Bearer`,
/// `DPoP`), the scheme matched case-insensitively (RFC 9110 §11.1).
pub fn token_of<'a>(authorization: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, token) = authorization.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// How tokens are authenticated: which issuers are trusted (and where their
/// keys are), for which audience, with which algorithms.
#[derive(Debug, Clone)]
pub struct AuthnConfig {
    /// Trusted issuers. A token's `iss` must equal one exactly (no
    /// normalisation of trailing slashes or case).
    pub issuers: Vec<IssuerConfig>,
    /// `aud` must contain exactly this value (string or array form).
    pub audience: String,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`; clamped to
    /// [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// Allowed signature algorithms. Only asymmetric ones are accepted:
    /// [`Authenticator::new`] refuses a list containing HS256/HS384/HS512.
    pub algorithms: Vec<Algorithm>,
    /// Refuse tokens that carry no `act` (no agent identified).
    pub require_actor: bool,
}

impl AuthnConfig {
    /// A configuration with the default algorithms, [`DEFAULT_LEEWAY_SECS`]
    /// and `require_actor: false`.
    pub fn new(issuers: Vec<IssuerConfig>, audience: impl Into<String>) -> Self {
        Self {
            issuers,
            audience: audience.into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            algorithms: Self::default_algorithms(),
            require_actor: false,
        }
    }

    /// EdDSA, ES256, RS256, PS256.
    pub fn default_algorithms() -> Vec<Algorithm> {
        vec![
            Algorithm::EdDSA,
            Algorithm::ES256,
            Algorithm::RS256,
            Algorithm::PS256,
        ]
    }
}

/// One trusted issuer and where its public keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// Its JWKS.
    pub jwks: JwksSource,
}

/// Where an issuer's JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local JWKS file, re-read when an unknown `kid` arrives.
    File(PathBuf),
    /// An `https` URL (or `http` to a loopback host), fetched with a 5 s
    /// timeout and re-fetched when an unknown `kid` arrives.
    Url(String),
}

/// Verifies bearer tokens and yields [`Principal`]s. `Send + Sync`; share
/// it in an `Arc`.
pub struct Authenticator {
    /// Index = issuer number in cache entries.
    issuers: Vec<Arc<IssuerKeys>>,
    audience: String,
    leeway: u64,
    require_actor: bool,
    /// One prepared `jsonwebtoken` validation per allowed algorithm; its
    /// `algorithms` holds exactly that one.
    validations: HashMap<Algorithm, jsonwebtoken::Validation>,
    cache: PrincipalCache,
    /// JWT `typ` values accepted besides the access-token ones.
    extra_types: Vec<String>,
    /// What "now" is for `exp`, `nbf` and `iat`.
    clock: mandate_core::Clock,
    /// Scope ceilings of agents, applied to every principal this verifier
    /// hands out (so no caller can forget them).
    ceilings: Option<Arc<dyn ScopeCeilings>>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Authenticator>();
};

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self.issuers.iter().map(|i| i.issuer.as_str()).collect();
        let mut algorithms: Vec<String> =
            self.validations.keys().map(|a| format!("{a:?}")).collect();
        algorithms.sort();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("algorithms", &algorithms)
            .field("require_actor", &self.require_actor)
            .field("cached", &self.cache.len())
            .finish()
    }
}

/// A token whose signature has been checked, and what the cache needs.
struct Verified {
    principal: Principal,
    /// `cnf.jkt`, for a DPoP-bound token.
    jkt: Option<String>,
    issuer: usize,
    generation: u64,
}

impl Authenticator {
    /// Checks the configuration and loads every issuer's JWKS (a file must
    /// parse; a URL must fetch). Errors name the issuer and the problem.
    pub async fn new(cfg: AuthnConfig) -> Result<Self, AuthnError> {
        let AuthnConfig {
            issuers,
            audience,
            leeway_secs,
            algorithms,
            require_actor,
        } = cfg;

        if audience.is_empty() {
            return Err(AuthnError::Config("audience must not be empty".into()));
        }
        if algorithms.is_empty() {
            return Err(AuthnError::Config("no algorithms allowed".into()));
        }
        if let Some(bad) = algorithms.iter().find(|a| !jwks::is_asymmetric(**a)) {
            return Err(AuthnError::Config(format!(
                "algorithm {bad:?} is not allowed: only asymmetric signature algorithms \
                 (EdDSA, ES256, ES384, RS*, PS*) can be used"
            )));
        }
        let leeway = if leeway_secs > MAX_LEEWAY_SECS {
            tracing::warn!(
                configured = leeway_secs,
                used = MAX_LEEWAY_SECS,
                "token leeway clamped"
            );
            MAX_LEEWAY_SECS
        } else {
            leeway_secs
        };

        if issuers.is_empty() {
            return Err(AuthnError::Config("no trusted issuers configured".into()));
        }
        let mut seen = HashSet::new();
        for issuer in &issuers {
            if issuer.issuer.is_empty() {
                return Err(AuthnError::Config("issuer must not be empty".into()));
            }
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(AuthnError::Config(format!(
                    "issuer {:?} is configured twice",
                    issuer.issuer
                )));
            }
            if let JwksSource::Url(url) = &issuer.jwks {
                let allowed = reqwest::Url::parse(url).is_ok_and(|u| jwks::url_allowed(&u));
                if !allowed {
                    return Err(AuthnError::jwks(
                        &issuer.issuer,
                        format!("{url}: JWKS URL must be https (or http to a loopback host)"),
                    ));
                }
            }
        }

        let client = jwks::http_client()?;
        let mut loaded = Vec::with_capacity(issuers.len());
        for IssuerConfig { issuer, jwks } in issuers {
            loaded.push(Arc::new(
                IssuerKeys::load(issuer, jwks, client.clone()).await?,
            ));
        }

        let validations = algorithms
            .into_iter()
            .map(|alg| (alg, validation(alg, &audience, leeway)))
            .collect();

        Ok(Self {
            issuers: loaded,
            audience,
            leeway,
            require_actor,
            validations,
            cache: PrincipalCache::new(cache::DEFAULT_CAPACITY),
            extra_types: Vec::new(),
            clock: mandate_core::Clock::system(),
            ceilings: None,
        })
    }

    /// Narrows every principal this verifier hands out to the scope
    /// ceilings of the agents in its delegation chain (each agent bounds
    /// what passes through it). Applied inside verification, on every
    /// path (bearer, DPoP once proven, uncached), so no caller can forget it.
    #[must_use]
    pub fn with_ceilings(mut self, ceilings: Arc<dyn ScopeCeilings>) -> Self {
        self.ceilings = Some(ceilings);
        self
    }

    /// The principal as handed out: narrowed to the ceilings in force now.
    fn narrowed(&self, mut principal: Principal) -> Principal {
        if let Some(ceilings) = &self.ceilings
            && ceilings.any()
        {
            for agent in principal.act().to_vec() {
                if let Some(ceiling) = ceilings.ceiling(&agent) {
                    principal.narrow(&ceiling);
                }
            }
        }
        principal
    }

    /// Checks token lifetimes against `clock` instead of the system's.
    #[must_use]
    pub fn with_clock(mut self, clock: mandate_core::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Also accepts tokens whose header `typ` is one of `types` (e.g. the
    /// broker's client assertions, `client-authentication+jwt`).
    #[must_use]
    pub fn accept_types(mut self, types: &[&str]) -> Self {
        self.extra_types
            .extend(types.iter().map(|t| (*t).to_owned()));
        self
    }

    /// The configured audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The leeway in force, after clamping.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway
    }

    /// Verifies a compact JWS bearer token, answering from the cache when
    /// this exact token was verified before and has not expired.
    /// A DPoP-bound token (`cnf.jkt`) is refused here: only
    /// [`Authenticator::verify_bound`] accepts one, as a [`Bound`] that
    /// yields its principal only with a valid proof.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthnError> {
        let result = match self.verify_cached(token).await {
            Ok((_, Some(_))) => Err(AuthnError::SenderConstrained),
            Ok((principal, None)) => Ok(self.narrowed(principal)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::debug!(error = %e, "bearer token refused");
        }
        result
    }

    /// Verifies a DPoP-bound token (RFC 9449 §7): the result names its
    /// subject but authorises nothing until [`Bound::prove`] checks a proof
    /// made with the bound key. A token without `cnf.jkt` is refused
    /// (the DPoP scheme is only for bound tokens).
    pub async fn verify_bound(&self, token: &str) -> Result<Bound, AuthnError> {
        let result = match self.verify_cached(token).await {
            Ok((principal, Some(jkt))) => Ok(Bound {
                principal: self.narrowed(principal),
                jkt,
            }),
            Ok((_, None)) => Err(AuthnError::NotSenderConstrained),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::debug!(error = %e, "token refused");
        }
        result
    }

    async fn verify_cached(&self, token: &str) -> Result<(Principal, Option<String>), AuthnError> {
        check_size(token)?;
        let clock = self.now()?;
        let key = TokenHash::of(token);
        let generation_of = |i: usize| self.issuers.get(i).map(|k| k.generation());
        if let Some(principal) = self.cache.get(&key, clock, generation_of) {
            return Ok(principal);
        }
        let verified = self.verify_token(token, clock).await?;
        self.cache.insert_bound(
            key,
            verified.principal.clone(),
            verified.jkt.clone(),
            verified.issuer,
            verified.generation,
            clock,
        );
        Ok((verified.principal, verified.jkt))
    }

    /// Verifies a token without the cache (for benchmarks and callers that
    /// must not share state). Same checks as [`Authenticator::verify`].
    pub async fn verify_uncached(&self, token: &str) -> Result<Principal, AuthnError> {
        let clock = self.now()?;
        match self.verify_token(token, clock).await? {
            Verified { jkt: Some(_), .. } => Err(AuthnError::SenderConstrained),
            verified => Ok(self.narrowed(verified.principal)),
        }
    }

    /// Verifies a token without the cache and returns, with the principal,
    /// every claim of its (now verified) payload, for callers that read
    /// claims a [`Principal`] does not carry (the broker: `groups`,
    /// `may_act`, `cnf`). Same checks as [`Authenticator::verify`].
    pub async fn verify_with_claims(
        &self,
        token: &str,
    ) -> Result<(Principal, serde_json::Map<String, serde_json::Value>), AuthnError> {
        let clock = self.now()?;
        let verified = self.verify_token(token, clock).await?;
        // The signature covered these bytes; decoding them again is cheaper
        // than asking the JWT library to verify a second time.
        let payload = token
            .split('.')
            .nth(1)
            .ok_or(AuthnError::Malformed("not a compact JWS"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthnError::Malformed("payload is not base64url"))?;
        let claims = serde_json::from_slice(&bytes)
            .map_err(|_| AuthnError::Malformed("payload is not a JSON object"))?;
        Ok((verified.principal, claims))
    }

    /// The verification pipeline. The order matters: nothing about the
    /// token is trusted until step 5, so steps 1–4 only choose and refuse,
    /// and every refusal happens before any key is used.
    async fn verify_token(&self, token: &str, clock: Clock) -> Result<Verified, AuthnError> {
        // 1. Shape: three base64url segments within the size bound; the
        //    header and the (unverified) issuer are decoded.
        let unverified = UnverifiedToken::parse(token)?;

        // 2. Header: the algorithm must be allow-listed (this is what
        //    refuses `none` and every HMAC variant, whatever key an attacker
        //    hopes we would use as the secret), the type must be an access
        //    token, and no critical extension may be present. Embedded keys
        //    (`jwk`, `jku`, `x5u`, `x5c`) are never read.
        let alg = Algorithm::from_str(&unverified.header.alg)
            .ok()
            .filter(|a| self.validations.contains_key(a))
            .ok_or_else(|| AuthnError::AlgorithmNotAllowed(truncated(&unverified.header.alg)))?;
        unverified.header.check_type(&self.extra_types)?;
        if unverified.header.crit.is_some() {
            return Err(AuthnError::CriticalHeader);
        }

        // 3. Issuer: the unverified `iss` only selects which keys to try; a
        //    forged `iss` then fails the signature under that issuer's keys.
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, k)| k.issuer == unverified.iss)
            .ok_or(AuthnError::UnknownIssuer)?;

        // 4. Key: by `kid`, re-loading the JWKS once (rate-limited) for an
        //    unknown kid; its type must fit the algorithm. The generation is
        //    read first so a key-set change during this call invalidates
        //    the cache entry this call makes.
        let kid = unverified
            .header
            .kid
            .as_deref()
            .ok_or(AuthnError::MissingKid)?;
        let generation = issuer.generation();
        let key: Arc<VerifyKey> = issuer.key(kid).await?;
        if !key.accepts(alg) {
            return Err(AuthnError::KeyAlgorithmMismatch {
                issuer: issuer.issuer.clone(),
                kid: truncated(kid),
                alg,
            });
        }
        let validation = self
            .validations
            .get(&alg)
            .ok_or_else(|| AuthnError::AlgorithmNotAllowed(truncated(&unverified.header.alg)))?;

        // 5. Signature, audience, and presence of exp/iss/sub/aud.
        let data = jsonwebtoken::decode::<RawClaims>(token, &key.decoding, validation)?;

        // 6. Claims: time window, issuer, subject, actor chain, scope.
        let jkt = claims::cnf_jkt(&data.claims)?;
        let principal = claims::principal(data.claims, &issuer.issuer, clock, self.require_actor)?;
        Ok(Verified {
            principal,
            jkt,
            issuer: index,
            generation,
        })
    }

    /// Now, by this verifier's clock, with the leeway in force.
    fn now(&self) -> Result<Clock, AuthnError> {
        let now = self.clock.now_unsigned_secs().ok_or(AuthnError::Clock)?;
        Ok(Clock {
            now,
            leeway: self.leeway,
        })
    }
}

/// The `jsonwebtoken` validation for one algorithm. Time claims are not
/// checked here but in [`claims::principal`], against the same clock the
/// cache uses (and without the library's unchecked `now - leeway`).
fn validation(alg: Algorithm, audience: &str, leeway: u64) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = leeway;
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = true;
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v
}

fn check_size(token: &str) -> Result<(), AuthnError> {
    if token.is_empty() {
        return Err(AuthnError::Malformed("empty token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthnError::Malformed("token too large"));
    }
    Ok(())
}

/// Attacker-supplied text bound for logs.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A verified, sender-constrained token whose proof of possession has not
/// been checked yet: it names its subject (for the record of a refused
/// proof) but yields no [`Principal`] until [`Bound::prove`] succeeds.
#[derive(Debug)]
pub struct Bound {
    principal: Principal,
    jkt: String,
}

impl Bound {
    /// Who the token names, as a record keeps it (a refused proof of a
    /// valid token is what a stolen token looks like, and is audited).
    pub fn subject(&self) -> mandate_core::Subject {
        self.principal.subject()
    }

    /// The principal, once `proof` (the `DPoP` header) proves possession of
    /// the bound key for exactly this request (`method`, `url`, this
    /// `token`), checked by `verifier` (replay, freshness, nonce).
    pub fn prove(
        self,
        verifier: &dpop::DpopVerifier,
        proof: &str,
        method: &str,
        url: &str,
        token: &str,
    ) -> Result<Principal, dpop::DpopError> {
        verifier.verify(
            proof,
            dpop::ProofRequest {
                method,
                url,
                access_token: Some(token),
                jkt: Some(&self.jkt),
            },
        )?;
        Ok(self.principal)
    }
}

/// The JOSE header fields this crate reads. Derived, so a header that
/// repeats one of them is refused.
#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<serde_json::Value>,
}

impl RawHeader {
    /// `typ` may be absent, `JWT`, or the RFC 9068 access-token type. Other
    /// types (`dpop+jwt`, `logout+jwt`, `secevent+jwt`, …) are different
    /// kinds of JWT that must not pass as access tokens.
    fn check_type(&self, extra: &[String]) -> Result<(), AuthnError> {
        match &self.typ {
            None => Ok(()),
            Some(t)
                if ["JWT", "at+jwt", "application/at+jwt"]
                    .iter()
                    .any(|ok| t.eq_ignore_ascii_case(ok))
                    || extra.iter().any(|ok| t.eq_ignore_ascii_case(ok)) =>
            {
                Ok(())
            }
            Some(t) => Err(AuthnError::UnsupportedType(truncated(t))),
        }
    }
}

/// A token that has the JWS compact shape and nothing more. Its issuer is
/// a claim nobody has verified yet; only a key lookup may use it.
struct UnverifiedToken {
    header: RawHeader,
    iss: String,
}

impl UnverifiedToken {
    fn parse(token: &str) -> Result<Self, AuthnError> {
        check_size(token)?;
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthnError::Malformed("not a compact JWS"));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(AuthnError::Malformed("empty JWS segment"));
        }
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthnError::Malformed("header is not base64url"))?;
        let header: RawHeader = serde_json::from_slice(&header)
            .map_err(|_| AuthnError::Malformed("header is not a JOSE header"))?;

        #[derive(serde::Deserialize)]
        struct Peek {
            iss: Option<serde_json::Value>,
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthnError::Malformed("payload is not base64url"))?;
        let peek: Peek = serde_json::from_slice(&payload)
            .map_err(|_| AuthnError::Malformed("payload is not a JSON object"))?;
        let iss = match peek.iss {
            Some(serde_json::Value::String(iss)) => iss,
            Some(_) => return Err(AuthnError::InvalidClaim("iss")),
            None => return Err(AuthnError::MissingClaim("iss")),
        };
        Ok(Self { header, iss })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        fn check(a: &Authenticator) {
            is_send(&a.verify("x"));
            is_send(&a.verify_uncached("x"));
        }
        let _ = check;
    }

    #[test]
    fn authorization_scheme_is_case_insensitive_and_exact() {
        assert_eq!(token_of("Bearer abc", "Bearer"), Some("abc"));
        assert_eq!(token_of("bEARER  abc ", "Bearer"), Some("abc"));
        assert_eq!(token_of("DPoP abc", "Bearer"), None);
        assert_eq!(token_of("Bearerabc", "Bearer"), None);
        assert_eq!(token_of("Bearer ", "Bearer"), None);
        assert_eq!(token_of("dpop abc", "DPoP"), Some("abc"));
    }

    #[test]
    fn token_shape_is_checked_before_anything_else() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "..",
            "e30.e30.",
            "!!.e30.sig",
            "e30.e30.sig",
        ] {
            assert!(UnverifiedToken::parse(bad).is_err(), "{bad:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            UnverifiedToken::parse(&huge),
            Err(AuthnError::Malformed("token too large"))
        ));
    }
}
