//! The broker's configuration model (the binary translates `[broker]` of
//! `mandate.toml` into it; see `docs/BROKER.md`).

use mandate_authn::{Algorithm, JwksSource};
use mandate_core::Scope;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// Longest token lifetime the broker will ever issue, whatever is configured.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Default lifetime bound of issued tokens.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(900);
/// Default number of actors an issued `act` chain may hold.
pub const DEFAULT_MAX_DEPTH: usize = 3;

/// Everything the broker needs to know.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker's issuer identifier (`iss` of its tokens, the `aud` of
    /// client assertions, and the base of its metadata URL).
    pub issuer: String,
    /// The resources (audiences) tokens may be issued for; the first is the
    /// default when a request names none.
    pub resources: Vec<String>,
    /// Where signing keys live.
    pub key_dir: PathBuf,
    /// Signing algorithm of new keys: EdDSA (Ed25519) or ES256 (P-256).
    pub key_algorithm: Algorithm,
    /// Upper bound on issued tokens' lifetime.
    pub max_token_ttl: Duration,
    /// Most actors an issued `act` chain may hold (1 = no sub-delegation).
    pub max_delegation_depth: usize,
    /// Clock skew allowed on incoming tokens and assertions.
    pub leeway_secs: u64,
    /// Identity providers whose tokens represent users (subject tokens).
    pub subject_issuers: Vec<SubjectIssuer>,
    /// What users may delegate at most (mapped from IdP claims).
    pub entitlements: Entitlements,
    /// Registered agents (OAuth clients), by agent id (= `client_id`).
    pub agents: BTreeMap<String, AgentConfig>,
    /// Task templates, by name.
    pub templates: BTreeMap<String, TaskTemplate>,
    /// A SPIFFE trust domain whose JWT-SVIDs are accepted as actor tokens.
    pub spiffe: Option<SpiffeConfig>,
    /// DPoP: require the server nonce in proofs (RFC 9449 §8).
    pub dpop_require_nonce: bool,
    /// MCP sign-in (the broker as the MCP clients' authorization server);
    /// `None`: off.
    pub sign_in: Option<SignInConfig>,
}

/// The actor prefix of MCP clients signed in through the broker: their
/// tokens name `act = mcp-client-<client id>`.
pub const SIGNED_IN_ACTOR_PREFIX: &str = mandate_core::SIGNED_IN_ACTOR_PREFIX;
/// Default bound on dynamically registered clients.
pub const DEFAULT_MAX_CLIENTS: usize = 1000;
/// Default bound on sign-ins in progress (and on unredeemed codes).
pub const DEFAULT_MAX_PENDING: usize = 1000;
/// Upper bound of `max_clients` and `max_pending`.
pub const MAX_SIGN_IN_STATE: usize = 100_000;

/// MCP sign-in (docs/BROKER.md "MCP sign-in"): the OAuth 2.1 authorization
/// code flow of the MCP authorization spec, the user signing in at an
/// OpenID Connect provider.
#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// The provider's exact issuer identifier.
    pub provider_issuer: String,
    /// The broker's client id at the provider.
    pub client_id: String,
    /// The broker's client secret at the provider (none: public client).
    pub client_secret: Option<mandate_authn::oidc::ClientSecret>,
    /// The ID token claim holding the user's groups.
    pub groups_claim: String,
    /// Clients may register `http` redirect URIs to a loopback host
    /// (RFC 8252 §7.3).
    pub loopback_redirects: bool,
    /// `https` redirect URIs must start with one of these.
    pub https_redirect_prefixes: Vec<String>,
    /// The most a signed-in client's token may carry (further narrowed
    /// by the request, the user's entitlements and an approved ceiling).
    pub scope: Scope,
    /// Lifetime of the tokens issued.
    pub token_ttl: Duration,
    /// Most registered clients.
    pub max_clients: usize,
    /// Most sign-ins in progress, and most unredeemed codes.
    pub max_pending: usize,
}

