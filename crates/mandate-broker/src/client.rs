//! Who is asking: client authentication (`private_key_jwt`, RFC 7523 with
//! the audience rule of draft-ietf-oauth-rfc7523bis) and the actor token
//! (the agent's workload identity: a JWT signed by its registered key, or
//! a JWT-SVID from the configured SPIFFE trust domain).

use crate::config::SpiffeConfig;
use crate::error::{BrokerError, ErrorCode, Refusal};
use crate::{ASSERTION_JWT_BEARER, Broker, MAX_ASSERTION_LIFETIME_SECS};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mandate_core::Clock;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An authenticated client: a registered agent that proved possession of
/// its key with a fresh, single-use assertion.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) id: String,
}

/// The unverified `iss` of a compact JWS, to pick the keys to try.
pub(crate) fn peek_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_, Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Broker {
    /// Authenticates the client of a request (`client_assertion_type`,
    /// `client_assertion`, optional `client_id`). Every failure is
    /// `invalid_client`, with the detail kept internal.
    pub(crate) async fn authenticate_client(
        &self,
        assertion_type: Option<&str>,
        assertion: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<Client, Refusal> {
        // No secrets and no public clients: private_key_jwt is the only method.
        if assertion_type != Some(ASSERTION_JWT_BEARER) {
            return Err(Refusal::client(
                "no private_key_jwt client assertion (the only client authentication method)",
            ));
        }
        let assertion = assertion.ok_or_else(|| Refusal::client("client_assertion is missing"))?;
        let peek = peek_claims(assertion)
            .ok_or_else(|| Refusal::client("client assertion is not a JWT"))?;
        let iss = peek.get("iss").and_then(Value::as_str).unwrap_or_default();
        let agent = self
            .agents
            .get(iss)
            .ok_or_else(|| Refusal::client(format!("unknown client {:.64}", iss)))?;
        let (principal, claims) = agent
            .authn
            .verify_with_claims(assertion)
            .await
            .map_err(|e| Refusal::client(format!("client assertion refused: {e}")))?;
        // RFC 7523 §3: iss and sub are the client id.
        if principal.sub() != iss {
            return Err(Refusal::client("client assertion sub is not its iss"));
        }
        if let Some(id) = client_id
            && id != iss
        {
            return Err(Refusal::client("client_id does not match the assertion"));
        }
        // rfc7523bis: `aud` is the issuer identifier, as a single string.
        if claims.get("aud").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(Refusal::client(
                "client assertion aud must be the broker's issuer identifier as a single value",
            ));
        }
        let now = self.now_secs();
        if principal.exp() > now.saturating_add(MAX_ASSERTION_LIFETIME_SECS) {
            return Err(Refusal::client(
                "client assertion lives longer than the broker accepts",
            ));
        }
        let jti = principal
            .jti()
            .ok_or_else(|| Refusal::client("client assertion has no jti"))?;
        let until = principal.exp().saturating_add(self.cfg.leeway_secs);
        let id = format!("{iss}\n{jti}");
        match self.assertions.first_use(id.as_bytes(), until, now) {
            Ok(true) => Ok(Client { id: iss.to_owned() }),
            Ok(false) => Err(Refusal::client("client assertion replayed (jti seen)")),
            Err(()) => Err(Refusal::new(
                ErrorCode::TemporarilyUnavailable,
                "too many client assertions in flight",
                "assertion replay cache full",
            )),
        }
    }

    /// Verifies the actor token and returns the agent it names, which must
    /// be the authenticated client. Every failure is `invalid_request`
    /// (RFC 8693 §2.2.2: an unacceptable actor token).
    pub(crate) async fn verify_actor(
        &self,
        client: &Client,
        token: Option<&str>,
        token_type: Option<&str>,
    ) -> Result<(), Refusal> {
        let unacceptable = |reason: String| {
            Refusal::new(
                ErrorCode::InvalidRequest,
                "the actor token is missing or unacceptable",
                reason,
            )
        };
        let Some(token) = token else {
            return Err(unacceptable(
                "no actor_token: delegation requires the agent's own token (no impersonation)"
                    .into(),
            ));
        };
        if token_type != Some(crate::token_type::JWT) {
            return Err(unacceptable(
                "actor_token_type must be urn:ietf:params:oauth:token-type:jwt".into(),
            ));
        }
        let peek = peek_claims(token).ok_or_else(|| unacceptable("not a JWT".into()))?;
        let sub = peek.get("sub").and_then(Value::as_str).unwrap_or_default();
        if sub.starts_with("spiffe://") {
            let spiffe = self
                .spiffe
                .as_ref()
                .ok_or_else(|| unacceptable("no SPIFFE trust domain is configured".into()))?;
            let id = spiffe.verify(token).map_err(unacceptable)?;
            let named = self
                .cfg
                .agents
                .get(&client.id)
                .and_then(|a| a.spiffe_id.as_deref());
            if named != Some(id.as_str()) {
                return Err(unacceptable(format!(
                    "JWT-SVID {id:.128} is not the SPIFFE ID registered for {}",
                    client.id
                )));
            }
            return Ok(());
        }
        let iss = peek.get("iss").and_then(Value::as_str).unwrap_or_default();
        // The actor must be the agent that authenticated: an agent cannot
        // present another agent's workload token.
        if iss != client.id {
            return Err(unacceptable(format!(
                "actor token names {:.64}, not the authenticated client {}",
                iss, client.id
            )));
        }
        let agent = self
            .agents
            .get(&client.id)
            .ok_or_else(|| unacceptable("unknown agent".into()))?;
        let principal = agent
            .authn
            .verify(token)
            .await
            .map_err(|e| unacceptable(format!("actor token refused: {e}")))?;
        if principal.sub() != client.id {
            return Err(unacceptable(format!(
                "actor token sub {:.64} is not the authenticated client {}",
                principal.sub(),
                client.id
            )));
        }
        Ok(())
    }
}

