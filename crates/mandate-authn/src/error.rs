//! The one error type of this crate.
//!
//! `Display` is for logs: it may name an issuer or a file, never a token or
//! key material. [`AuthnError::description`] is for clients: a short, fixed
//! text safe to put in a `WWW-Authenticate` header.

/// Why a token was refused, or why the authenticator could not be built.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum AuthnError {
    /// The configuration is unusable (no issuers, HMAC in the allow-list, …).
    #[error("invalid authentication configuration: {0}")]
    Config(String),

    /// An issuer's JWKS could not be read, fetched or parsed.
    #[error("JWKS for issuer {issuer:?} is unavailable: {reason}")]
    JwksUnavailable {
        /// The issuer whose keys are missing.
        issuer: String,
        /// What went wrong (never key material).
        reason: String,
    },

    /// The system clock is before the Unix epoch, so no time check can be trusted.
    #[error("system clock is before the Unix epoch")]
    Clock,

    /// Not a compact JWS, bad base64/JSON, or too large.
    #[error("malformed token: {0}")]
    Malformed(&'static str),

    /// The header `alg` is not in the allow-list (this includes `none` and HMAC).
    #[error("token algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),

    /// The header `typ` names a different kind of JWT (e.g. a DPoP proof).
    #[error("token type {0:?} is not an access token")]
    UnsupportedType(String),

    /// The header carries a `crit` parameter; no extension is understood.
    #[error("token header has a critical extension")]
    CriticalHeader,

    /// The (unverified) `iss` is not a configured issuer.
    #[error("token issuer is not configured")]
    UnknownIssuer,

    /// The header has no `kid`.
    #[error("token header has no kid")]
    MissingKid,

    /// No key with this `kid`, even after re-reading the issuer's JWKS.
    #[error("no key with the token's kid for issuer {issuer:?}")]
    UnknownKey {
        /// The issuer that was searched.
        issuer: String,
    },

    /// The key found for `kid` cannot be used with the header `alg`.
    #[error("key {kid:?} of issuer {issuer:?} does not match algorithm {alg:?}")]
    KeyAlgorithmMismatch {
        /// The issuer.
        issuer: String,
        /// The key id.
        kid: String,
        /// The token's algorithm.
        alg: jsonwebtoken::Algorithm,
    },

    /// The signature does not verify under the issuer's key.
    #[error("token signature is invalid")]
    BadSignature,

    /// `exp` is in the past (beyond leeway).
    #[error("token expired")]
    Expired,

    /// `nbf` is in the future (beyond leeway).
    #[error("token not yet valid")]
    NotYetValid,

    /// `iat` is in the future (beyond leeway).
    #[error("token issued in the future")]
    IssuedInFuture,

    /// `aud` does not contain the configured audience.
    #[error("token audience does not match")]
    WrongAudience,

    /// A required claim is absent.
    #[error("token is missing claim {0:?}")]
    MissingClaim(&'static str),

    /// A claim is present but has the wrong type or value.
    #[error("token claim {0:?} is invalid")]
    InvalidClaim(&'static str),

    /// The configuration requires an actor and the token has no `act`.
    #[error("token has no actor (act) claim")]
    ActorRequired,

    /// The `act` chain is nested deeper than the bound.
    #[error("token actor chain is deeper than {0}")]
    ActorChainTooDeep(usize),

    /// The token is sender-constrained (DPoP) and was presented without
    /// its proof.
    #[error("token is DPoP-bound and needs a DPoP proof")]
    SenderConstrained,

    /// The DPoP scheme was used with a token that is not DPoP-bound.
    #[error("the DPoP scheme needs a DPoP-bound token")]
    NotSenderConstrained,

    /// A development key could not be generated, loaded or used.
    #[error("development key error: {0}")]
    DevKey(String),
}

impl AuthnError {
    /// Short, safe text for `WWW-Authenticate: Bearer error="invalid_token",
    /// error_description="…"`: fixed strings only, so no secret, key
    /// material, token fragment or quote character can reach the client.
    pub fn description(&self) -> String {
        let text = match self {
            Self::Config(_) | Self::JwksUnavailable { .. } | Self::Clock | Self::DevKey(_) => {
                "authentication is temporarily unavailable"
            }
            Self::Malformed(_) => "malformed token",
            Self::AlgorithmNotAllowed(_) => "token algorithm not allowed",
            Self::UnsupportedType(_) => "token type not accepted",
            Self::CriticalHeader => "unsupported critical header",
            Self::UnknownIssuer => "untrusted issuer",
            Self::MissingKid => "token has no key id",
            Self::UnknownKey { .. } => "unknown signing key",
            Self::KeyAlgorithmMismatch { .. } => "signing key does not match algorithm",
            Self::BadSignature => "invalid signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::IssuedInFuture => "token issued in the future",
            Self::WrongAudience => "token audience mismatch",
            Self::MissingClaim(claim) => return format!("missing claim {claim}"),
            Self::InvalidClaim(claim) => return format!("invalid claim {claim}"),
            Self::ActorRequired => "token has no actor",
            Self::ActorChainTooDeep(_) => "actor chain too deep",
            Self::SenderConstrained => "token is DPoP-bound: present it with a DPoP proof",
            Self::NotSenderConstrained => "the DPoP scheme needs a DPoP-bound token",
        };
        text.to_owned()
    }

    /// Whether this is a configuration or infrastructure failure (JWKS
    /// unreachable, bad config, broken clock) rather than a bad token. The
    /// gateway answers these with 503, not 401.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::JwksUnavailable { .. } | Self::Clock | Self::DevKey(_)
        )
    }

    pub(crate) fn jwks(issuer: &str, reason: impl Into<String>) -> Self {
        Self::JwksUnavailable {
            issuer: issuer.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Maps a `jsonwebtoken` failure during `decode` onto our variants. Only
/// called after the header, issuer and key have been checked, so the
/// remaining kinds are signature and registered-claim failures.
impl From<jsonwebtoken::errors::Error> for AuthnError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => Self::BadSignature,
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidAudience => Self::WrongAudience,
            K::InvalidIssuer => Self::UnknownIssuer,
            K::MissingRequiredClaim(c) => Self::MissingClaim(registered_claim(c)),
            K::InvalidClaimFormat(c) => Self::InvalidClaim(registered_claim(c)),
            K::InvalidSubject => Self::InvalidClaim("sub"),
            K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
                Self::AlgorithmNotAllowed("rejected by verifier".to_owned())
            }
            K::Json(_) => Self::Malformed("invalid JSON"),
            K::Base64(_) => Self::Malformed("invalid base64url"),
            K::Utf8(_) => Self::Malformed("invalid UTF-8"),
            // Key-format kinds cannot be caused by the token alone (keys are
            // validated when loaded); anything else is refused as malformed.
            _ => Self::Malformed("token could not be verified"),
        }
    }
}

/// `&'static` names for the claims `jsonwebtoken` reports by `String`.
fn registered_claim(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "registered claim",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_header_safe() {
        let all = [
            AuthnError::Config("secret=hunter2".into()),
            AuthnError::jwks("https://idp", "connection refused"),
            AuthnError::Malformed("x"),
            AuthnError::AlgorithmNotAllowed("\"none\"\r\n".into()),
            AuthnError::UnsupportedType("\"x\"".into()),
            AuthnError::UnknownIssuer,
            AuthnError::MissingClaim("sub"),
            AuthnError::InvalidClaim("act"),
            AuthnError::ActorChainTooDeep(8),
        ];
        for e in all {
            let d = e.description();
            assert!(
                d.chars().all(|c| c.is_ascii_graphic() || c == ' ') && !d.contains(['"', '\\']),
                "{d:?}"
            );
            assert!(!d.contains("hunter2") && !d.contains("none"));
        }
        assert!(AuthnError::jwks("i", "r").is_config());
        assert!(!AuthnError::BadSignature.is_config());
    }
}
