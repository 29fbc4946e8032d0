//! Verified claims → [`Principal`] (RFC 9068 access token, RFC 8693 `act`).

use crate::AuthnError;
use crate::principal::{Claims, Principal};
use mandate_core::Scope;
use serde::Deserialize;
use serde_json::Value;

/// Deepest `act` nesting accepted: the calling agent plus seven prior actors.
pub const MAX_ACTOR_DEPTH: usize = 8;

/// The claims this crate reads. Every field is a raw JSON value so each
/// can be type-checked with a precise error; a derived struct (rather than
/// a map) also refuses a payload that repeats any of these names, so no two
/// readers can see different values for one claim. Unknown claims are
/// ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawClaims {
    iss: Option<Value>,
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    act: Option<Value>,
    scope: Option<Value>,
    scp: Option<Value>,
    task_id: Option<Value>,
    build: Option<Value>,
    sid: Option<Value>,
    jti: Option<Value>,
    cnf: Option<Value>,
}

/// Time window checks, with `leeway` already clamped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) now: u64,
    pub(crate) leeway: u64,
}

impl Clock {
    /// Whether a token with this `exp` is still valid now.
    pub(crate) fn is_live(self, exp: u64) -> bool {
        exp.saturating_add(self.leeway) >= self.now
    }
}

/// Checks the time claims, subject and actor, and builds the principal.
/// `iss` has already been matched against the configuration and `aud`,
/// signature and claim presence checked by the verifier; `iss` and `exp`
/// are checked here again all the same, since this function is what turns
/// claims into the proof-carrying [`Principal`].
pub(crate) fn principal(
    claims: RawClaims,
    issuer: &str,
    clock: Clock,
    require_actor: bool,
) -> Result<Principal, AuthnError> {
    // Time first: an expired token is refused as expired whatever else is wrong.
    let exp = numeric_date(claims.exp.as_ref(), "exp", Round::Down)?
        .ok_or(AuthnError::MissingClaim("exp"))?;
    if !clock.is_live(exp) {
        return Err(AuthnError::Expired);
    }
    if let Some(nbf) = numeric_date(claims.nbf.as_ref(), "nbf", Round::Up)?
        && nbf > clock.now.saturating_add(clock.leeway)
    {
        return Err(AuthnError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims.iat.as_ref(), "iat", Round::Up)?
        && iat > clock.now.saturating_add(clock.leeway)
    {
        return Err(AuthnError::IssuedInFuture);
    }

    let iss = string(claims.iss, "iss")?.ok_or(AuthnError::MissingClaim("iss"))?;
    if iss != issuer {
        return Err(AuthnError::UnknownIssuer);
    }
    let sub = identifier(claims.sub, "sub")?.ok_or(AuthnError::MissingClaim("sub"))?;

    let act = match claims.act {
        Some(act) => actor_chain(act)?,
        None => Vec::new(),
    };
    if require_actor && act.is_empty() {
        return Err(AuthnError::ActorRequired);
    }

    Ok(Principal::from_claims(Claims {
        iss,
        sub,
        act,
        scope: scope(claims.scope, claims.scp)?,
        task_id: identifier(claims.task_id, "task_id")?,
        build: identifier(claims.build, "build")?,
        sid: identifier(claims.sid, "sid")?,
        jti: identifier(claims.jti, "jti")?,
        exp,
    }))
}

/// The DPoP binding (`cnf.jkt`, RFC 9449 §6.1) of a token, if it has one.
/// A `cnf` claim this crate cannot enforce (another confirmation method) is
/// refused rather than ignored: ignoring it would turn a sender-constrained
/// token into a bearer token.
pub(crate) fn cnf_jkt(claims: &RawClaims) -> Result<Option<String>, AuthnError> {
    let Some(cnf) = &claims.cnf else {
        return Ok(None);
    };
    let Value::Object(cnf) = cnf else {
        return Err(AuthnError::InvalidClaim("cnf"));
    };
    match (cnf.len(), cnf.get("jkt")) {
        (1, Some(Value::String(jkt))) if !jkt.is_empty() && jkt.len() <= 128 => {
            Ok(Some(jkt.clone()))
        }
        _ => Err(AuthnError::InvalidClaim("cnf")),
    }
}

/// `act` = `{"sub": "agent", "act": {"sub": "prior", ...}}` → `["agent",
/// "prior", ...]`, outermost (the current actor, RFC 8693 §4.1) first.
/// Iterative, and bounded by [`MAX_ACTOR_DEPTH`].
fn actor_chain(act: Value) -> Result<Vec<String>, AuthnError> {
    let mut chain = Vec::new();
    let mut next = Some(act);
    while let Some(value) = next.take() {
        if value.is_null() {
            break;
        }
        if chain.len() >= MAX_ACTOR_DEPTH {
            return Err(AuthnError::ActorChainTooDeep(MAX_ACTOR_DEPTH));
        }
        let Value::Object(mut actor) = value else {
            return Err(AuthnError::InvalidClaim("act"));
        };
        let sub = identifier(actor.remove("sub"), "act")?.ok_or(AuthnError::InvalidClaim("act"))?;
        chain.push(sub);
        next = actor.remove("act");
    }
    Ok(chain)
}

/// `scope` (space-separated string, RFC 9068 §2.2.3) or, when absent,
/// `scp` (an array of strings, or a string). Only one is read: `scope`
/// wins, so the two are never merged into more than either grants.
fn scope(scope: Option<Value>, scp: Option<Value>) -> Result<Scope, AuthnError> {
    match (scope, scp) {
        (Some(Value::String(s)), _) => Ok(Scope::parse(&s)),
        (Some(_), _) => Err(AuthnError::InvalidClaim("scope")),
        (None, Some(Value::String(s))) => Ok(Scope::parse(&s)),
        (None, Some(Value::Array(items))) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in &items {
                match item.as_str() {
                    Some(s) if !s.is_empty() && !s.contains(char::is_whitespace) => parts.push(s),
                    _ => return Err(AuthnError::InvalidClaim("scp")),
                }
            }
            Ok(Scope::parse(&parts.join(" ")))
        }
        (None, Some(_)) => Err(AuthnError::InvalidClaim("scp")),
        (None, None) => Ok(Scope::default()),
    }
}

