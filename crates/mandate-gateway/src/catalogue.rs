//! The tool catalogue: the upstreams behind the gateway, the tools each
//! serves (with their configured class), argument validation against each
//! tool's input schema, and the clients to tell when an upstream's tools
//! change. Owns [`Catalogue`]; tools are namespaced `upstream.tool`.

use crate::Gateway;
use crate::config::UpstreamConfig;
use crate::error::UpstreamError;
use crate::upstream::{Events, Upstream};
use dashmap::DashMap;
use mandate_authn::Principal;
use mandate_core::ToolName;
use mandate_policy::{DecisionRequest, SessionFacts};
use rmcp::model::Tool;
use rmcp::{Peer, RoleServer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The upstreams and what is cached of their catalogues, owned by this
/// module.
pub(crate) struct Catalogue {
    upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Compiled input schemas by exposed name, with the schema they were
    /// compiled from (identity).
    validators: DashMap<String, (Arc<rmcp::model::JsonObject>, Arc<jsonschema::Validator>)>,
    /// Connected clients, told when an upstream's tool list changes.
    peers: Mutex<Vec<Peer<RoleServer>>>,
}

impl Catalogue {
    /// The configured upstreams (connected lazily, on first use).
    pub(crate) fn new(upstreams: &[UpstreamConfig], events: &Arc<Events>) -> Self {
        Self {
            upstreams: upstreams
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        Arc::new(Upstream::new(u.clone(), events.clone())),
                    )
                })
                .collect(),
            validators: DashMap::new(),
            peers: Mutex::new(Vec::new()),
        }
    }

    /// The upstream called `name`.
    pub(crate) fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }
}

/// The result of looking up an exposed tool name.
pub(crate) enum Resolved {
    /// The upstream serves it. `class` is `None` when config does not
    /// classify it (deny). `tool` is its catalogue entry.
    Known {
        name: ToolName,
        upstream: Arc<Upstream>,
        class: Option<mandate_core::ToolClass>,
        tool: Option<Box<Tool>>,
    },
    /// No such upstream or tool.
    Unknown,
}

impl Gateway {
    /// Connects to every upstream and lists its tools; for `serve --check`.
    /// Returns one line per upstream, or the first failure.
    pub async fn probe_upstreams(&self) -> Result<Vec<String>, UpstreamError> {
        let mut lines = Vec::new();
        for (name, u) in &self.catalogue.upstreams {
            let n = u.probe().await?;
            let classified = u.config().tools.len();
            lines.push(format!(
                "upstream {name}: reachable, {n} tools ({classified} classified in config)"
            ));
        }
        Ok(lines)
    }

    /// Every tool of every upstream, with its configured class (`None`:
    /// unclassified, denied), for tooling such as `mandate policy args`.
    pub async fn catalogue(
        &self,
    ) -> Result<Vec<(String, Option<mandate_core::ToolClass>, Tool)>, UpstreamError> {
        let mut out = Vec::new();
        for (name, u) in &self.catalogue.upstreams {
            for tool in u.tools().await?.iter() {
                out.push((
                    format!("{name}.{}", tool.name),
                    u.config().class_of(&tool.name),
                    tool.clone(),
                ));
            }
        }
        Ok(out)
    }

    /// An operator (`by`) approves the current form of the tool exposed as
    /// `exposed` (`POST /api/tools/{name}/approve`): recorded, then pinned
    /// as approved. `Ok(None)`: no such tool in the upstreams' current
    /// catalogues. `Err`: the audit or the pin store is unavailable (why,
    /// for the log and the audit record).
    pub async fn approve_tool(
        &self,
        exposed: &str,
        by: &str,
        comment: Option<&str>,
    ) -> Result<Option<mandate_control::ToolPin>, String> {
        let Resolved::Known {
            tool: Some(tool), ..
        } = self.resolve(exposed).await
        else {
            return Ok(None);
        };
        let fp = crate::pinning::fingerprint(&tool);
        let description = tool.description.as_deref().unwrap_or_default();
        let reason = format!(
            "approved by {by}{}",
            comment.map(|c| format!(": {c}")).unwrap_or_default()
        );
        self.record_pin(exposed, &fp, description, true, &reason, by)
            .await
            .map(Some)
    }

