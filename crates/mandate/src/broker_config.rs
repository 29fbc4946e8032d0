//! `[broker]` of `mandate.toml` → [`mandate_broker::BrokerConfig`].
//!
//! Kept apart from `config.rs` so the broker's settings read as one unit;
//! `config.rs` only calls [`BrokerSection::resolve`].

use anyhow::{Context, Result, anyhow, bail};
use mandate_authn::{Algorithm, JwksSource};
use mandate_broker::{
    AgentConfig, BrokerConfig, Entitlements, RegisteredBuild, SignInConfig, SpiffeConfig,
    SubjectIssuer, TaskTemplate,
};
use mandate_core::Scope;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    #[serde(default = "yes")]
    enabled: bool,
    issuer: Option<String>,
    resources: Option<Vec<String>>,
    key_dir: Option<String>,
    #[serde(default = "default_alg")]
    key_algorithm: String,
    #[serde(default = "default_ttl")]
    max_token_ttl_secs: u64,
    #[serde(default = "default_depth")]
    max_delegation_depth: usize,
    #[serde(default)]
    dpop_require_nonce: bool,
    #[serde(default)]
    identity_providers: Vec<IdpSection>,
    #[serde(default)]
    entitlements: EntitlementsSection,
    #[serde(default)]
    agents: BTreeMap<String, AgentSection>,
    #[serde(default)]
    tasks: BTreeMap<String, TaskSection>,
    spiffe: Option<SpiffeSection>,
    sign_in: Option<SignInSection>,
}

/// `[broker.sign_in]`: MCP sign-in (docs/BROKER.md "MCP sign-in").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInSection {
    #[serde(default = "yes")]
    enabled: bool,
    /// The OpenID Connect provider users sign in at.
    issuer: String,
    /// The broker's client id there.
    client_id: String,
    /// The environment variable holding the broker's client secret there.
    client_secret_env: Option<String>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "yes")]
    allow_loopback_redirects: bool,
    #[serde(default)]
    https_redirect_prefixes: Vec<String>,
    /// What a signed-in client may be granted at most.
    scopes: String,
    #[serde(default = "default_ttl")]
    token_ttl_secs: u64,
    #[serde(default = "default_max_clients")]
    max_clients: usize,
    #[serde(default = "default_max_pending")]
    max_pending: usize,
}

fn default_max_clients() -> usize {
    mandate_broker::config::DEFAULT_MAX_CLIENTS
}
fn default_max_pending() -> usize {
    mandate_broker::config::DEFAULT_MAX_PENDING
}

impl SignInSection {
    fn resolve(&self) -> Result<Option<SignInConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        let client_secret = match &self.client_secret_env {
            None => None,
            Some(var) => {
                let secret = std::env::var(var).map_err(|_| {
                    anyhow!("broker.sign_in.client_secret_env: the environment variable {var} is not set")
                })?;
                if secret.is_empty() {
                    bail!(
                        "broker.sign_in.client_secret_env: the environment variable {var} is empty"
                    );
                }
                Some(mandate_authn::oidc::ClientSecret::new(secret))
            }
        };
        Ok(Some(SignInConfig {
            provider_issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret,
            groups_claim: self.groups_claim.clone(),
            loopback_redirects: self.allow_loopback_redirects,
            https_redirect_prefixes: self.https_redirect_prefixes.clone(),
            scope: Scope::parse(&self.scopes),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            max_clients: self.max_clients,
            max_pending: self.max_pending,
        }))
    }
}