fn string(value: Option<Value>, name: &'static str) -> Result<Option<String>, AuthnError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AuthnError::InvalidClaim(name)),
    }
}

/// A string naming someone or something: non-empty and free of control
/// characters (these values reach logs, audit records and headers).
fn identifier(value: Option<Value>, name: &'static str) -> Result<Option<String>, AuthnError> {
    match string(value, name)? {
        None => Ok(None),
        Some(s) if s.is_empty() || s.chars().any(char::is_control) => {
            Err(AuthnError::InvalidClaim(name))
        }
        Some(s) => Ok(Some(s)),
    }
}

#[derive(Clone, Copy)]
enum Round {
    /// For `exp`: a fractional expiry counts as the earlier second.
    Down,
    /// For `nbf`/`iat`: a fractional start counts as the later second.
    Up,
}

/// An RFC 7519 NumericDate: non-negative seconds, integer or not.
fn numeric_date(
    value: Option<&Value>,
    name: &'static str,
    round: Round,
) -> Result<Option<u64>, AuthnError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Some(n) = value.as_u64() {
        return Ok(Some(n));
    }
    match value.as_f64() {
        // 2^53: beyond this f64 seconds are not exact, and far beyond any real date.
        Some(f) if (0.0..9_007_199_254_740_992.0).contains(&f) => {
            let rounded = match round {
                Round::Down => f.floor(),
                Round::Up => f.ceil(),
            };
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked above: finite, non-negative, below 2^53"
            )]
            Ok(Some(rounded as u64))
        }
        _ => Err(AuthnError::InvalidClaim(name)),
    }
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
