#![doc = include_str!("../README.md")]

mod client;
pub mod config;
mod error;
mod exchange;
mod http;
pub mod keys;
pub mod scope;
mod signin;
mod tasks;

pub use config::{
    AgentConfig, BrokerConfig, BuildRegistry, Entitlements, RegisteredBuild, SignInConfig,
    SpiffeConfig, SubjectIssuer, TaskTemplate,
};
pub use error::{BrokerError, ErrorCode, InvalidTask, Refusal};
pub use exchange::{Exchange, Issued};
pub use http::router;
pub use scope::reduce_scope;
pub use tasks::{Started, TaskApi, TaskPlan, TaskRequest};

use arc_swap::ArcSwap;
use keys::{KeyDir, KeySet};
use mandate_audit::AuditLog;
use mandate_authn::dpop::{DpopVerifier, ReplayCache};
use mandate_authn::{Authenticator, AuthnConfig, IssuerConfig, JwksSource};
use mandate_control::ControlStore;
use mandate_core::Clock;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Token type URIs (RFC 8693 §3).
pub mod token_type {
    /// An OAuth access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// An OpenID Connect ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// A JWT.
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
}

/// The token-exchange grant type (RFC 8693 §2.1).
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The JWT client assertion type (RFC 7523 §2.2).
pub const ASSERTION_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The `typ` draft-ietf-oauth-rfc7523bis gives client assertions.
pub const ASSERTION_TYP: &str = "client-authentication+jwt";
/// Longest lifetime (`exp - now`) a client assertion may have: its `jti`
/// is remembered that long, so the bound keeps the replay cache bounded.
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// One registered agent's verifier (client assertions and actor tokens).
struct AgentKeys {
    authn: Authenticator,
}

/// The delegation broker. `Send + Sync`; share it in an `Arc`.
pub struct Broker {
    cfg: BrokerConfig,
    key_dir: KeyDir,
    keys: ArcSwap<KeySet>,
    key_stamp: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// Identity providers, by issuer.
    subjects: BTreeMap<String, (SubjectIssuer, Authenticator)>,
    /// The broker's own tokens (sub-delegation, introspection), by resource.
    own: BTreeMap<String, Authenticator>,
    agents: BTreeMap<String, AgentKeys>,
    spiffe: Option<client::SpiffeVerifier>,
    assertions: ReplayCache,
    dpop: Arc<DpopVerifier>,
    audit: AuditLog,
    control: Arc<ControlStore>,
    /// The one wall clock of this broker.
    clock: Clock,
    /// Decides which requested grants of a task's intent are granted
    /// outright (the policy engine, wired by the binary). Without one,
    /// every grant waits for the user's approval.
    judge: std::sync::OnceLock<Arc<dyn GrantJudge>>,
    /// MCP sign-in, when configured.
    signin: Option<signin::SignIn>,
}

/// Judges the grants of a declared intent (docs/INTENT.md): the policy
/// engine's answer for a call of the grant's tool with exactly the values
/// the grant pins, made while declaring (`context.intent.declaring`).
pub trait GrantJudge: Send + Sync {
    /// `Granted` (the policies allow it with no person), `Pending` (they
    /// ask for a person: the user approves the whole intent once) or
    /// `Refused`.
    fn judge(
        &self,
        grant: &mandate_intent::Grant,
        token: &mandate_core::Caller<'_>,
    ) -> mandate_control::GrantStatus;
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("issuer", &self.cfg.issuer)
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .field("subject_issuers", &self.subjects.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Broker>();
};

/// The key directory of a configuration (without loading anything).
pub fn key_dir(cfg: &BrokerConfig) -> KeyDir {
    KeyDir::new(
        cfg.key_dir.clone(),
        cfg.key_algorithm,
        cfg.max_token_ttl
            .saturating_add(Duration::from_secs(cfg.leeway_secs)),
    )
}

impl Broker {
    /// Builds the broker: opens (or creates) its signing keys, resolves each
    /// identity provider through OIDC discovery and loads every JWKS.
    pub async fn new(
        cfg: BrokerConfig,
        audit: AuditLog,
        control: Arc<ControlStore>,
    ) -> Result<Self, BrokerError> {
        Self::new_with_clock(cfg, audit, control, Clock::system()).await
    }