    /// Looks up an exposed `upstream.tool` name.
    pub(crate) async fn resolve(&self, exposed: &str) -> Resolved {
        let Some(name) = ToolName::parse(exposed) else {
            return Resolved::Unknown;
        };
        let Some(upstream) = self.catalogue.upstreams.get(&name.upstream) else {
            return Resolved::Unknown;
        };
        let class = upstream.config().class_of(&name.tool);
        match upstream.tools().await {
            Ok(tools) => match tools.iter().find(|t| t.name == name.tool) {
                Some(tool) => Resolved::Known {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    class,
                    tool: Some(Box::new(tool.clone())),
                },
                None => Resolved::Unknown,
            },
            // The catalogue is unreadable: the name may be real, so this is a
            // (fail-closed) deny rather than "unknown".
            Err(e) => {
                tracing::warn!(error = %e, "tool catalogue unavailable");
                Resolved::Known {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    class,
                    tool: None,
                }
            }
        }
    }

    /// Validates arguments against the tool's input schema (compiled once per
    /// schema version).
    pub(crate) fn validate_args(
        &self,
        exposed: &str,
        tool: &Tool,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        // The cache entry holds the schema's Arc, so pointer equality means
        // "the same catalogue entry" (it cannot be freed and reused).
        // The cache lookup is its own statement: a `match` on `get()` would
        // keep the shard's read lock alive into the arm that inserts, and
        // DashMap locks are not reentrant (the worker thread would block
        // forever once a catalogue refresh replaced the schema).
        let cached = self
            .catalogue
            .validators
            .get(exposed)
            .filter(|v| Arc::ptr_eq(&v.0, &tool.input_schema))
            .map(|v| v.1.clone());
        let validator = match cached {
            Some(v) => v,
            None => {
                let schema = serde_json::Value::Object((*tool.input_schema).clone());
                let compiled = jsonschema::validator_for(&schema)
                    .map_err(|e| format!("the tool's input schema is invalid: {e}"))?;
                let compiled = Arc::new(compiled);
                self.catalogue.validators.insert(
                    exposed.to_owned(),
                    (tool.input_schema.clone(), compiled.clone()),
                );
                compiled
            }
        };
        let instance = serde_json::Value::Object(args.clone());
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .take(3)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The tools this subject may call: configured, in scope, not
    /// quarantined, and allowed by policy for some arguments (Cedar's
    /// partial evaluation with the arguments unknown); the call itself is
    /// decided on its own arguments.
    pub async fn list_tools(&self, principal: &Principal) -> Vec<Tool> {
        if self.control.check(&principal.caller()).is_some() {
            return Vec::new();
        }
        let facts = SessionFacts::default();
        let now = self.now_unix();
        let mut out = Vec::new();
        for (name, upstream) in &self.catalogue.upstreams {
            let tools = match upstream.tools().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "cannot list upstream tools");
                    continue;
                }
            };
            for tool in tools.iter() {
                let exposed = format!("{name}.{}", tool.name);
                let Some(class) = upstream.config().class_of(&tool.name) else {
                    continue;
                };
                if !principal.scope().covers(&exposed) || self.vet(&exposed, tool).await.is_err() {
                    continue;
                }
                let tool_name = ToolName {
                    upstream: name.clone(),
                    tool: tool.name.to_string(),
                };
                let call = mandate_core::ToolCall::new(tool_name, class, Default::default());
                // Listed when some arguments could be allowed: a model cannot
                // call a tool it was never shown, and every call is decided
                // on its own arguments anyway.
                let listable = self.policy.may_allow(&DecisionRequest {
                    caller: principal.caller(),
                    call: &call,
                    session: &facts,
                    now_unix: now,
                });
                if !listable {
                    continue;
                }
                let mut shown = tool.clone();
                shown.name = exposed.into();
                out.push(shown);
            }
        }
        out
    }

    /// Remembers a connected client so it hears `tools/list_changed`.
    pub(crate) fn register_peer(&self, peer: Peer<RoleServer>) {
        if let Ok(mut peers) = self.catalogue.peers.lock() {
            peers.retain(|p| !p.is_transport_closed());
            peers.push(peer);
        }
    }

    pub(crate) async fn upstream_tools_changed(&self, upstream: &str) {
        if let Some(u) = self.catalogue.upstreams.get(upstream) {
            u.invalidate_tools().await;
        }
        let peers: Vec<_> = match self.catalogue.peers.lock() {
            Ok(mut peers) => {
                peers.retain(|p| !p.is_transport_closed());
                peers.clone()
            }
            Err(_) => return,
        };
        for peer in peers {
            if let Err(e) = peer.notify_tool_list_changed().await {
                tracing::debug!(error = %e, "could not notify client of tool list change");
            }
        }
    }
}