impl SignInConfig {
    /// Whether a client may register `uri` as a redirect URI: `http` to a
    /// loopback host (when allowed) or `https` under a configured prefix;
    /// never a fragment, user info, or another scheme.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        if uri.len() > 512 {
            return false;
        }
        let Ok(url) = reqwest::Url::parse(uri) else {
            return false;
        };
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        match url.scheme() {
            "http" => {
                self.loopback_redirects
                    && match url.host() {
                        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                        None => false,
                    }
            }
            "https" => self
                .https_redirect_prefixes
                .iter()
                .any(|p| url.as_str().starts_with(p.as_str())),
            _ => false,
        }
    }

    fn validate(&self, broker: &BrokerConfig) -> Result<(), String> {
        let url_ok =
            |s: &str| reqwest::Url::parse(s).is_ok_and(|u| mandate_authn::oidc::url_allowed(&u));
        if !url_ok(&self.provider_issuer) {
            return Err(
                "broker.sign_in.issuer must be an https URL (or http to a loopback host)".into(),
            );
        }
        if self.provider_issuer == broker.issuer {
            return Err("broker.sign_in.issuer may not be the broker itself".into());
        }
        if !url_ok(&broker.issuer) {
            return Err(
                "broker.sign_in needs broker.issuer to be an https URL (or http to a loopback host)"
                    .into(),
            );
        }
        if self.client_id.is_empty() {
            return Err("broker.sign_in.client_id must not be empty".into());
        }
        if self.scope.iter().next().is_none() {
            return Err("broker.sign_in.scopes must name at least one scope".into());
        }
        if self.token_ttl.is_zero() || self.token_ttl > broker.max_token_ttl {
            return Err(format!(
                "broker.sign_in.token_ttl_secs must be between 1 and broker.max_token_ttl_secs ({})",
                broker.max_token_ttl.as_secs()
            ));
        }
        for (name, v) in [
            ("max_clients", self.max_clients),
            ("max_pending", self.max_pending),
        ] {
            if v == 0 || v > MAX_SIGN_IN_STATE {
                return Err(format!(
                    "broker.sign_in.{name} must be between 1 and {MAX_SIGN_IN_STATE}"
                ));
            }
        }
        for p in &self.https_redirect_prefixes {
            let ok = reqwest::Url::parse(p).is_ok_and(|u| {
                u.scheme() == "https" && u.host().is_some() && u.fragment().is_none()
            });
            if !ok {
                return Err(format!(
                    "broker.sign_in.https_redirect_prefixes: {p:?} is not an https URL"
                ));
            }
        }
        if !self.loopback_redirects && self.https_redirect_prefixes.is_empty() {
            return Err(
                "broker.sign_in: no redirect URI could ever be registered (allow loopback redirects or name an https prefix)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A trusted identity provider for subject tokens.
#[derive(Debug, Clone)]
pub struct SubjectIssuer {
    /// Its exact issuer identifier.
    pub issuer: String,
    /// The `aud` its tokens must carry for the broker (the client id the
    /// user signed in to).
    pub audience: String,
    /// Where its keys are: `None` means OIDC discovery
    /// (`{issuer}/.well-known/openid-configuration` → `jwks_uri`).
    pub jwks: Option<JwksSource>,
    /// The claim holding the user's groups (an array of strings).
    pub groups_claim: String,
}

/// User entitlements: what a user can delegate at most.
#[derive(Debug, Clone, Default)]
pub struct Entitlements {
    /// Every authenticated user.
    pub default: Scope,
    /// By user (`sub`).
    pub users: BTreeMap<String, Scope>,
    /// By group (from the subject token's groups claim).
    pub groups: BTreeMap<String, Scope>,
}

impl Entitlements {
    /// The union of what `sub` and its groups are entitled to.
    pub fn of<'a>(&self, sub: &str, groups: impl IntoIterator<Item = &'a str>) -> Scope {
        let mut parts: Vec<&str> = self.default.iter().collect();
        if let Some(s) = self.users.get(sub) {
            parts.extend(s.iter());
        }
        for g in groups {
            if let Some(s) = self.groups.get(g) {
                parts.extend(s.iter());
            }
        }
        Scope::parse(&parts.join(" "))
    }
}

/// A registered agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its public keys (client assertions, actor tokens).
    pub keys: JwksSource,
    /// The most its tokens may carry.
    pub scope_ceiling: Scope,
    /// Users who may delegate to it (`"*"`: every user).
    pub users: BTreeSet<String>,
    /// Groups whose members may delegate to it.
    pub groups: BTreeSet<String>,
    /// Registered builds, by build hash.
    pub builds: BTreeMap<String, RegisteredBuild>,
    /// Agents it may sub-delegate to (its tokens may become their subject tokens).
    pub delegate_to: BTreeSet<String>,
    /// Issue only DPoP-bound tokens to it.
    pub dpop: bool,
    /// Its SPIFFE ID, when it may present a JWT-SVID as its actor token.
    pub spiffe_id: Option<String>,
}

/// One registered build of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredBuild {
    /// A name for people.
    pub name: String,
    /// The model id.
    pub model: String,
    /// The manifest hash (see `mandate_core::build`).
    pub manifest: String,
    /// The exposed tool names of the manifest.
    pub tools: BTreeSet<String>,
}

