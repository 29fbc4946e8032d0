//! What the user asked for, and where the call's values came from: the
//! facts the policies judge sinks by (docs/INTENT.md, docs/PROVENANCE.md).
//!
//! * **Intent.** A task may carry the user's intent, declared before the
//!   agent read anything (the broker's token exchange, `mandate task
//!   start`): grants of `authorization_details` kept in the control store.
//!   A call is *covered* when a granted grant with a use left names its
//!   tool (or class) and every constraint the grant places on the
//!   arguments holds. A grant covers an argument only through a constraint
//!   on that argument.
//! * **Provenance.** Each Mandate session remembers the values its results
//!   introduced (`mandate-provenance`), with the label of the tool that
//!   returned them, and the values the task's granted intent names (its
//!   own source, `intent`). An argument is *untrusted* when it carries a
//!   value only untrusted results introduced (the user never named it);
//!   *uncovered* when, moreover, no constraint of the covering grant covers
//!   it. So an argument that is untrusted but not uncovered is one a
//!   non-literal constraint vouches for (`returned_by`: "the IBAN from the
//!   bill"), and a policy can refuse that for a sink where the source's
//!   word is not enough.
//!
//! Fail closed: in a session whose memory of values is incomplete (it
//! overflowed, or was lost in a restart) and that has read untrusted
//! content, a value it cannot place keeps a grant from covering the call
//! unless a constraint covers that argument (a tainted sink then asks a
//! person); `provenance.partial` tells the policies.

use crate::Gateway;
use mandate_authn::Principal;
use mandate_control::{IntentKey, TaskIntent};
use mandate_core::ToolCall;
use mandate_intent::Call;
use mandate_policy::{ArgumentFacts, IntentFacts};
use mandate_provenance::{ArgSources, Label, SessionValues};
use std::collections::BTreeSet;
use std::sync::Arc;

/// How long a task's intent is served from memory before it is read again
/// (an approval of pending grants takes effect within this).
const INTENT_CACHE_MS: i64 = 1000;

/// At most this many tasks' intents are cached; past it, stale entries are
/// dropped first, then all (the store is the truth; the cache only saves
/// reads).
const INTENT_CACHE_MAX: usize = 10_000;

/// A grant whose `one_of` constraints spell out more calls than this is
/// put to the user rather than judged call by call.
const MAX_JUDGED_CALLS: usize = 64;

/// The facts of one call, and the use it holds.
#[derive(Debug, Default)]
pub(crate) struct CallFacts {
    pub(crate) intent: IntentFacts,
    pub(crate) provenance: ArgumentFacts,
    /// Per-argument sources, as the audit record and the approver see them.
    pub(crate) sources: Option<serde_json::Value>,
    /// A use of the covering grant taken for this call (given back if the
    /// call is not let through).
    pub(crate) claimed: Option<(IntentKey, String)>,
}

impl Gateway {
    /// The key of the principal's task intent, if it names a task.
    fn intent_key(principal: &Principal) -> Option<IntentKey> {
        principal
            .task_id()
            .map(|t| IntentKey::new(principal.iss(), principal.sub(), t))
    }

    /// The task's intent (cached briefly). An unreadable store counts as
    /// "no intent": nothing is covered, which only ever denies more.
    async fn task_intent(&self, key: &IntentKey) -> Option<Arc<TaskIntent>> {
        let cache_key = serde_json::json!([key.iss, key.sub, key.task_id]).to_string();
        let now = self.clock.now_ms();
        if let Some(hit) = self.intents.get(&cache_key)
            && now.saturating_sub(hit.0) < INTENT_CACHE_MS
        {
            return hit.1.clone();
        }
        let intent = match self.control.intent(key).await {
            Ok(found) => found.map(Arc::new),
            Err(e) => {
                tracing::warn!(error = %e, "task intent unreadable; treating the call as uncovered");
                None
            }
        };
        if self.intents.len() >= INTENT_CACHE_MAX {
            self.intents
                .retain(|_, v| now.saturating_sub(v.0) < INTENT_CACHE_MS);
            if self.intents.len() >= INTENT_CACHE_MAX {
                self.intents.clear();
            }
        }
        self.intents.insert(cache_key, (now, intent.clone()));
        intent
    }

    /// Forgets cached intents (after a change through this process).
    pub fn intent_changed(&self) {
        self.intents.clear();
    }

