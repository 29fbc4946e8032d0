//! A decision as the audit log stores it.
//!
//! The decision that authorises a call is `mandate_policy::Decision`, which
//! only the policy decision point can make with an `Allow` effect; the PEP
//! enforces it and the audit record stores its content unchanged as a
//! [`DecisionRecord`]. A record is data: reading one back, or writing one
//! (operator actions and broker exchanges record their own), authorises
//! nothing.

use crate::DecisionId;
use serde::{Deserialize, Serialize};

/// Allow or deny. There is no third value: anything undecided is `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Effect {
    /// The call may proceed, subject to the decision's obligations.
    Allow,
    /// The call must not reach the upstream.
    Deny,
}

impl Effect {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Something the PEP must do for an `Allow` to stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Obligation {
    /// Hold the call until a human approves it.
    Approval,
    /// Remove these top-level fields from structured results.
    Redact {
        /// Field names to remove.
        fields: Vec<String>,
    },
}

/// A decision's content as stored: everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Unique id, shown to the agent on a denial and stored in audit.
    pub id: DecisionId,
    /// The effect.
    pub effect: Effect,
    /// Ids of the policies that determined the effect.
    pub policies: Vec<String>,
    /// Human-readable reasons (policy `@reason` annotations, or the error
    /// that forced a deny).
    pub reasons: Vec<String>,
    /// Duties attached to an `Allow`.
    pub obligations: Vec<Obligation>,
    /// SHA-256 of the policy set that made the decision.
    pub policy_hash: String,
    /// For a deny by a `forbid` with a `@code` annotation: the reason code
    /// the agent is told (e.g. `untrusted_argument`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For a deny by a `forbid` with an `@agent_reason` annotation: the
    /// sentence the operator wrote for the agent (to tell its user what to
    /// do), sent with the refusal. Nothing else of a policy reaches agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_reason: Option<String>,
}

impl DecisionRecord {
    /// A deny produced outside policy evaluation (an error, an unknown tool,
    /// a failed check). Fail-closed paths use this.
    pub fn deny(reason: impl Into<String>, policy_hash: impl Into<String>) -> Self {
        Self {
            id: DecisionId::new(),
            effect: Effect::Deny,
            policies: Vec::new(),
            reasons: vec![reason.into()],
            obligations: Vec::new(),
            policy_hash: policy_hash.into(),
            code: None,
            agent_reason: None,
        }
    }

    /// The record of a decision about an operator action or a token
    /// exchange, made by the control plane's role rules or the broker (not
    /// by the policy engine, which decides tool calls): `policy` names the
    /// rule that decided it.
    pub fn control(effect: Effect, policy: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            id: DecisionId::new(),
            effect,
            policies: vec![policy.into()],
            reasons: vec![reason.into()],
            obligations: Vec::new(),
            policy_hash: String::new(),
            code: None,
            agent_reason: None,
        }
    }

    /// Whether the decided action was allowed (possibly after obligations).
    pub fn is_allow(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// Whether a human must approve the call first.
    pub fn requires_approval(&self) -> bool {
        self.is_allow() && self.obligations.contains(&Obligation::Approval)
    }
}
