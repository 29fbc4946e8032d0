//! The one decision: made by the PDP, enforced by the PEP, stored by audit.

use mandate_core::{Caller, DecisionId, DecisionRecord, Effect, Obligation, ToolCall};

/// A policy decision about one call, with everything needed to enforce and
/// explain it.
///
/// Anyone may make a `Deny` ([`Decision::deny`]: failing closed needs no
/// authority); only the policy engine ([`crate::PolicyEngine::decide`])
/// makes an `Allow`, and an `Allow` is bound to the caller and the exact
/// call (tool and argument hash) it was decided for, so it cannot be
/// spent on another. The audit log stores its content unchanged, as a
/// [`DecisionRecord`] ([`Decision::record`]); a record authorises nothing.
///
/// ```compile_fail,E0599
/// // Outside mandate-policy there is no way to write an `Allow`.
/// let d = mandate_policy::Decision::allow("because I say so");
/// ```
///
/// ```compile_fail,E0451
/// let d = mandate_policy::Decision { record: todo!(), binding: todo!() };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    record: DecisionRecord,
    /// For an `Allow`: what it was decided for. `None` for a deny.
    binding: Option<Binding>,
}

/// The caller and call an `Allow` was decided for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    caller: String,
    tool: String,
    args_hash: String,
    approved: bool,
}

impl Decision {
    /// A deny produced outside policy evaluation (an error, an unknown tool,
    /// a failed check). Fail-closed paths use this.
    pub fn deny(reason: impl Into<String>, policy_hash: impl Into<String>) -> Self {
        Self {
            record: DecisionRecord::deny(reason, policy_hash),
            binding: None,
        }
    }

    /// A decision the engine reached for `caller` and `call`.
    pub(crate) fn decided(
        record: DecisionRecord,
        caller: &Caller<'_>,
        call: &ToolCall,
        approved: bool,
    ) -> Self {
        let binding = record.is_allow().then(|| Binding {
            caller: caller.state_key(),
            tool: call.name.to_string(),
            args_hash: call.args_hash.clone(),
            approved,
        });
        Self { record, binding }
    }

    /// Unique id, shown to the agent on a denial and stored in audit.
    pub fn id(&self) -> &DecisionId {
        &self.record.id
    }

    /// The effect.
    pub fn effect(&self) -> Effect {
        self.record.effect
    }

    /// Whether the call may proceed (possibly after obligations).
    pub fn is_allow(&self) -> bool {
        self.record.is_allow()
    }

    /// Whether a human must approve the call first.
    pub fn requires_approval(&self) -> bool {
        self.record.requires_approval()
    }

    /// Duties attached to an `Allow`.
    pub fn obligations(&self) -> &[Obligation] {
        &self.record.obligations
    }

    /// Ids of the policies that determined the effect.
    pub fn policies(&self) -> &[String] {
        &self.record.policies
    }

    /// Human-readable reasons.
    pub fn reasons(&self) -> &[String] {
        &self.record.reasons
    }

    /// SHA-256 of the policy set that made the decision.
    pub fn policy_hash(&self) -> &str {
        &self.record.policy_hash
    }

    /// Whether this is an `Allow` decided for exactly this caller (its
    /// state key) and call (tool and argument hash).
    pub fn allows(&self, caller_key: &str, tool: &str, args_hash: &str) -> bool {
        self.is_allow()
            && self.binding.as_ref().is_some_and(|b| {
                b.caller == caller_key && b.tool == tool && b.args_hash == args_hash
            })
    }

    /// Whether the engine decided it knowing a person had approved the call
    /// (`context.approved`).
    pub fn decided_as_approved(&self) -> bool {
        self.binding.as_ref().is_some_and(|b| b.approved)
    }

    /// Adds an explanation (who approved, what happened at release). It
    /// changes nothing about the effect.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.record.reasons.push(reason.into());
        self
    }

    /// The content as the audit log stores it.
    pub fn record(&self) -> &DecisionRecord {
        &self.record
    }
}