/// JWT-SVID verification against a SPIFFE trust bundle (a JWKS file whose
/// keys have `use: "jwt-svid"`). JWT-SVIDs use RS*, ES* or PS* algorithms,
/// always carry a `kid`, and need no `iss`.
pub(crate) struct SpiffeVerifier {
    cfg: SpiffeConfig,
    leeway: u64,
    /// What "now" is for `exp` and `nbf`.
    clock: Clock,
    keys: Mutex<(HashMap<String, DecodingKey>, Option<Instant>)>,
}

impl std::fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeVerifier")
            .field("trust_domain", &self.cfg.trust_domain)
            .finish_non_exhaustive()
    }
}

fn read_bundle(path: &std::path::Path) -> Result<HashMap<String, DecodingKey>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for jwk in set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        // Only public keys: a symmetric key in a bundle would let anyone
        // holding the bundle mint SVIDs.
        if !matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
                | jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)
        ) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid, key);
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no usable key", path.display()));
    }
    Ok(out)
}

pub(crate) async fn spiffe_authenticator(
    cfg: &SpiffeConfig,
    leeway: u64,
    clock: Clock,
) -> Result<SpiffeVerifier, BrokerError> {
    let keys = read_bundle(&cfg.bundle).map_err(BrokerError::Config)?;
    Ok(SpiffeVerifier {
        cfg: cfg.clone(),
        leeway,
        clock,
        keys: Mutex::new((keys, None)),
    })
}

