//! The operator plane's part of the one configuration model: how people
//! sign in to the approval page (`[approvals.web]`). Who is an operator,
//! with which roles, is the gateway's `[[operators]]`
//! (`mandate_gateway::OperatorConfig`), which the PEP reads too.

use std::time::Duration;

/// Sign-in to the approval page. Whoever signs in must also match an
/// `[[operators]]` entry with the `approver` role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Local accounts (demos, small installs).
    pub local_accounts: Vec<LocalAccount>,
    /// Sign-in through an OpenID Connect provider.
    pub oidc: Option<OidcConfig>,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_max: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            local_accounts: Vec::new(),
            oidc: None,
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 60 * 60),
        }
    }
}

/// A local approver account: a `sub` and a PBKDF2 password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAccount {
    /// The signed-in person's `sub` (matched against `[[operators]]`;
    /// their `iss` is [`crate::LOCAL_ISSUER`]).
    pub sub: String,
    /// The password's hash.
    pub password_hash: crate::password::PasswordHash,
}

/// The OpenID Connect provider people sign in with (authorization code
/// flow with PKCE; discovery at `{issuer}/.well-known/openid-configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The provider's exact issuer identifier (`https`, or `http` to a
    /// loopback host).
    pub issuer: String,
    /// Mandate's client id at the provider (the ID token's `aud`).
    pub client_id: String,
    /// The client secret, if the client is confidential (otherwise a
    /// public client protected by PKCE).
    pub client_secret: Option<ClientSecret>,
}

pub use mandate_authn::oidc::ClientSecret;
