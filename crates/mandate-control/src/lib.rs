//! Mandate's control store: the operator-side state that changes what
//! agents may do while the gateway runs.
//!
//! * **Kill switches** ([`Revocation`]): a revoked user, agent, build, task,
//!   session or token is denied on its very next call. Revocations are
//!   durable (SQLite, `synchronous=FULL`) and kept in memory as an index
//!   swapped atomically on every change, so the per-call check is a few
//!   hash lookups ([`ControlStore::check`]).
//! * **Two-person change gate** ([`Change`]): persistent changes that widen
//!   authority (a new policy set, an agent's scope ceiling) are proposed by
//!   one operator, approved by another, and only then activated.
//!
//! * **Approvals** ([`ApprovalRequest`]): high-impact calls held for a
//!   person; decisions bind to the exact argument hash and release the
//!   held call once.
//!
//! * **Tasks** ([`Task`]): delegated work with a deadline. Ending a task
//!   (complete or cancel) pulls a task kill switch in the same
//!   transaction, so every token minted for it is refused on its next call.
//!
//! * **Task intents** ([`TaskIntent`]): the grants a task requested
//!   (`authorization_details`), each granted by policy, pending the user's
//!   one approval of the intent, or refused; their uses are consumed with
//!   one conditional `UPDATE` each, keyed by issuer, user and task.
//!
//! The store knows nothing about HTTP or audit: the gateway's control API
//! authenticates operators, writes the audit record, then calls the store.

mod approvals;
mod changes;
mod error;
mod intents;
mod revocations;
mod schema;
mod store;
mod tasks;

#[cfg(test)]
mod spelling_tests;

pub use approvals::{ApprovalRequest, ApprovalStatus, NewApproval};
pub use changes::{Change, ChangeKind, ChangeStatus};
pub use error::ControlError;
pub use intents::{Consumed, GrantState, GrantStatus, IntentKey, TaskIntent};
pub use revocations::{Revocation, RevocationKind};
pub use store::{ControlStore, ToolPin};
pub use tasks::{Task, TaskStatus};
