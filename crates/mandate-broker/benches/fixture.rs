//! A broker with file-based keys for an identity provider and two agents,
//! shared by the integration tests and the benchmark (`#[path]`-included).

#![allow(
    dead_code,
    reason = "the tests and the benchmark each use part of the fixture"
)]

use mandate_authn::dev::DevKey;
use mandate_authn::{Algorithm, JwksSource};
use mandate_broker::{
    AgentConfig, Broker, BrokerConfig, Entitlements, RegisteredBuild, SubjectIssuer, TaskTemplate,
};
use mandate_core::Scope;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub const ISSUER: &str = "https://mandate.test";
pub const RESOURCE: &str = "https://mandate.test/mcp";
pub const IDP: &str = "https://idp.test";
pub const APP: &str = "agent-app";
pub const BUILD: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";

pub struct Fixture {
    pub broker: Arc<Broker>,
    pub idp: DevKey,
    pub agents: BTreeMap<String, DevKey>,
    pub dir: tempfile::TempDir,
    pub audit_path: std::path::PathBuf,
}

pub fn now() -> u64 {
    mandate_core::Clock::system()
        .now_unsigned_secs()
        .unwrap_or_default()
}

fn write_jwks(dir: &std::path::Path, name: &str, key: &DevKey) -> Result<JwksSource, Error> {
    let path = dir.join(format!("{name}.jwks.json"));
    std::fs::write(&path, key.jwks_json())?;
    Ok(JwksSource::File(path))
}

fn agent(keys: JwksSource, ceiling: &str, delegate_to: &[&str], dpop: bool) -> AgentConfig {
    AgentConfig {
        keys,
        scope_ceiling: Scope::parse(ceiling),
        users: BTreeSet::from(["alice".to_owned()]),
        groups: BTreeSet::from(["research".to_owned()]),
        builds: BTreeMap::from([(
            BUILD.to_owned(),
            RegisteredBuild {
                name: "b1".into(),
                model: "m".into(),
                manifest: "00".into(),
                tools: BTreeSet::from(["docs.search".to_owned()]),
            },
        )]),
        delegate_to: delegate_to.iter().map(|s| (*s).to_owned()).collect(),
        dpop,
        spiffe_id: None,
    }
}

/// A broker whose keys use `alg`.
pub async fn fixture(alg: Algorithm) -> Result<Fixture, Error> {
    let dir = tempfile::tempdir()?;
    let idp = DevKey::generate(Algorithm::ES256)?;
    let idp_keys = write_jwks(dir.path(), "idp", &idp)?;
    let mut agents = BTreeMap::new();
    let mut agent_cfgs = BTreeMap::new();
    for (name, ceiling, delegate, dpop) in [
        (
            "assistant",
            "docs.* bank.get_balance",
            &["summariser"][..],
            false,
        ),
        ("summariser", "docs.search", &[][..], false),
        ("bound", "docs.*", &[][..], true),
        ("stranger", "docs.*", &[][..], false),
    ] {
        let key = DevKey::generate(Algorithm::ES256)?;
        let src = write_jwks(dir.path(), name, &key)?;
        agent_cfgs.insert(name.to_owned(), agent(src, ceiling, delegate, dpop));
        agents.insert(name.to_owned(), key);
    }
    let cfg = BrokerConfig {
        issuer: ISSUER.into(),
        resources: vec![RESOURCE.into()],
        key_dir: dir.path().join("keys"),
        key_algorithm: alg,
        max_token_ttl: Duration::from_secs(600),
        max_delegation_depth: 2,
        leeway_secs: 5,
        subject_issuers: vec![SubjectIssuer {
            issuer: IDP.into(),
            audience: APP.into(),
            jwks: Some(idp_keys),
            groups_claim: "groups".into(),
        }],
        entitlements: Entitlements {
            default: Scope::default(),
            users: BTreeMap::new(),
            groups: BTreeMap::from([(
                "research".to_owned(),
                Scope::parse("docs.* bank.get_balance"),
            )]),
        },
        agents: agent_cfgs,
        templates: BTreeMap::from([(
            "research".to_owned(),
            TaskTemplate {
                scope: Scope::parse("docs.*"),
                max_duration: Duration::from_secs(3600),
                agents: BTreeSet::from([
                    "assistant".to_owned(),
                    "summariser".to_owned(),
                    "bound".to_owned(),
                ]),
            },
        )]),
        spiffe: None,
        dpop_require_nonce: false,
        sign_in: None,
    };
    let audit_path = dir.path().join("audit.sqlite");
    let audit = mandate_audit::AuditLog::open_sqlite(&audit_path)?;
    let control = Arc::new(mandate_control::ControlStore::open(
        &dir.path().join("control.sqlite"),
    )?);
    let broker = Broker::new(cfg, audit, control).await?;
    Ok(Fixture {
        broker: Arc::new(broker),
        idp,
        agents,
        dir,
        audit_path,
    })
}

impl Fixture {
    /// The user's ID token from the identity provider.
    pub fn user_token(&self, sub: &str, extra: Value) -> Result<String, Error> {
        let now = now();
        let mut claims = json!({"iss": IDP, "aud": APP, "sub": sub, "iat": now, "exp": now + 600,
                                "groups": ["research"]});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        Ok(self.idp.sign_typed("JWT", false, &claims)?)
    }

    fn key(&self, agent: &str) -> Result<&DevKey, Error> {
        self.agents.get(agent).ok_or_else(|| "no such agent".into())
    }

    /// A fresh client assertion.
    pub fn assertion(&self, agent: &str) -> Result<String, Error> {
        let now = now();
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = json!({"iss": agent, "sub": agent, "aud": ISSUER, "jti": jti, "iat": now, "exp": now + 60});
        Ok(self
            .key(agent)?
            .sign_typed("client-authentication+jwt", false, &claims)?)
    }

    /// The agent's actor token.
    pub fn actor(&self, agent: &str) -> Result<String, Error> {
        let now = now();
        let claims =
            json!({"iss": agent, "sub": agent, "aud": ISSUER, "iat": now, "exp": now + 300});
        Ok(self.key(agent)?.sign_typed("JWT", false, &claims)?)
    }

    /// A token request body.
    pub fn form(
        &self,
        agent: &str,
        subject: &str,
        subject_type: &str,
        extra: &[(&str, &str)],
    ) -> Result<Vec<u8>, Error> {
        let assertion = self.assertion(agent)?;
        let actor = self.actor(agent)?;
        let mut pairs: BTreeMap<&str, &str> = BTreeMap::from([
            ("grant_type", mandate_broker::GRANT_TOKEN_EXCHANGE),
            (
                "client_assertion_type",
                mandate_broker::ASSERTION_JWT_BEARER,
            ),
            ("client_assertion", assertion.as_str()),
            ("subject_token", subject),
            ("subject_token_type", subject_type),
            ("actor_token", actor.as_str()),
            ("actor_token_type", mandate_broker::token_type::JWT),
            ("resource", RESOURCE),
            ("task_id", "task-1"),
            ("task_template", "research"),
            ("build", BUILD),
            ("scope", "docs.search"),
        ]);
        for (k, v) in extra {
            if v.is_empty() {
                pairs.remove(k);
            } else {
                pairs.insert(k, v);
            }
        }
        Ok(serde_urlencoded::to_string(pairs)?.into_bytes())
    }
}
