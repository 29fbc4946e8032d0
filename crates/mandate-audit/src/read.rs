//! Read-only access: queries and chain verification. Each call opens its
//! own read-only connection, so the CLI can use these while `serve` writes.

use crate::chain::{GENESIS_HASH, record_hash};
use crate::error::{AuditError, Op};
use crate::schema::{COLUMNS, SELECT_SQL, column_values, open_for_read};
use mandate_core::AuditRecord;
use rusqlite::types::Value;
use rusqlite::{Connection, Params, Row};
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// A record as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRecord {
    /// Sequence number, from 1, strictly +1.
    pub seq: i64,
    /// The previous row's `hash` (64 zeros for seq 1).
    pub prev_hash: String,
    /// This row's hash (see [`crate::record_hash`]).
    pub hash: String,
    /// The record, parsed from the hashed `body`.
    pub record: AuditRecord,
}

/// All records in seq order, or only those of one session.
pub fn read_records(path: &Path, session: Option<&str>) -> Result<Vec<StoredRecord>, AuditError> {
    let conn = open_for_read(path)?;
    match session {
        Some(s) => query(&conn, "WHERE session = ?1", [s]),
        None => query(&conn, "", []),
    }
}

/// The records of one tool call (decision and outcome), in seq order.
pub fn read_by_correlation(
    path: &Path,
    correlation_id: &str,
) -> Result<Vec<StoredRecord>, AuditError> {
    let conn = open_for_read(path)?;
    query(&conn, "WHERE correlation_id = ?1", [correlation_id])
}

/// The decision and outcome records written at or after `since_ms` (Unix
/// ms), in seq order: what the gateway replays at start to restore session
/// and task usage counters and session taint.
pub fn read_calls_since(path: &Path, since_ms: i64) -> Result<Vec<StoredRecord>, AuditError> {
    let conn = open_for_read(path)?;
    query(
        &conn,
        "WHERE kind IN ('decision', 'outcome') AND time_ms >= ?1",
        [since_ms],
    )
}

fn query(
    conn: &Connection,
    filter: &str,
    params: impl Params,
) -> Result<Vec<StoredRecord>, AuditError> {
    let err = |e: rusqlite::Error| AuditError::storage(Op::Read, e);
    let sql = format!("{} {filter} ORDER BY seq", &*SELECT_SQL);
    let mut stmt = conn.prepare(&sql).map_err(err)?;
    let mut rows = stmt.query(params).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let raw = RawRow::from_row(row).map_err(err)?;
        let record = serde_json::from_str(&raw.body).map_err(|_| AuditError::corrupt(raw.seq))?;
        out.push(StoredRecord {
            seq: raw.seq,
            prev_hash: raw.prev_hash,
            hash: raw.hash,
            record,
        });
    }
    Ok(out)
}

/// One row as stored, unparsed.
struct RawRow {
    seq: i64,
    prev_hash: String,
    hash: String,
    body: String,
    columns: Vec<Value>,
}

impl RawRow {
    /// Reads a row selected by [`SELECT_SQL`].
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let mut columns = Vec::with_capacity(COLUMNS.len());
        for i in 0..COLUMNS.len() {
            columns.push(row.get(i + 4)?);
        }
        Ok(Self {
            seq: row.get(0)?,
            prev_hash: row.get(1)?,
            hash: row.get(2)?,
            body: row.get(3)?,
            columns,
        })
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Rows examined.
    pub records: u64,
    /// The last row's hash: anchor it elsewhere to detect a rewrite of the
    /// whole chain or a truncated tail.
    pub head: Option<String>,
    /// Everything wrong, in seq order. Empty means the chain is intact.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One defect found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The row concerned (for [`ProblemKind::Missing`], the first missing seq).
    pub seq: i64,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What [`verify`] found wrong with a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// `hash` is not the hash of `prev_hash` and `body`: the row was edited.
    HashMismatch,
    /// `count` rows from `seq` on are absent: rows were deleted.
    Missing {
        /// How many consecutive seqs are absent.
        count: i64,
    },
    /// `prev_hash` is not the previous row's `hash`: a row was inserted
    /// before this one, or rows were reordered.
    PrevHashMismatch,
    /// A seq below 1.
    InvalidSeq,
    /// `body` is not a valid record.
    UnreadableBody,
    /// A query column disagrees with `body`: the column was edited.
    ColumnMismatch {
        /// The column's name.
        column: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.kind {
            ProblemKind::HashMismatch => {
                write!(f, "seq {seq}: hash does not match content (row edited)")
            }
            ProblemKind::Missing { count } => {
                write!(f, "seq {seq}: {count} row(s) missing (deleted)")
            }
            ProblemKind::PrevHashMismatch => write!(
                f,
                "seq {seq}: prev_hash does not match the previous row (row inserted or reordered)"
            ),
            ProblemKind::InvalidSeq => write!(f, "seq {seq}: invalid sequence number"),
            ProblemKind::UnreadableBody => write!(f, "seq {seq}: body is not a valid record"),
            ProblemKind::ColumnMismatch { column } => {
                write!(
                    f,
                    "seq {seq}: column {column} disagrees with body (column edited)"
                )
            }
        }
    }
}

