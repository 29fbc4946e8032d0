//! Shared types of Mandate's trust pipeline. No I/O lives here (the one
//! wall clock, [`Clock`], reads the system time).
//!
//! A tool call travels one road, and each step's output type is the only
//! valid input to the next (docs/ARCHITECTURE.md, "The chain of types"):
//!
//! ```text
//! bearer token ─► mandate_authn::Principal ─► mandate_policy::Decision
//!   ─► mandate_audit::Appended ─► Permitted<ToolCall> (the gateway) ─► forward
//! ```
//!
//! This crate holds the data those steps share: the [`Caller`] view of a
//! principal, [`ToolCall`], ids, and the [`AuditRecord`] with the
//! [`DecisionRecord`] in which a decision is stored unchanged.

pub mod build;
pub mod clock;
mod decision;
pub mod html;
mod ids;
mod principal;
mod record;
pub mod text;
mod tool;

#[cfg(test)]
mod spelling_tests;

pub use clock::{Clock, ManualClock};
pub use decision::{DecisionRecord, Effect, Obligation};
pub use ids::{CorrelationId, DecisionId};
pub use principal::{Caller, CallerData, Scope, ScopeCeilings, state_key};
pub use record::{
    AuditRecord, RecordKind, Subject, canonical_args_hash, canonical_hash, write_canonical,
};
pub use tool::{ToolCall, ToolClass, ToolName};

/// The actor prefix of MCP clients signed in through the broker's MCP
/// sign-in: their tokens name `act = mcp-client-<client id>` and no build
/// (the broker refuses agent ids with this prefix; the gateway lets such
/// tokens through without a build only when configured to).
pub const SIGNED_IN_ACTOR_PREFIX: &str = "mcp-client-";