/// A kind of task.
#[derive(Debug, Clone)]
pub struct TaskTemplate {
    /// The most its tokens may carry.
    pub scope: Scope,
    /// How long a task lives after it starts.
    pub max_duration: Duration,
    /// Agents that may work on it.
    pub agents: BTreeSet<String>,
}

/// A SPIFFE trust domain for JWT-SVID actor tokens.
#[derive(Debug, Clone)]
pub struct SpiffeConfig {
    /// The trust domain name (`example.org`).
    pub trust_domain: String,
    /// Its JWT bundle (a JWKS document, SPIFFE bundle format), as a file.
    pub bundle: PathBuf,
    /// The `aud` SVIDs must carry (default: the broker issuer).
    pub audience: String,
}

/// The build registry the gateway enforces: build hash → (the agents it is
/// registered for, the build). Agents may share a build.
pub type BuildRegistry = BTreeMap<String, (BTreeSet<String>, RegisteredBuild)>;

impl BrokerConfig {
    /// Every registered build, for the gateway's manifest check.
    pub fn build_registry(&self) -> BuildRegistry {
        let mut out: BuildRegistry = BTreeMap::new();
        for (agent, cfg) in &self.agents {
            for (hash, build) in &cfg.builds {
                out.entry(hash.clone())
                    .or_insert_with(|| (BTreeSet::new(), build.clone()))
                    .0
                    .insert(agent.clone());
            }
        }
        out
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer.trim_end_matches('/'))
    }

    /// Checks what the type system cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("broker.issuer must not be empty".into());
        }
        if self.resources.is_empty() {
            return Err("broker: no resource to issue tokens for".into());
        }
        if !matches!(self.key_algorithm, Algorithm::EdDSA | Algorithm::ES256) {
            return Err("broker.key_algorithm must be EdDSA or ES256".into());
        }
        if self.max_token_ttl.is_zero() || self.max_token_ttl > MAX_TOKEN_TTL {
            return Err(format!(
                "broker.max_token_ttl_secs must be between 1 and {}",
                MAX_TOKEN_TTL.as_secs()
            ));
        }
        if self.max_delegation_depth == 0
            || self.max_delegation_depth > mandate_authn::MAX_ACTOR_DEPTH
        {
            return Err(format!(
                "broker.max_delegation_depth must be between 1 and {}",
                mandate_authn::MAX_ACTOR_DEPTH
            ));
        }
        // Entitlements, agents' `users` and tasks are keyed by `sub` alone:
        // with two providers, "alice" at one would be "alice" at the other.
        if self.subject_issuers.len() > 1 {
            return Err(
                "broker.identity_providers: at most one provider (users are identified by sub alone)"
                    .into(),
            );
        }
        for s in &self.subject_issuers {
            if s.issuer == self.issuer {
                return Err("broker.subject_issuers may not name the broker itself".into());
            }
            if s.audience.is_empty() {
                return Err(format!(
                    "broker.subject_issuers {:?}: audience must not be empty",
                    s.issuer
                ));
            }
        }
        if let Some(sign_in) = &self.sign_in {
            sign_in.validate(self)?;
        }
        for (id, a) in &self.agents {
            if id.starts_with(SIGNED_IN_ACTOR_PREFIX) {
                return Err(format!(
                    "broker.agents.{id}: the prefix {SIGNED_IN_ACTOR_PREFIX:?} is kept for signed-in MCP clients"
                ));
            }
            if id.is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!(
                    "broker.agents: {id:?} is not a valid agent id (no spaces or control characters)"
                ));
            }
            if self.subject_issuers.iter().any(|s| &s.issuer == id) || id == &self.issuer {
                return Err(format!(
                    "broker.agents.{id}: an agent id may not equal an issuer identifier"
                ));
            }
            for d in &a.delegate_to {
                if !self.agents.contains_key(d) {
                    return Err(format!(
                        "broker.agents.{id}.delegate_to: {d:?} is not a registered agent"
                    ));
                }
            }
            if a.spiffe_id.is_some() && self.spiffe.is_none() {
                return Err(format!(
                    "broker.agents.{id}.spiffe_id needs [broker.spiffe]"
                ));
            }
        }
        for (name, t) in &self.templates {
            if t.max_duration.is_zero() {
                return Err(format!(
                    "broker.tasks.{name}.max_duration_secs must be positive"
                ));
            }
            for a in &t.agents {
                if !self.agents.contains_key(a) {
                    return Err(format!(
                        "broker.tasks.{name}.agents: {a:?} is not a registered agent"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entitlements_are_the_union_of_user_groups_and_default() {
        let e = Entitlements {
            default: Scope::parse("docs.search"),
            users: BTreeMap::from([("alice".into(), Scope::parse("mail.read"))]),
            groups: BTreeMap::from([("finance".into(), Scope::parse("bank.*"))]),
        };
        let a = e.of("alice", ["finance", "unknown"]);
        assert_eq!(
            a.to_oauth_string(),
            "bank.* docs.search mail.read".to_owned()
        );
        assert_eq!(e.of("bob", []).to_oauth_string(), "docs.search");
    }

    #[test]
    fn two_identity_providers_are_refused() {
        let idp = |issuer: &str| SubjectIssuer {
            issuer: issuer.into(),
            audience: "app".into(),
            jwks: None,
            groups_claim: "groups".into(),
        };
        let mut cfg = BrokerConfig {
            issuer: "https://broker.test".into(),
            resources: vec!["https://gw.test/mcp".into()],
            key_dir: PathBuf::from("keys"),
            key_algorithm: Algorithm::EdDSA,
            max_token_ttl: Duration::from_secs(600),
            max_delegation_depth: 2,
            leeway_secs: 5,
            subject_issuers: vec![idp("https://idp-a.test")],
            entitlements: Entitlements::default(),
            agents: BTreeMap::new(),
            templates: BTreeMap::new(),
            spiffe: None,
            dpop_require_nonce: false,
            sign_in: None,
        };
        assert_eq!(cfg.validate(), Ok(()));
        cfg.subject_issuers.push(idp("https://idp-b.test"));
        let err = cfg.validate().err().unwrap_or_default();
        assert!(err.contains("at most one provider"), "{err}");
    }
}
