//! Build attestation at the gateway: a token minted by the broker names
//! the agent's `build`, the hash of (model, system prompt, tool manifest).
//! On every call the gateway checks that the build is registered for the
//! calling agent, that the tool is part of the build's manifest, and that
//! the tools it serves under those names still hash to the registered
//! manifest. A changed tool description or schema ("rug pull") makes the
//! build unknown, and every call of that build is denied (and audited).
//!
//! The manifest is recomputed only when an upstream's catalogue changes:
//! the verdict is cached against the identity of the catalogues it read.
//!
//! One exception, off unless the policy says so: an MCP client signed in
//! through the broker's MCP sign-in holds a token without a build (its
//! only actor is `mcp-client-<id>`, see
//! [`mandate_core::SIGNED_IN_ACTOR_PREFIX`]). Every other token of the
//! broker still needs a registered build.

use crate::Gateway;
use mandate_authn::Principal;
use mandate_core::ToolName;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A build the broker registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredManifest {
    /// The agents it is registered for.
    pub agents: BTreeSet<String>,
    /// Its manifest hash (`mandate_core::build::manifest_hash`).
    pub manifest: String,
    /// The exposed tool names of the manifest.
    pub tools: BTreeSet<String>,
}

/// The builds to enforce, for tokens of one issuer (the broker).
#[derive(Debug, Clone, Default)]
pub struct BuildPolicy {
    /// The issuer whose tokens are held to their build.
    pub issuer: String,
    /// Build hash → registration.
    pub builds: BTreeMap<String, RegisteredManifest>,
    /// Accept build-less tokens whose only actor is a signed-in MCP client
    /// (`mcp-client-…`): on when the broker's MCP sign-in is configured.
    pub signed_in_clients: bool,
}

impl BuildPolicy {
    /// Whether a token whose actors are `act` may go without a build:
    /// only a signed-in MCP client (one actor, with the prefix), and only
    /// when allowed.
    fn build_less_allowed(&self, act: &[String]) -> bool {
        self.signed_in_clients
            && matches!(act, [only] if only.starts_with(mandate_core::SIGNED_IN_ACTOR_PREFIX))
    }
}

/// A cached verdict: the catalogues it was computed from and whether they
/// hashed to the registered manifest. The catalogues are held (not just
/// their addresses), so a new catalogue can never reuse a freed one's
/// address and inherit its verdict.
type ManifestVerdict = (Vec<Arc<[rmcp::model::Tool]>>, bool);

/// The builds enforced and the manifest verdicts, owned by this module.
#[derive(Default)]
pub(crate) struct Builds {
    /// Registered builds of the broker's tokens.
    policy: arc_swap::ArcSwap<Option<BuildPolicy>>,
    /// Manifest verdicts by build hash.
    verdicts: dashmap::DashMap<String, ManifestVerdict>,
}

impl Gateway {
    /// Enforces registered builds for the broker's tokens (called once at
    /// start when the broker is enabled).
    pub fn enforce_builds(&self, policy: BuildPolicy) {
        self.builds.policy.store(Arc::new(Some(policy)));
        self.builds.verdicts.clear();
    }

    /// `Err(reason)` when the principal's build may not call `exposed`.
    pub(crate) async fn check_build(
        &self,
        principal: &Principal,
        exposed: &str,
    ) -> Result<(), String> {
        let policy = self.builds.policy.load();
        let Some(policy) = policy.as_ref() else {
            return Ok(());
        };
        if principal.iss() != policy.issuer {
            return Ok(());
        }
        let Some(build) = principal.build() else {
            if policy.build_less_allowed(principal.act()) {
                return Ok(());
            }
            return Err("the token names no build".into());
        };
        let Some(reg) = policy.builds.get(build) else {
            return Err(format!("build {build:.16}… is not registered"));
        };
        if !principal.agent().is_some_and(|a| reg.agents.contains(a)) {
            return Err(format!(
                "build {build:.16}… is registered for another agent"
            ));
        }
        if !reg.tools.contains(exposed) {
            return Err(format!(
                "{exposed} is not in the tool manifest of build {build:.16}…"
            ));
        }
        if self.manifest_matches(build, reg).await? {
            Ok(())
        } else {
            Err(format!(
                "the tools served for build {build:.16}… no longer match its registered manifest (a tool's description or schema changed): unknown build"
            ))
        }
    }

    /// Whether the tools served under the manifest's names hash to it.
    async fn manifest_matches(
        &self,
        build: &str,
        reg: &RegisteredManifest,
    ) -> Result<bool, String> {
        // Each upstream's catalogue is read once per call, however many of
        // the manifest's tools it serves.
        let mut catalogues: BTreeMap<String, Arc<[rmcp::model::Tool]>> = BTreeMap::new();
        let mut wanted = Vec::with_capacity(reg.tools.len());
        for name in &reg.tools {
            let parsed = ToolName::parse(name)
                .ok_or_else(|| format!("manifest tool {name} is not upstream.tool"))?;
            if !catalogues.contains_key(&parsed.upstream) {
                let upstream = self.catalogue.upstream(&parsed.upstream).ok_or_else(|| {
                    format!("manifest tool {name}: no upstream {}", parsed.upstream)
                })?;
                let tools = upstream
                    .tools()
                    .await
                    .map_err(|_| format!("the catalogue of {} is unavailable", parsed.upstream))?;
                catalogues.insert(parsed.upstream.clone(), tools);
            }
            wanted.push((name, parsed));
        }
        let idents: Vec<Arc<[rmcp::model::Tool]>> = catalogues.values().cloned().collect();
        if let Some(v) = self.builds.verdicts.get(build)
            && v.0.len() == idents.len()
            && v.0.iter().zip(&idents).all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return Ok(v.1);
        }
        let mut served = Vec::with_capacity(wanted.len());
        for (name, parsed) in &wanted {
            let tool = catalogues
                .get(&parsed.upstream)
                .and_then(|tools| tools.iter().find(|t| t.name == parsed.tool));
            let Some(tool) = tool else {
                // A tool of the manifest is gone: the build is not what was registered.
                self.builds
                    .verdicts
                    .insert(build.to_owned(), (idents, false));
                return Ok(false);
            };
            let mut v = serde_json::to_value(tool).map_err(|e| e.to_string())?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("name".into(), serde_json::Value::String((*name).clone()));
            }
            served.push(v);
        }
        let ok = mandate_core::build::manifest_hash(&serde_json::Value::Array(served))
            .is_ok_and(|h| h == reg.manifest);
        if !ok {
            tracing::warn!(
                build,
                "served tools no longer match the build's registered manifest"
            );
        }
        self.builds.verdicts.insert(build.to_owned(), (idents, ok));
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(act: &[&str]) -> Vec<String> {
        act.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn only_signed_in_clients_go_without_a_build_and_only_when_allowed() {
        let mut policy = BuildPolicy {
            issuer: "https://broker.test".into(),
            builds: BTreeMap::new(),
            signed_in_clients: false,
        };
        let client = principal(&["mcp-client-abc"]);
        assert!(!policy.build_less_allowed(&client));
        policy.signed_in_clients = true;
        assert!(policy.build_less_allowed(&client));
        // An agent, a chain through a client, or a look-alike still need one.
        for act in [
            &["assistant"][..],
            &["assistant", "mcp-client-abc"][..],
            &["mcp-client-abc", "assistant"][..],
            &["MCP-CLIENT-abc"][..],
            &[][..],
        ] {
            assert!(!policy.build_less_allowed(&principal(act)), "{act:?}");
        }
    }
}
