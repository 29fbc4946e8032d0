//! Which tools `tools/list` shows: those some call could be allowed on.
//!
//! A model cannot call a tool it was never shown, so hiding a tool whose
//! permits test an argument (a payment permitted only to known payees)
//! would make the tool useless, not safer: the call is decided on its own
//! arguments anyway. Listing asks Cedar's partial evaluation whether the
//! call could be allowed with the arguments (and what depends on them: the
//! intent's coverage, the arguments' provenance) unknown, and hides only a
//! tool no arguments could make allowed: no permit can be satisfied, or a
//! forbid is satisfied whatever the arguments.

use crate::load::Snapshot;
use crate::{DecisionRequest, Versioned, request};

/// Whether some arguments could make this call allowed. Any error, and a
/// forbid that errors, count as "no" (the tool is hidden, fail closed);
/// the call itself would be decided on its own arguments regardless.
pub(crate) fn may_allow(snap: &Snapshot, directory: &Versioned, req: &DecisionRequest<'_>) -> bool {
    let Ok(prepared) = request::prepare_listing(snap, directory, req) else {
        return false;
    };
    let mut some_permit = false;
    for slice in prepared.policies.iter() {
        let response =
            snap.authorizer
                .is_authorized_partial(&prepared.request, slice, &prepared.entities);
        if response.definitely_errored().next().is_some() {
            return false;
        }
        if response
            .definitely_satisfied()
            .any(|p| p.effect() == cedar_policy::Effect::Forbid)
        {
            return false;
        }
        // Satisfied permits, and permits whose residual some arguments
        // could satisfy.
        some_permit |= response
            .may_be_determining()
            .any(|p| p.effect() == cedar_policy::Effect::Permit);
    }
    some_permit
}
