//! Shared types of Mandate's trust pipeline. No I/O lives here (the one
//! wall clock, [`Clock`], reads the system time).
//!
//! A tool call travels one road, and each step's output type is the only
//! valid input to the next:
//!
//! ```text
//! bearer token ─► authn ─► Principal ─► policy::decide ─► Decision ─► audit ─► forward
//! ```
//!
//! [`Decision`] is the single type that flows unchanged from the policy
//! decision point to the gateway (which enforces it) and to the audit
//! record (which stores it).

pub mod build;
pub mod clock;
mod decision;
pub mod html;
mod ids;
mod principal;
mod record;
mod tool;

#[cfg(test)]
mod spelling_tests;

pub use clock::{Clock, ManualClock};
pub use decision::{Decision, Effect, Obligation};
pub use ids::{CorrelationId, DecisionId};
pub use principal::{Principal, Scope, state_key};
pub use record::{
    AuditRecord, RecordKind, Subject, canonical_args_hash, canonical_hash, write_canonical,
};
pub use tool::{ToolCall, ToolClass, ToolName};
