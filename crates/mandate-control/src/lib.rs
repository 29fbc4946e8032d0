//! Mandate's control store: the operator-side state that changes what
//! agents may do while the gateway runs.
//!
//! * **Kill switches** ([`Revocation`]): a revoked user, agent, build, task,
//!   session or token is denied on its very next call. Revocations are
//!   durable and kept in memory as an index
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
//! * **Short-lived shared state** ([`ephemeral`]): approval-page
//!   sessions and sign-in throttles, MCP sign-in and MCP task handles,
//!   bounded per kind, so no replica or restart forgets them.
//!
//! * **MCP transport sessions** ([`McpSession`]): whose each 2025-era
//!   session is and the client's `initialize` parameters, so any replica
//!   (or a restarted process) carries a session on.
//!
//! Two backends behind one async interface ([`ControlStore`]): SQLite, the
//! embedded default (one process, `synchronous=FULL`), and PostgreSQL
//! ([`Location::Postgres`]), shared by every replica: a revocation, an
//! approval, a change or a grant's use made on one is seen by all. The
//! statements are written once (`db.rs`). Replicas wake each other with
//! PostgreSQL `LISTEN`/`NOTIFY` ([`ControlStore::signal`], `signal.rs`): a
//! revocation, an approval's decision or a change put in force reaches
//! every replica as it commits. Underneath, a shared store re-reads its
//! in-memory indexes on a timer ([`ControlStore::spawn_refresh`]), which
//! also covers a lost notification, and reports itself
//! [stale](ControlStore::stale) when it cannot.
//!
//! The store knows nothing about HTTP or audit: the gateway's control API
//! authenticates operators, writes the audit record, then calls the store.

mod api;
mod approvals;
mod changes;
mod db;
pub mod ephemeral;
mod error;
mod intents;
mod revocations;
mod schema;
mod sessions;
mod signal;
mod store;
mod tasks;

#[cfg(test)]
mod spelling_tests;

pub use api::{ControlStore, DEFAULT_POLL};
pub use approvals::{ApprovalRequest, ApprovalStatus, NewApproval};
pub use changes::{Change, ChangeKind, ChangeStatus};
pub use db::Location;
pub use error::ControlError;
pub use intents::{Consumed, GrantState, GrantStatus, IntentKey, TaskIntent};
pub use revocations::{Revocation, RevocationKind};
pub use sessions::McpSession;
pub use signal::Topic;
pub use store::ToolPin;
pub use tasks::{Task, TaskStatus};