    /// [`Broker::new`] with `clock` instead of the system's: it dates keys,
    /// tokens, tasks and records, and checks every token's time window.
    pub async fn new_with_clock(
        cfg: BrokerConfig,
        audit: AuditLog,
        control: Arc<ControlStore>,
        clock: Clock,
    ) -> Result<Self, BrokerError> {
        cfg.validate().map_err(BrokerError::Config)?;
        let key_dir = key_dir(&cfg).with_clock(clock.clone());
        let keys = key_dir.open()?;
        let stamp = key_dir.stamp();

        let mut subjects = BTreeMap::new();
        for s in &cfg.subject_issuers {
            let jwks = match &s.jwks {
                Some(j) => j.clone(),
                None => JwksSource::Url(discover_jwks_uri(&s.issuer).await?),
            };
            let mut ac = AuthnConfig::new(
                vec![IssuerConfig {
                    issuer: s.issuer.clone(),
                    jwks,
                }],
                s.audience.clone(),
            );
            ac.leeway_secs = cfg.leeway_secs;
            let authn = Authenticator::new(ac).await?.with_clock(clock.clone());
            subjects.insert(s.issuer.clone(), (s.clone(), authn));
        }

        let mut own = BTreeMap::new();
        for resource in &cfg.resources {
            let mut ac = AuthnConfig::new(
                vec![IssuerConfig {
                    issuer: cfg.issuer.clone(),
                    jwks: JwksSource::File(key_dir.jwks_path()),
                }],
                resource.clone(),
            );
            ac.leeway_secs = cfg.leeway_secs;
            ac.algorithms = vec![
                mandate_authn::Algorithm::EdDSA,
                mandate_authn::Algorithm::ES256,
            ];
            ac.require_actor = true;
            own.insert(
                resource.clone(),
                Authenticator::new(ac).await?.with_clock(clock.clone()),
            );
        }

        let mut agents = BTreeMap::new();
        for (id, a) in &cfg.agents {
            let mut ac = AuthnConfig::new(
                vec![IssuerConfig {
                    issuer: id.clone(),
                    jwks: a.keys.clone(),
                }],
                cfg.issuer.clone(),
            );
            ac.leeway_secs = cfg.leeway_secs;
            let authn = Authenticator::new(ac)
                .await
                .map_err(|e| BrokerError::Config(format!("broker.agents.{id}: {e}")))?
                .accept_types(&[ASSERTION_TYP])
                .with_clock(clock.clone());
            agents.insert(id.clone(), AgentKeys { authn });
        }

        let spiffe = match &cfg.spiffe {
            None => None,
            Some(sp) => {
                Some(client::spiffe_authenticator(sp, cfg.leeway_secs, clock.clone()).await?)
            }
        };

        let signin = cfg
            .sign_in
            .as_ref()
            .map(|s| signin::SignIn::new(s, &cfg.issuer, control.clone()));
        Ok(Self {
            signin,
            dpop: Arc::new(
                DpopVerifier::new(cfg.dpop_require_nonce, cfg.leeway_secs)?
                    .with_clock(clock.clone()),
            ),
            cfg,
            key_dir,
            keys: ArcSwap::from_pointee(keys),
            key_stamp: std::sync::Mutex::new(stamp),
            subjects,
            own,
            agents,
            spiffe,
            assertions: ReplayCache::new(100_000),
            audit,
            control,
            clock,
            judge: std::sync::OnceLock::new(),
        })
    }

    /// Sets who judges the grants of declared intents (once).
    pub fn use_grant_judge(&self, judge: Arc<dyn GrantJudge>) {
        let _ = self.judge.set(judge);
    }

    /// Unix seconds by the broker's clock (0 before 1970).
    pub(crate) fn now_secs(&self) -> u64 {
        self.clock.now_unsigned_secs().unwrap_or(0)
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    /// The current keys.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.load().jwks().clone()
    }

    /// Re-reads the key directory if it changed (after `mandate keys
    /// rotate`). Cheap when nothing changed (one `stat`).
    pub fn reload_keys_if_changed(&self) -> Result<bool, BrokerError> {
        let stamp = self.key_dir.stamp();
        let mut last = self
            .key_stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == stamp {
            return Ok(false);
        }
        let set = self.key_dir.open()?;
        tracing::info!(kid = %set.signing().kid, "broker signing keys reloaded");
        self.keys.store(Arc::new(set));
        *last = self.key_dir.stamp();
        Ok(true)
    }

    /// The control store (tasks, revocations).
    pub fn control(&self) -> &Arc<ControlStore> {
        &self.control
    }

    /// The DPoP verifier (shared with the gateway so nonces agree).
    pub fn dpop(&self) -> Arc<DpopVerifier> {
        self.dpop.clone()
    }
}

/// `{issuer}/.well-known/openid-configuration` → `jwks_uri`, checking the
/// document names the same issuer (OpenID Connect Discovery §4.3).
async fn discover_jwks_uri(issuer: &str) -> Result<String, BrokerError> {
    let fail = |reason: String| BrokerError::Provider {
        issuer: issuer.to_owned(),
        reason,
    };
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let allowed = |u: &reqwest::Url| {
        u.scheme() == "https"
            || (u.scheme() == "http"
                && u.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }))
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| fail(format!("{url}: {e}")))?;
    if !allowed(&parsed) {
        return Err(fail(
            "discovery needs https (or http to a loopback host)".into(),
        ));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let doc: serde_json::Value = client
        .get(parsed)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail(format!("{url}: {}", e.without_url())))?
        .json()
        .await
        .map_err(|e| fail(format!("{url}: {}", e.without_url())))?;
    if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        return Err(fail("the discovery document names another issuer".into()));
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .ok_or_else(|| fail("the discovery document has no jwks_uri".into()))?;
    let parsed = reqwest::Url::parse(jwks_uri).map_err(|e| fail(format!("jwks_uri: {e}")))?;
    if !allowed(&parsed) {
        return Err(fail(
            "jwks_uri needs https (or http to a loopback host)".into(),
        ));
    }
    Ok(jwks_uri.to_owned())
}
