//! One decision: request in, [`Decision`] out, total.
//!
//! Cedar's authorizer skips a policy whose evaluation errors. For a `forbid`
//! that would fail open, so here ANY evaluation error denies the call, with
//! the error as the reason: the decision is exhaustive over Cedar's outcome
//! and only an error-free `Allow` allows.
//!
//! The request is evaluated against each slice of the policy set that can
//! apply to it (see [`crate::slice`]) and the outcomes are combined as Cedar
//! combines policies within one set: any satisfied `forbid` denies, else
//! any satisfied `permit` allows, else the call is denied by default.

use crate::Decision;
use crate::load::Snapshot;
use crate::request;
use crate::{DecisionRequest, Versioned, obligation};
use cedar_policy::{AuthorizationError, Decision as CedarDecision, PolicyId};
use mandate_core::{DecisionId, DecisionRecord, Effect};
use std::collections::BTreeSet;

/// The reason recorded when no policy permits a call.
pub const DEFAULT_DENY_REASON: &str = "no policy permits this call (deny by default)";

/// What the policies said, over all slices.
#[derive(Default)]
struct Outcome {
    forbids: BTreeSet<PolicyId>,
    permits: BTreeSet<PolicyId>,
    /// Policies that failed to evaluate, with Cedar's message.
    errors: Vec<(PolicyId, String)>,
}

pub(crate) fn decide(
    snap: &Snapshot,
    directory: &Versioned,
    req: &DecisionRequest<'_>,
) -> Decision {
    let prepared = match request::prepare(snap, directory, req) {
        Ok(p) => p,
        Err(reason) => return Decision::deny(reason, snap.hash.clone()),
    };

    let mut outcome = Outcome::default();
    for slice in prepared.policies.iter() {
        let response = snap
            .authorizer
            .is_authorized(&prepared.request, slice, &prepared.entities);
        let diagnostics = response.diagnostics();
        // Within one slice Cedar reports the satisfied forbids when it
        // denies and the satisfied permits when it allows; a slice that
        // satisfies both reports the forbids, which decide anyway.
        let determining = match response.decision() {
            CedarDecision::Deny => &mut outcome.forbids,
            CedarDecision::Allow => &mut outcome.permits,
        };
        determining.extend(diagnostics.reason().cloned());
        outcome.errors.extend(diagnostics.errors().map(|e| match e {
            AuthorizationError::PolicyEvaluationError(pe) => {
                (pe.policy_id().clone(), e.to_string())
            }
        }));
    }
    Decision::decided(
        fold(snap, outcome),
        &req.caller,
        req.call,
        req.session.approved,
    )
}

fn fold(snap: &Snapshot, outcome: Outcome) -> DecisionRecord {
    let Outcome {
        forbids,
        permits,
        errors,
    } = outcome;
    if !errors.is_empty() {
        // Fail closed. Record the policies that erred (and the forbids that
        // matched) so the audit shows both.
        let mut reasons: Vec<String> = errors
            .iter()
            .map(|(_, e)| format!("{e} (evaluation error: call denied, fail closed)"))
            .collect();
        reasons.sort();
        reasons.extend(forbids.iter().map(|id| reason_of(snap, id, "forbidden")));
        let policies: BTreeSet<String> = errors
            .iter()
            .map(|(id, _)| id.to_string())
            .chain(forbids.iter().map(ToString::to_string))
            .collect();
        return DecisionRecord {
            id: DecisionId::new(),
            effect: Effect::Deny,
            policies: policies.into_iter().collect(),
            reasons,
            obligations: Vec::new(),
            policy_hash: snap.hash.clone(),
            code: None,
            agent_reason: None,
        };
    }
    if !forbids.is_empty() {
        return DecisionRecord {
            id: DecisionId::new(),
            effect: Effect::Deny,
            policies: forbids.iter().map(ToString::to_string).collect(),
            reasons: forbids
                .iter()
                .map(|id| reason_of(snap, id, "forbidden"))
                .collect(),
            obligations: Vec::new(),
            policy_hash: snap.hash.clone(),
            code: forbids
                .iter()
                .find_map(|id| snap.meta.get(id).and_then(|m| m.code.clone())),
            agent_reason: forbids
                .iter()
                .find_map(|id| snap.meta.get(id).and_then(|m| m.agent_reason.clone())),
        };
    }
    if permits.is_empty() {
        return DecisionRecord::deny(DEFAULT_DENY_REASON, snap.hash.clone());
    }
    DecisionRecord {
        id: DecisionId::new(),
        effect: Effect::Allow,
        policies: permits.iter().map(ToString::to_string).collect(),
        reasons: permits
            .iter()
            .map(|id| reason_of(snap, id, "permitted"))
            .collect(),
        obligations: obligation::merge(
            permits
                .iter()
                .filter_map(|id| snap.meta.get(id))
                .map(|m| m.obligations.as_slice()),
        ),
        policy_hash: snap.hash.clone(),
        code: None,
        agent_reason: None,
    }
}

/// The policy's `@reason`, or a generic sentence naming it.
fn reason_of(snap: &Snapshot, id: &PolicyId, verb: &str) -> String {
    snap.meta
        .get(id)
        .and_then(|m| m.reason.clone())
        .unwrap_or_else(|| format!("{verb} by policy `{id}`"))
}
