//! Where the log lives: the store location, and the two interfaces each
//! store implements (the writer's transaction steps, and reading).

use crate::error::AuditError;
use crate::merkle::Hash;
use crate::schema::PreparedRow;
use rusqlite::types::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// An audit store: an embedded SQLite file or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum Store {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`), tables in `schema`.
    Postgres {
        /// Connection URL (may hold a password: never displayed).
        url: String,
        /// Schema holding the log's tables (created if missing).
        schema: String,
    },
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Store {
    /// The location without credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres { url, schema } => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        format!(
                            "{}***{}",
                            url.get(..scheme + 3).unwrap_or(""),
                            url.get(at..).unwrap_or("")
                        )
                    }
                    _ => url.clone(),
                };
                write!(f, "{shown} (schema {schema})")
            }
        }
    }
}

impl Store {
    /// A SQLite file.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self::Sqlite(path.into())
    }

    /// A PostgreSQL database, tables in the `mandate_audit` schema.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::Postgres {
            url: url.into(),
            schema: "mandate_audit".to_owned(),
        }
    }

    /// The same store with its PostgreSQL tables in `schema` (no effect
    /// on SQLite). `schema` must be a plain identifier.
    #[must_use]
    pub fn with_schema(self, schema: impl Into<String>) -> Self {
        match self {
            Self::Postgres { url, .. } => Self::Postgres {
                url,
                schema: schema.into(),
            },
            other @ Self::Sqlite(_) => other,
        }
    }

    /// `postgres://…` or `postgresql://…` selects PostgreSQL; `sqlite:PATH`
    /// or any other text is a SQLite path.
    pub fn parse(spec: &str) -> Self {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Self::postgres(spec)
        } else {
            Self::sqlite(spec.strip_prefix("sqlite:").unwrap_or(spec))
        }
    }

    /// Whether this is a SQLite file that does not exist (nothing to read).
    pub fn is_missing_file(&self) -> bool {
        matches!(self, Self::Sqlite(p) if !p.exists())
    }
}

impl From<&Path> for Store {
    fn from(path: &Path) -> Self {
        Self::sqlite(path)
    }
}

impl From<PathBuf> for Store {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

impl From<&PathBuf> for Store {
    fn from(path: &PathBuf) -> Self {
        Self::sqlite(path.clone())
    }
}

/// One row to insert: its place in the chain and its prepared content.
pub(crate) struct NewRow<'a> {
    pub(crate) seq: i64,
    pub(crate) prev_hash: &'a str,
    pub(crate) hash: &'a str,
    pub(crate) row: &'a PreparedRow,
}

/// A signed checkpoint as stored, with the tree's right edge so the writer
/// can resume without rereading the log.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointRow {
    pub(crate) size: u64,
    pub(crate) time_ms: i64,
    pub(crate) root: Hash,
    pub(crate) note: String,
    pub(crate) frontier: Vec<Hash>,
}

/// The writer's view of a store: one exclusive transaction per batch.
pub(crate) trait Backend: Send {
    /// Starts a write transaction that excludes other writers.
    fn begin(&mut self) -> Result<(), AuditError>;
    /// The last row's (seq, hash), or (0, genesis).
    fn head(&mut self) -> Result<(i64, String), AuditError>;
    /// Leaf hashes of the rows after seq `after`, in order.
    fn leaves_after(&mut self, after: i64) -> Result<Vec<Hash>, AuditError>;
    /// The checkpoint of the largest size, if any.
    fn last_checkpoint(&mut self) -> Result<Option<CheckpointRow>, AuditError>;
    /// Inserts rows (consecutive seqs).
    fn insert(&mut self, rows: &[NewRow<'_>]) -> Result<(), AuditError>;
    /// Inserts a checkpoint.
    fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), AuditError>;
    /// Commits durably (returns after the fsync).
    fn commit(&mut self) -> Result<(), AuditError>;
    /// Abandons the transaction.
    fn rollback(&mut self);
}

/// One stored row, unparsed.
#[derive(Debug, Clone)]
pub(crate) struct RawRow {
    pub(crate) seq: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
    pub(crate) body: String,
    pub(crate) columns: Vec<Value>,
}

/// Which rows to read.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    All,
    Session(String),
    Correlation(String),
    /// The records of one decision (its decision and outcome records, and
    /// any that name it). Not indexed: an investigator's lookup.
    Decision(String),
    /// Decision and outcome records at or after a time (ms).
    CallsSince(i64),
    /// Records with `from <= time_ms < to`.
    Time {
        from: i64,
        to: i64,
    },
    /// Decision and outcome records of one session after a sequence number.
    SessionCallsAfter {
        session: String,
        after: i64,
    },
}

/// A value bound to a [`Filter`]'s clause.
pub(crate) enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

impl Filter {
    /// The `WHERE` clause (empty for all rows) and its values, in order.
    /// Placeholders are `$1`, `$2`: PostgreSQL's, which SQLite binds by
    /// position too.
    pub(crate) fn clause(&self) -> (&'static str, Vec<Param<'_>>) {
        match self {
            Self::All => ("", vec![]),
            Self::Session(s) => ("WHERE session = $1", vec![Param::Text(s)]),
            Self::Correlation(c) => ("WHERE correlation_id = $1", vec![Param::Text(c)]),
            Self::Decision(d) => ("WHERE decision_id = $1", vec![Param::Text(d)]),
            Self::CallsSince(ms) => (
                "WHERE kind IN ('decision', 'outcome') AND time_ms >= $1",
                vec![Param::Int(*ms)],
            ),
            Self::Time { from, to } => (
                "WHERE time_ms >= $1 AND time_ms < $2",
                vec![Param::Int(*from), Param::Int(*to)],
            ),
            Self::SessionCallsAfter { session, after } => (
                "WHERE session = $1 AND seq > $2 AND kind IN ('decision', 'outcome')",
                vec![Param::Text(session), Param::Int(*after)],
            ),
        }
    }
}

/// Reading a store.
pub(crate) trait Reader {
    /// Every row in seq order, to `f`.
    fn scan(
        &mut self,
        f: &mut dyn FnMut(RawRow) -> Result<(), AuditError>,
    ) -> Result<(), AuditError>;
    /// Rows matching `filter`, in seq order.
    fn rows(&mut self, filter: &Filter) -> Result<Vec<RawRow>, AuditError>;
    /// Every checkpoint, by size.
    fn checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError>;
}

/// Runs `f` on a thread of its own: the blocking PostgreSQL client must not
/// run on an async runtime's thread, and callers may be on one.
pub(crate) fn blocking<T: Send>(
    f: impl FnOnce() -> Result<T, AuditError> + Send,
) -> Result<T, AuditError> {
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| {
            Err(AuditError::storage(
                crate::error::Op::Read,
                "reader thread panicked",
            ))
        })
    })
}

/// Frontier nodes as stored: hex, comma-separated.
pub(crate) fn frontier_text(nodes: &[Hash]) -> String {
    nodes.iter().map(Hash::to_hex).collect::<Vec<_>>().join(",")
}

/// Parses [`frontier_text`].
pub(crate) fn parse_frontier(text: &str) -> Option<Vec<Hash>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(Hash::from_hex).collect()
}
