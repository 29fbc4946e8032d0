//! Errors of the control store.

/// Why a control operation failed. Messages are safe to show operators.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The database could not be opened, read or written (the message
    /// is the database's, without connection details).
    #[error("control store: {0}")]
    Storage(String),
    /// The database file was removed or replaced since the store was opened.
    #[error("control store: the database file was removed or replaced since it was opened")]
    Gone,
    /// A stored row could not be decoded.
    #[error("control store row {id}: {reason}")]
    Corrupt {
        /// Row id.
        id: String,
        /// What was wrong.
        reason: String,
    },
    /// No revocation or change with this id.
    #[error("{what} {id} not found")]
    NotFound {
        /// `revocation` or `change`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The request is not valid in the object's current state (approving
    /// one's own change, activating an unapproved change, …).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed (empty value, unknown kind, …).
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for ControlError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<postgres::Error> for ControlError {
    fn from(e: postgres::Error) -> Self {
        // The driver's Display of a server error is "db error"; the
        // server's own code and message say what went wrong.
        Self::Storage(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })
    }
}