/// Walks the whole chain from genesis and reports every defect.
///
/// For each row, in seq order: seq must be the previous seq + 1 (else
/// [`ProblemKind::Missing`]); `prev_hash` must equal the previous row's
/// stored `hash` (else [`ProblemKind::PrevHashMismatch`], not reported
/// again right after a gap); `hash` must equal [`crate::record_hash`] of the
/// row's own `prev_hash` and `body` (else [`ProblemKind::HashMismatch`]);
/// `body` must parse and every query column must equal the value derived
/// from it. Chaining to the previous row's *stored* hash means an edited
/// row is named once, not again at its successor.
///
/// The chain alone cannot detect a rewrite of every row after some point,
/// a truncated tail or a well-formed row appended at the end: compare
/// [`VerifyReport::head`] with an externally kept copy for that.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let err = |e: rusqlite::Error| AuditError::storage(Op::Read, e);
    let conn = open_for_read(path)?;
    let sql = format!("{} ORDER BY seq", &*SELECT_SQL);
    let mut stmt = conn.prepare(&sql).map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;

    let mut report = VerifyReport {
        records: 0,
        head: None,
        problems: Vec::new(),
    };
    let mut expected_seq: i64 = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    while let Some(row) = rows.next().map_err(err)? {
        let row = RawRow::from_row(row).map_err(err)?;
        report.records = report.records.saturating_add(1);
        check_row(&row, expected_seq, &prev_hash, &mut report.problems);
        expected_seq = row.seq.saturating_add(1);
        prev_hash = row.hash;
    }
    report.head = (report.records > 0).then_some(prev_hash);
    Ok(report)
}

/// Checks one row against its predecessor (`expected_seq`, `prev_hash`).
fn check_row(row: &RawRow, expected_seq: i64, prev_hash: &str, out: &mut Vec<Problem>) {
    let here = |kind| Problem { seq: row.seq, kind };
    let after_gap = row.seq > expected_seq;
    if row.seq < 1 {
        out.push(here(ProblemKind::InvalidSeq));
    } else if after_gap {
        out.push(Problem {
            seq: expected_seq,
            kind: ProblemKind::Missing {
                count: row.seq.saturating_sub(expected_seq),
            },
        });
    }
    // After a gap the link is broken by the deletion already reported.
    if row.prev_hash != prev_hash && !after_gap {
        out.push(here(ProblemKind::PrevHashMismatch));
    }
    if record_hash(&row.prev_hash, &row.body) != row.hash {
        out.push(here(ProblemKind::HashMismatch));
    }
    let derived = serde_json::from_str::<AuditRecord>(&row.body)
        .ok()
        .and_then(|record| column_values(&record).ok());
    let Some(derived) = derived else {
        out.push(here(ProblemKind::UnreadableBody));
        return;
    };
    for ((name, stored), derived) in COLUMNS.iter().zip(&row.columns).zip(&derived) {
        if stored != derived {
            out.push(here(ProblemKind::ColumnMismatch {
                column: (*name).to_owned(),
            }));
        }
    }
}