fn yes() -> bool {
    true
}
fn default_alg() -> String {
    "EdDSA".into()
}
fn default_ttl() -> u64 {
    mandate_broker::config::DEFAULT_TOKEN_TTL.as_secs()
}
fn default_depth() -> usize {
    mandate_broker::config::DEFAULT_MAX_DEPTH
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdpSection {
    issuer: String,
    audience: String,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
}

fn default_groups_claim() -> String {
    "groups".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntitlementsSection {
    #[serde(default)]
    default: String,
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSection {
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    scope_ceiling: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    builds: Vec<BuildSection>,
    #[serde(default)]
    delegate_to: Vec<String>,
    #[serde(default)]
    dpop: bool,
    spiffe_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSection {
    name: Option<String>,
    model: String,
    system_prompt: String,
    tools: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSection {
    scope: String,
    max_duration_secs: u64,
    agents: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpiffeSection {
    trust_domain: String,
    bundle: String,
    audience: Option<String>,
}

/// The values of the rest of the configuration the broker depends on.
pub struct BrokerContext<'a> {
    pub public_url: &'a str,
    pub data_dir: &'a Path,
    pub resource: &'a str,
    pub leeway_secs: u64,
    pub subst: &'a dyn Fn(&str) -> String,
}

/// Reads a build's files and computes its hash (the same computation as
/// `mandate build-hash`).
pub fn build_of(
    model: &str,
    system_prompt: &Path,
    tools: &Path,
) -> Result<(String, RegisteredBuild)> {
    let prompt = std::fs::read_to_string(system_prompt)
        .with_context(|| format!("cannot read system prompt {}", system_prompt.display()))?;
    let text = std::fs::read_to_string(tools)
        .with_context(|| format!("cannot read tool manifest {}", tools.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("tool manifest {} is not JSON", tools.display()))?;
    let normalised = mandate_core::build::normalise_manifest(&manifest)
        .map_err(|e| anyhow!("tool manifest {}: {e}", tools.display()))?;
    let manifest_hash = mandate_core::build::manifest_hash(&manifest)
        .map_err(|e| anyhow!("tool manifest {}: {e}", tools.display()))?;
    let hash = mandate_core::build::build_hash(model, &prompt, &manifest_hash);
    let names = normalised
        .iter()
        .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    Ok((
        hash,
        RegisteredBuild {
            name: String::new(),
            model: model.to_owned(),
            manifest: manifest_hash,
            tools: names,
        },
    ))
}

fn jwks_of(
    what: &str,
    file: Option<&String>,
    url: Option<&String>,
    subst: &dyn Fn(&str) -> String,
) -> Result<JwksSource> {
    match (file, url) {
        (Some(f), None) => Ok(JwksSource::File(PathBuf::from(subst(f)))),
        (None, Some(u)) => Ok(JwksSource::Url(u.clone())),
        _ => bail!("{what}: set exactly one of jwks_file and jwks_url"),
    }
}

impl BrokerSection {
    /// Whether the broker is switched on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The broker's issuer identifier for this configuration.
    pub fn issuer(&self, public_url: &str) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| public_url.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }

    /// Where its keys are.
    pub fn key_dir(&self, data_dir: &Path, subst: &dyn Fn(&str) -> String) -> PathBuf {
        match &self.key_dir {
            Some(d) => PathBuf::from(subst(d)),
            None => data_dir.join("broker-keys"),
        }
    }

    pub fn resolve(&self, cx: &BrokerContext<'_>) -> Result<BrokerConfig> {
        let subst = cx.subst;
        let key_algorithm = match self.key_algorithm.as_str() {
            "EdDSA" => Algorithm::EdDSA,
            "ES256" => Algorithm::ES256,
            other => bail!("broker.key_algorithm {other:?} must be \"EdDSA\" or \"ES256\""),
        };
        let mut subject_issuers = Vec::new();
        for (i, p) in self.identity_providers.iter().enumerate() {
            let jwks = match (&p.jwks_file, &p.jwks_url) {
                (None, None) => None,
                _ => Some(jwks_of(
                    &format!("broker.identity_providers[{i}]"),
                    p.jwks_file.as_ref(),
                    p.jwks_url.as_ref(),
                    subst,
                )?),
            };
            subject_issuers.push(SubjectIssuer {
                issuer: p.issuer.clone(),
                audience: p.audience.clone(),
                jwks,
                groups_claim: p.groups_claim.clone(),
            });
        }
        let mut agents = BTreeMap::new();
        for (id, a) in &self.agents {
            let keys = jwks_of(
                &format!("broker.agents.{id}"),
                a.jwks_file.as_ref(),
                a.jwks_url.as_ref(),
                subst,
            )?;
            let mut builds = BTreeMap::new();
            for (i, b) in a.builds.iter().enumerate() {
                let (hash, mut build) = build_of(
                    &b.model,
                    Path::new(&subst(&b.system_prompt)),
                    Path::new(&subst(&b.tools)),
                )
                .with_context(|| format!("broker.agents.{id}.builds[{i}]"))?;
                build.name = b
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{id} build {}", i.saturating_add(1)));
                builds.insert(hash, build);
            }
            agents.insert(
                id.clone(),
                AgentConfig {
                    keys,
                    scope_ceiling: Scope::parse(&a.scope_ceiling),
                    users: a.users.iter().cloned().collect(),
                    groups: a.groups.iter().cloned().collect(),
                    builds,
                    delegate_to: a.delegate_to.iter().cloned().collect(),
                    dpop: a.dpop,
                    spiffe_id: a.spiffe_id.clone(),
                },
            );
        }
        let templates = self
            .tasks
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    TaskTemplate {
                        scope: Scope::parse(&t.scope),
                        max_duration: Duration::from_secs(t.max_duration_secs),
                        agents: t.agents.iter().cloned().collect::<BTreeSet<_>>(),
                    },
                )
            })
            .collect();
        let issuer = self.issuer(cx.public_url);
        let spiffe = self.spiffe.as_ref().map(|s| SpiffeConfig {
            trust_domain: s.trust_domain.clone(),
            bundle: PathBuf::from(subst(&s.bundle)),
            audience: s.audience.clone().unwrap_or_else(|| issuer.clone()),
        });
        let cfg = BrokerConfig {
            resources: self
                .resources
                .clone()
                .unwrap_or_else(|| vec![cx.resource.to_owned()]),
            key_dir: self.key_dir(cx.data_dir, subst),
            key_algorithm,
            max_token_ttl: Duration::from_secs(self.max_token_ttl_secs),
            max_delegation_depth: self.max_delegation_depth,
            leeway_secs: cx.leeway_secs,
            subject_issuers,
            entitlements: Entitlements {
                default: Scope::parse(&self.entitlements.default),
                users: self
                    .entitlements
                    .users
                    .iter()
                    .map(|(k, v)| (k.clone(), Scope::parse(v)))
                    .collect(),
                groups: self
                    .entitlements
                    .groups
                    .iter()
                    .map(|(k, v)| (k.clone(), Scope::parse(v)))
                    .collect(),
            },
            agents,
            templates,
            spiffe,
            dpop_require_nonce: self.dpop_require_nonce,
            sign_in: match &self.sign_in {
                Some(s) => s.resolve()?,
                None => None,
            },
            issuer,
        };
        cfg.validate().map_err(|e| anyhow!(e))?;
        Ok(cfg)
    }
}
