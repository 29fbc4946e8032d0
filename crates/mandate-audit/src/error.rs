//! The crate's one error type.

use std::fmt;

/// Why an audit operation failed.
///
/// `Display` is safe to log and to show an operator: it names the operation
/// and SQLite's own message, never record contents.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// The store refused an open, a write or a read.
    #[error("{0}")]
    Storage(StorageError),
    /// The writer thread is gone; nothing can be appended any more.
    #[error("the audit writer has stopped")]
    WriterStopped,
    /// The record was not durable within the write deadline (a stuck disk
    /// or database): the caller must treat it as not written. It may still
    /// be committed later.
    #[error("the audit record was not durable within {0:?}")]
    Timeout(std::time::Duration),
    /// A checkpoint was asked of a log opened without a signing key.
    #[error("the audit log has no checkpoint signing key")]
    NoCheckpointKey,
    /// A record could not be turned into its stored form.
    #[error("an audit record could not be encoded: {0}")]
    Encode(EncodeError),
    /// A stored row could not be read back as a record.
    #[error("audit log row {0} is unreadable")]
    Corrupt(CorruptRow),
    /// The file holds an audit log of a schema this build does not know.
    #[error("audit log schema version {0} is not supported")]
    Schema(SchemaVersion),
}

/// The operation during which SQLite failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Open,
    Write,
    Read,
}

/// A failed SQLite operation: which one, and SQLite's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    op: Op,
    message: String,
}

impl StorageError {
    pub(crate) fn new(op: Op, message: impl fmt::Display) -> Self {
        Self {
            op,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Open => "open",
            Op::Write => "write",
            Op::Read => "read",
        };
        write!(f, "audit log {op} failed: {}", self.message)
    }
}

/// Serialisation of a record failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sequence number of a row whose body does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptRow(i64);

impl fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A `PRAGMA user_version` this build does not understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion(i64);

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl AuditError {
    pub(crate) fn storage(op: Op, err: impl fmt::Display) -> Self {
        Self::Storage(StorageError::new(op, err))
    }

    pub(crate) fn encode(err: impl fmt::Display) -> Self {
        Self::Encode(EncodeError(err.to_string()))
    }

    pub(crate) fn corrupt(seq: i64) -> Self {
        Self::Corrupt(CorruptRow(seq))
    }

    pub(crate) fn schema(version: i64) -> Self {
        Self::Schema(SchemaVersion(version))
    }
}