    /// The intent and provenance facts of `call`, taking a use of the
    /// covering grant when it counts uses.
    pub(crate) async fn call_facts(
        &self,
        principal: &Principal,
        call: &ToolCall,
        exposed: &str,
    ) -> CallFacts {
        // The task's intent first: the values it names are a source of
        // their own (the user's word), before the arguments are placed.
        let key = Self::intent_key(principal);
        let intent = match &key {
            Some(k) => self.task_intent(k).await,
            None => None,
        };
        let granted = intent.as_ref().map(|i| i.granted());
        if let (Some(intent), Some(granted)) = (&intent, &granted) {
            self.observe_intent(principal, &intent.intent_hash, granted);
        }

        // Where the arguments' values came from.
        let (sources, partial, tainted) = {
            let session = self.usage.session_view(&principal.state_key());
            match session
                .as_ref()
                .and_then(|s| s.values.as_ref().map(|v| (s, v)))
            {
                Some((s, values)) => (
                    Some(values.sources(&call.args)),
                    values.is_partial(),
                    !s.taint.is_empty(),
                ),
                None => (
                    None,
                    session.as_ref().is_some_and(|s| s.values_lost),
                    session.as_ref().is_some_and(|s| !s.taint.is_empty()),
                ),
            }
        };
        let untrusted: BTreeSet<String> = sources
            .as_ref()
            .map(|s| s.untrusted_only().into_iter().map(str::to_owned).collect())
            .unwrap_or_default();
        let unseen: BTreeSet<String> = sources
            .as_ref()
            .map(|s| s.unseen().into_iter().map(str::to_owned).collect())
            .unwrap_or_else(|| call.args.keys().cloned().collect());
        // The session read untrusted content and forgot some of what (its
        // memory overflowed, or a restart lost it): a value it cannot
        // place may have come from there. Such a value is not known to be
        // untrusted (no outright refusal), but no grant covers the call
        // unless a constraint covers it: a tainted sink then asks a person.
        let unplaced: BTreeSet<String> = if partial && tainted {
            unseen.clone()
        } else {
            BTreeSet::new()
        };

        // What the task's intent covers.
        let mut facts = CallFacts {
            intent: IntentFacts {
                declared: intent.is_some(),
                ..IntentFacts::default()
            },
            sources: sources
                .as_ref()
                .map(|s| sources_json(s, &self.cfg.redaction, exposed)),
            ..CallFacts::default()
        };
        let mut constrained = BTreeSet::new();
        if let (Some(key), Some(intent), Some(granted)) = (key, intent, granted) {
            let origins = |arg: &str, _value: &serde_json::Value| -> BTreeSet<String> {
                sources
                    .as_ref()
                    .and_then(|s| s.get(arg))
                    .map(|a| {
                        a.values
                            .iter()
                            .flat_map(|v| v.sources.origins.iter())
                            .map(|o| format!("{}", o.tool))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let coverage = granted.cover(&Call::of(call, exposed), &origins);
            if let Some(grant) = coverage
                .first_available(|id| intent.has_use_left(id))
                .filter(|g| unplaced.iter().all(|a| g.constrains(a)))
            {
                let id = grant.identifier().to_owned();
                let counted = grant.max_uses().is_some();
                let taken = if counted {
                    matches!(self.control.consume_grant(&key, &id).await, Ok(Some(_)))
                } else {
                    true
                };
                if taken {
                    constrained = grant
                        .constrained()
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    facts.intent.covered = true;
                    facts.intent.grant.clone_from(&id);
                    if counted {
                        facts.claimed = Some((key, id));
                        self.intent_changed();
                    }
                }
            }
        }
        facts.provenance = ArgumentFacts {
            uncovered: untrusted
                .iter()
                .filter(|a| !constrained.contains(*a))
                .cloned()
                .collect(),
            untrusted,
            unseen,
            partial,
        };
        facts
    }

    /// Gives back a use taken for a call that was not let through.
    pub(crate) async fn refund(&self, claimed: Option<(IntentKey, String)>) {
        let Some((key, id)) = claimed else {
            return;
        };
        let _ = self.control.refund_grant(&key, &id).await;
        self.intent_changed();
    }

    /// Makes the values the task's granted intent names (its `equals` and
    /// `one_of` constraints) a source of their own in the caller's session,
    /// `intent`: the user's word, declared before anything was read. A value
    /// the user named is then never "only untrusted content introduced
    /// it", in any argument, even when a result repeats it; a value that
    /// only a `returned_by` (or another non-literal) constraint vouches for
    /// stays untrusted, so a policy can tell the two apart. Scanned once
    /// per session and set of granted grants; only into a session that has
    /// seen results (before any, nothing is untrusted).
    fn observe_intent(&self, principal: &Principal, hash: &str, granted: &mandate_intent::Intent) {
        let named: Vec<serde_json::Value> = granted
            .grants()
            .iter()
            .flat_map(|g| g.arguments().values())
            .flat_map(|c| {
                c.equals()
                    .into_iter()
                    .chain(c.one_of().into_iter().flatten())
            })
            .cloned()
            .collect();
        if named.is_empty() {
            return;
        }
        let key = principal.state_key();
        if self
            .usage
            .session_view(&key)
            .is_none_or(|s| s.values.is_none())
        {
            return;
        }
        let version = format!("{hash}:{}", granted.len());
        let mut s = self.usage.session(key);
        if let Some(values) = s.values.as_mut() {
            values.observe_intent_version(&version, &serde_json::Value::Array(named));
        }
    }

    /// Remembers the values a result introduced into the caller's session.
    pub(crate) fn observe_result(
        &self,
        principal: &Principal,
        tool: &str,
        provenance: crate::provenance::Provenance,
        correlation: &str,
        result: &rmcp::model::CallToolResult,
    ) {
        let Ok(json) = serde_json::to_value(result) else {
            return;
        };
        let label = match provenance {
            crate::provenance::Provenance::Trusted => Label::Trusted,
            crate::provenance::Provenance::Untrusted => Label::Untrusted,
            crate::provenance::Provenance::Sensitive => Label::Sensitive,
        };
        let mut s = self.usage.session(principal.state_key());
        s.exp = s.exp.max(principal.exp());
        let lost = s.values_lost;
        let values = s.values.get_or_insert_with(|| new_values(lost));
        values.observe_result(tool, label, correlation, &json);
    }
}

impl Gateway {
    /// Judges one requested grant of a task's intent for the token about
    /// to be issued: the policies' decision on a call of the grant's tool
    /// with exactly the values the grant pins (`equals`), made while
    /// declaring (`context.intent.declaring`, no taint, no counts). Allowed
    /// with no person: granted outright; allowed with a person: pending the
    /// user's approval of the intent; denied, an unknown or unclassified
    /// tool, or a whole class: refused or pending (a class grant always asks
    /// the user, who sees the class named).
    pub fn judge_grant(
        &self,
        grant: &mandate_intent::Grant,
        caller: &mandate_core::Caller<'_>,
    ) -> mandate_control::GrantStatus {
        use mandate_control::GrantStatus;
        let mandate_intent::Target::Tool(exposed) = grant.target() else {
            return GrantStatus::Pending;
        };
        let Some(name) = mandate_core::ToolName::parse(exposed) else {
            return GrantStatus::Refused;
        };
        let Some(class) = self
            .catalogue
            .upstream(&name.upstream)
            .and_then(|u| u.config().class_of(&name.tool))
        else {
            return GrantStatus::Refused;
        };
        // The calls the grant allows with pinned values: `equals` pins one
        // value; `one_of` is judged once per value (at most
        // `MAX_JUDGED_CALLS` calls in all), and the strictest answer wins.
        let mut calls: Vec<serde_json::Map<String, serde_json::Value>> =
            vec![serde_json::Map::new()];
        for (arg, c) in grant.arguments() {
            let values: Vec<&serde_json::Value> = match (c.equals(), c.one_of()) {
                (Some(v), _) => vec![v],
                (None, Some(list)) => list.iter().collect(),
                (None, None) => continue,
            };
            if calls.len().saturating_mul(values.len()) > MAX_JUDGED_CALLS {
                return GrantStatus::Pending;
            }
            calls = calls
                .iter()
                .flat_map(|base| {
                    values.iter().map(move |v| {
                        let mut next = base.clone();
                        next.insert(arg.clone(), (*v).clone());
                        next
                    })
                })
                .collect();
        }
        let facts = mandate_policy::SessionFacts {
            intent: IntentFacts {
                declared: true,
                declaring: true,
                ..IntentFacts::default()
            },
            ..mandate_policy::SessionFacts::default()
        };
        let mut status = GrantStatus::Granted;
        for args in calls {
            let call = ToolCall::new(name.clone(), class, args);
            let decision = self.policy.decide(&mandate_policy::DecisionRequest {
                caller: *caller,
                call: &call,
                session: &facts,
                now_unix: self.now_unix(),
            });
            if !decision.is_allow() {
                return GrantStatus::Refused;
            }
            if decision.requires_approval() {
                status = GrantStatus::Pending;
            }
        }
        status
    }
}

/// A session's value memory; one whose history was lost (a restart)
/// starts as such, so its unseen values are never taken for clean ones.
pub(crate) fn new_values(history_lost: bool) -> SessionValues {
    let limits = mandate_provenance::Limits::default();
    if history_lost {
        SessionValues::with_unknown_history(limits)
    } else {
        SessionValues::new(limits)
    }
}

/// The sources as records and approvers see them: per argument, where its
/// values came from; the values themselves only where the redaction rules
/// keep the argument in full.
fn sources_json(
    sources: &ArgSources,
    redaction: &crate::redaction::Redaction,
    tool: &str,
) -> serde_json::Value {
    let shown = if redaction.keeps_values(tool) {
        sources.clone()
    } else {
        sources.clone().without_values()
    };
    serde_json::to_value(shown).unwrap_or_default()
}
