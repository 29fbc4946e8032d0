//! The SQLite schema, and the mapping between a record and its row.

use crate::chain::canonical_body;
use crate::error::{AuditError, Op};
use crate::merkle::{Hash, leaf_hash};
use mandate_core::AuditRecord;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

/// `PRAGMA user_version` of the schema below. Version 1 had no
/// checkpoints table; opening it for writing upgrades it.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// How long a reader waits for a lock before giving up.
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The query columns, derived from `body`, in table order. The single list
/// used to insert, to read back and to cross-check rows in `verify`.
pub const COLUMNS: [&str; 19] = [
    "time_ms",
    "kind",
    "decision_id",
    "correlation_id",
    "session",
    "sub",
    "act",
    "scope",
    "task_id",
    "build",
    "tool",
    "args_hash",
    "effect",
    "policies",
    "reasons",
    "obligations",
    "policy_hash",
    "outcome",
    "detail",
];

/// Table, indexes and append-only triggers. Idempotent.
///
/// The triggers make the table append-only at the SQL level: no UPDATE, no
/// DELETE, and an INSERT must extend the chain (next seq, previous hash).
/// Anyone with write access to the file can drop them; `verify` does not
/// rely on them.
pub(crate) const DDL: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq            INTEGER PRIMARY KEY NOT NULL CHECK (seq >= 1),
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    body           TEXT NOT NULL,
    time_ms        INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    decision_id    TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    session        TEXT NOT NULL,
    sub            TEXT NOT NULL,
    act            TEXT NOT NULL,
    scope          TEXT NOT NULL,
    task_id        TEXT,
    build          TEXT,
    tool           TEXT NOT NULL,
    args_hash      TEXT NOT NULL,
    effect         TEXT NOT NULL,
    policies       TEXT NOT NULL,
    reasons        TEXT NOT NULL,
    obligations    TEXT NOT NULL,
    policy_hash    TEXT NOT NULL,
    outcome        TEXT,
    detail         TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS audit_log_session ON audit_log (session);
CREATE INDEX IF NOT EXISTS audit_log_correlation_id ON audit_log (correlation_id);
DROP INDEX IF EXISTS audit_log_decision_id;
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_log_extend_chain BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT (SELECT IFNULL(MAX(seq), 0) + 1 FROM audit_log)
  OR NEW.prev_hash IS NOT IFNULL(
        (SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1),
        '0000000000000000000000000000000000000000000000000000000000000000')
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: INSERT must extend the chain');
END;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size     INTEGER PRIMARY KEY NOT NULL CHECK (size >= 1),
    time_ms  INTEGER NOT NULL,
    root     TEXT NOT NULL,
    note     TEXT NOT NULL,
    frontier TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only: DELETE refused');
END;
";

/// `INSERT` of one row: seq, prev_hash, hash, body, then [`COLUMNS`].
pub static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let names = COLUMNS.join(", ");
    let marks = vec!["?"; COLUMNS.len() + 4].join(", ");
    format!("INSERT INTO audit_log (seq, prev_hash, hash, body, {names}) VALUES ({marks})")
});

/// `SELECT` of whole rows: seq, prev_hash, hash, body, then [`COLUMNS`].
pub static SELECT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT seq, prev_hash, hash, body, {} FROM audit_log",
        COLUMNS.join(", ")
    )
});

/// A record in its stored form, prepared off the writer thread: everything
/// except seq, prev_hash and hash, which only the writer knows.
#[derive(Debug)]
pub struct PreparedRow {
    /// Canonical JSON; what the hash covers.
    pub body: String,
    /// Its Merkle leaf hash, `SHA-256(0x00 || body)`.
    pub leaf: Hash,
    /// Values for [`COLUMNS`], in order.
    pub columns: Vec<Value>,
}

impl PreparedRow {
    pub fn new(record: &AuditRecord) -> Result<Self, AuditError> {
        let body = canonical_body(record)?;
        Ok(Self {
            leaf: leaf_hash(body.as_bytes()),
            body,
            columns: column_values(record)?,
        })
    }
}

/// The values of [`COLUMNS`] for `record`.
pub fn column_values(record: &AuditRecord) -> Result<Vec<Value>, AuditError> {
    let d = &record.decision;
    let s = &record.subject;
    let text = |v: &str| Value::Text(v.to_owned());
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    Ok(vec![
        Value::Integer(record.time_ms),
        text(record.kind.as_str()),
        text(d.id.as_str()),
        text(record.correlation_id.as_str()),
        text(&s.session),
        text(&s.sub),
        Value::Text(json(&s.act)?),
        text(&s.scope),
        opt(&s.task_id),
        opt(&s.build),
        text(&record.tool),
        text(&record.args_hash),
        text(d.effect.as_str()),
        Value::Text(json(&d.policies)?),
        Value::Text(json(&d.reasons)?),
        Value::Text(json(&d.obligations)?),
        text(&d.policy_hash),
        opt(&record.outcome),
        opt(&record.detail),
    ])
}

/// Canonical JSON of any serialisable value.
fn json<T: serde::Serialize>(v: &T) -> Result<String, AuditError> {
    let value = serde_json::to_value(v).map_err(AuditError::encode)?;
    let mut out = String::new();
    mandate_core::write_canonical(&value, &mut out);
    Ok(out)
}

/// Opens the log for writing: creates the file and schema if needed, WAL,
/// `synchronous=FULL`.
pub fn open_for_write(path: &Path, busy_timeout: Duration) -> Result<Connection, AuditError> {
    let err = |e: rusqlite::Error| AuditError::storage(Op::Open, e);
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(busy_timeout).map_err(err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable (synchronous=FULL with a rollback journal), only slower.
        tracing::warn!(journal_mode = %mode, "audit log: WAL unavailable");
    }
    // FULL: each commit fsyncs the WAL. fullfsync matters on macOS only.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.pragma_update(None, "fullfsync", true).map_err(err)?;
    conn.pragma_update(None, "checkpoint_fullfsync", true)
        .map_err(err)?;
    // The WAL's automatic checkpoint stays where SQLite puts it: in the
    // writer's commit that crosses 1000 pages, after which the WAL restarts
    // and is rewritten in place. (Checkpointing from a thread of its own was
    // measured: commits slip in while it runs, the WAL never restarts and
    // grows without bound, and the median call got slower; see
    // docs/BENCHMARKS.md.)
    let version = user_version(&conn).map_err(err)?;
    if version != 0 && version != 1 && version != SCHEMA_VERSION {
        return Err(AuditError::schema(version));
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {DDL} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(err)?;
    Ok(conn)
}

/// Opens an existing log read-only (safe while a writer runs).
pub fn open_for_read(path: &Path) -> Result<Connection, AuditError> {
    let err = |e: rusqlite::Error| AuditError::storage(Op::Read, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(READ_BUSY_TIMEOUT).map_err(err)?;
    let version = user_version(&conn).map_err(err)?;
    if version != SCHEMA_VERSION && version != 1 {
        return Err(AuditError::schema(version));
    }
    Ok(conn)
}

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// The last row's seq and hash.
pub(crate) const HEAD_SQL: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";