impl SpiffeVerifier {
    fn key(&self, kid: &str) -> Option<DecodingKey> {
        let mut guard = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = guard.0.get(kid) {
            return Some(k.clone());
        }
        // Unknown kid: re-read the bundle, at most every 10 s.
        if guard
            .1
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return None;
        }
        guard.1 = Some(Instant::now());
        if let Ok(keys) = read_bundle(&self.cfg.bundle) {
            guard.0 = keys;
        }
        guard.0.get(kid).cloned()
    }

    /// Verifies a JWT-SVID; returns its SPIFFE ID.
    pub(crate) fn verify(&self, token: &str) -> Result<String, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed JWT-SVID")?;
        let alg = header.alg;
        let allowed = matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        );
        if !allowed {
            return Err(format!("JWT-SVID algorithm {alg:?} is not allowed"));
        }
        let kid = header.kid.ok_or("JWT-SVID has no kid")?;
        let key = self.key(&kid).ok_or("JWT-SVID signed by an unknown key")?;
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.leeway;
        v.set_audience(&[self.cfg.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        // The time window is checked below, against this verifier's clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|e| format!("JWT-SVID refused: {e}"))?;
        let now = self
            .clock
            .now_unsigned_secs()
            .ok_or("the clock is before 1970")?;
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or("JWT-SVID exp is not a number")?;
        if exp.saturating_add(self.leeway) < now {
            return Err("JWT-SVID refused: expired".into());
        }
        if let Some(nbf) = data.claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or("JWT-SVID nbf is not a number")?;
            if nbf > now.saturating_add(self.leeway) {
                return Err("JWT-SVID refused: not valid yet".into());
            }
        }
        let sub = data
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or("JWT-SVID has no sub")?;
        let prefix = format!("spiffe://{}/", self.cfg.trust_domain);
        if !sub.starts_with(&prefix) || sub.len() == prefix.len() {
            return Err("JWT-SVID is from another trust domain".into());
        }
        Ok(sub.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_authn::dev::DevKey;
    use mandate_core::ManualClock;
    use serde_json::json;

    #[tokio::test]
    async fn jwt_svids_are_checked_against_the_trust_bundle()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = DevKey::generate(Algorithm::ES256)?;
        let mut bundle = key.jwks();
        if let Some(k) = bundle
            .pointer_mut("/keys/0")
            .and_then(|k| k.as_object_mut())
        {
            k.insert("use".into(), json!("jwt-svid"));
        }
        let path = dir.path().join("bundle.json");
        std::fs::write(&path, bundle.to_string())?;
        let cfg = SpiffeConfig {
            trust_domain: "example.org".into(),
            bundle: path,
            audience: "https://mandate.test".into(),
        };
        let manual = ManualClock::at_secs(1_800_000_000);
        let v = spiffe_authenticator(&cfg, 5, manual.clock()).await?;
        let now = 1_800_000_000_u64;
        let svid = |sub: &str, aud: &str| {
            key.sign_typed(
                "JWT",
                false,
                &json!({"sub": sub, "aud": aud, "iat": now, "exp": now + 60}),
            )
        };
        assert_eq!(
            v.verify(&svid("spiffe://example.org/agent", "https://mandate.test")?),
            Ok("spiffe://example.org/agent".to_owned())
        );
        assert!(
            v.verify(&svid("spiffe://other.org/agent", "https://mandate.test")?)
                .is_err()
        );
        assert!(
            v.verify(&svid("spiffe://example.org/agent", "https://elsewhere")?)
                .is_err()
        );
        // EdDSA is not a JWT-SVID algorithm.
        let ed = DevKey::generate(Algorithm::EdDSA)?;
        let t = ed.sign_typed("JWT", false, &json!({"sub": "spiffe://example.org/a", "aud": "https://mandate.test", "exp": now + 60}))?;
        assert!(v.verify(&t).is_err());
        // Not valid yet, then expired, by the verifier's clock (5 s leeway).
        let later = key.sign_typed(
            "JWT",
            false,
            &json!({"sub": "spiffe://example.org/agent", "aud": "https://mandate.test", "nbf": now + 10, "exp": now + 60}),
        )?;
        assert!(v.verify(&later).is_err());
        manual.advance(Duration::from_secs(10));
        assert!(v.verify(&later).is_ok());
        manual.advance(Duration::from_secs(56));
        assert!(v.verify(&later).is_err());
        Ok(())
    }
}
