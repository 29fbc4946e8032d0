//! The permit to forward a call: the last link of the chain of types.
//!
//! `Permitted<ToolCall>` is what the forwarder (`upstream.rs`) requires,
//! and [`Permitted::new`] is the only way to make one: it takes the three
//! proofs no code of this crate can make by hand (the verified
//! `mandate_authn::Principal`, an `Allow` `mandate_policy::Decision`, the
//! `mandate_audit::Appended` receipt of its durable record) and the
//! consumed approval when the decision asks for one, and checks that they
//! fit together for exactly this call. The pipeline (`pipeline.rs`) is its
//! one caller. A module of its own so that the forwarder can name the
//! permit without depending on the pipeline that drives it.

use crate::approvals::Approved;
use mandate_audit::Appended;
use mandate_authn::Principal;
use mandate_core::{CorrelationId, Obligation, ToolCall};
use mandate_policy::Decision;
use std::sync::Arc;

/// A call that may be forwarded: made only by [`Permitted::new`], from the
/// proofs of every step before forwarding, which it checks fit together.
/// The forwarder takes nothing else.
pub(crate) struct Permitted<T> {
    call: T,
    principal: Arc<Principal>,
    decision: Decision,
    receipt: Appended,
    correlation: CorrelationId,
    /// MRTR state the client returns to the upstream's own questions
    /// (relayed untouched; it is not the call's arguments).
    relay: Relay,
}

/// The parts of a `tools/call` that answer the upstream (MRTR retries).
#[derive(Debug, Clone, Default)]
pub(crate) struct Relay {
    pub(crate) input_responses: Option<rmcp::model::InputResponses>,
    pub(crate) request_state: Option<String>,
}

impl Permitted<ToolCall> {
    /// The permit, if the proofs fit together: `decision` is an `Allow`
    /// decided for this principal and exactly this call, `receipt` is the
    /// durable record of that very decision, and every obligation the
    /// decision carries is one the PEP fulfils (an approval obligation
    /// only with the consumed approval of this call's exact arguments).
    pub(crate) fn new(
        principal: Arc<Principal>,
        call: ToolCall,
        decision: Decision,
        receipt: Appended,
        approval: Option<&Approved>,
        correlation: CorrelationId,
        relay: Relay,
    ) -> Result<Self, String> {
        if !decision.allows(
            &principal.state_key(),
            &call.name.to_string(),
            &call.args_hash,
        ) {
            return Err("the decision is not an allow for this caller and call".into());
        }
        if receipt.decision_id() != decision.id() {
            return Err("the durable record is not this decision's".into());
        }
        // Every obligation is matched: a new kind must be handled here
        // before it can compile, and one the PEP cannot fulfil denies.
        for obligation in decision.obligations() {
            match obligation {
                Obligation::Approval => {
                    let fulfilled = decision.decided_as_approved()
                        && approval.is_some_and(|a| a.args_hash() == call.args_hash);
                    if !fulfilled {
                        return Err("the approval obligation is not fulfilled".into());
                    }
                }
                // Applied to the result before it leaves the gateway
                // (`finish`), which withholds what it cannot redact.
                Obligation::Redact { .. } => {}
            }
        }
        Ok(Self {
            call,
            principal,
            decision,
            receipt,
            correlation,
            relay,
        })
    }
}

impl<T> Permitted<T> {
    pub(crate) fn call(&self) -> &T {
        &self.call
    }

    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The decision that allowed the call (its obligations apply to the
    /// result).
    pub(crate) fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The receipt of the durable decision record.
    pub(crate) fn receipt(&self) -> &Appended {
        &self.receipt
    }

    pub(crate) fn correlation(&self) -> &CorrelationId {
        &self.correlation
    }

    pub(crate) fn relay(&self) -> &Relay {
        &self.relay
    }
}
