//! One decision: request in, [`Decision`] out, total.
//!
//! Cedar's authorizer skips a policy whose evaluation errors. For a `forbid`
//! that would fail open, so here ANY evaluation error denies the call, with
//! the error as the reason: the decision is exhaustive over Cedar's outcome
//! and only an error-free `Allow` allows.

use crate::DecisionRequest;
use crate::load::Snapshot;
use crate::obligation;
use crate::request;
use cedar_policy::{Decision as CedarDecision, PolicyId};
use mandate_core::{Decision, DecisionId, Effect};
use std::collections::BTreeSet;

/// The reason recorded when no policy permits a call.
pub const DEFAULT_DENY_REASON: &str = "no policy permits this call (deny by default)";

pub(crate) fn decide(snap: &Snapshot, req: &DecisionRequest<'_>) -> Decision {
    let prepared = match request::prepare(snap, req) {
        Ok(p) => p,
        Err(reason) => return Decision::deny(reason, snap.hash.clone()),
    };
    let response =
        snap.authorizer
            .is_authorized(&prepared.request, &snap.policies, &prepared.entities);
    let diagnostics = response.diagnostics();
    let determining: BTreeSet<&PolicyId> = diagnostics.reason().collect();

    let errors: Vec<_> = diagnostics.errors().collect();
    if !errors.is_empty() {
        // Fail closed. Record the policies that erred (and, if Cedar denied
        // anyway, the forbids that matched) so the audit shows both.
        let mut policies: BTreeSet<String> = errors
            .iter()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => {
                    pe.policy_id().to_string()
                }
            })
            .collect();
        let mut reasons: Vec<String> = errors
            .iter()
            .map(|e| format!("{e} (evaluation error: call denied, fail closed)"))
            .collect();
        reasons.sort();
        if response.decision() == CedarDecision::Deny {
            for id in &determining {
                policies.insert(id.to_string());
                reasons.push(reason_of(snap, id, "forbidden"));
            }
        }
        return Decision {
            id: DecisionId::new(),
            effect: Effect::Deny,
            policies: policies.into_iter().collect(),
            reasons,
            obligations: Vec::new(),
            policy_hash: snap.hash.clone(),
        };
    }

    match response.decision() {
        CedarDecision::Allow => Decision {
            id: DecisionId::new(),
            effect: Effect::Allow,
            policies: determining.iter().map(|id| id.to_string()).collect(),
            reasons: determining
                .iter()
                .map(|id| reason_of(snap, id, "permitted"))
                .collect(),
            obligations: obligation::merge(
                determining
                    .iter()
                    .filter_map(|id| snap.meta.get(*id))
                    .map(|m| m.obligations.as_slice()),
            ),
            policy_hash: snap.hash.clone(),
        },
        CedarDecision::Deny if determining.is_empty() => {
            Decision::deny(DEFAULT_DENY_REASON, snap.hash.clone())
        }
        CedarDecision::Deny => Decision {
            id: DecisionId::new(),
            effect: Effect::Deny,
            policies: determining.iter().map(|id| id.to_string()).collect(),
            reasons: determining
                .iter()
                .map(|id| reason_of(snap, id, "forbidden"))
                .collect(),
            obligations: Vec::new(),
            policy_hash: snap.hash.clone(),
        },
    }
}

/// The policy's `@reason`, or a generic sentence naming it.
fn reason_of(snap: &Snapshot, id: &PolicyId, verb: &str) -> String {
    snap.meta
        .get(id)
        .and_then(|m| m.reason.clone())
        .unwrap_or_else(|| format!("{verb} by policy `{id}`"))
}
