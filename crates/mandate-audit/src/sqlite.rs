//! The SQLite store: WAL, `synchronous=FULL`, one writer connection.

use crate::backend::{
    Backend, CheckpointRow, Filter, NewRow, Param, RawRow, Reader, parse_frontier,
};
use crate::error::{AuditError, Op};
use crate::merkle::{Hash, leaf_hash};
use crate::schema::{
    COLUMNS, HEAD_SQL, INSERT_SQL, SCHEMA_VERSION, SELECT_SQL, open_for_read, open_for_write,
    user_version,
};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn werr(e: rusqlite::Error) -> AuditError {
    AuditError::storage(Op::Write, e)
}

fn rerr(e: rusqlite::Error) -> AuditError {
    AuditError::storage(Op::Read, e)
}

/// The writer's connection, and which file it was opened on.
pub(crate) struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    file: FileId,
}

/// The device and inode a path names. SQLite keeps writing through its
/// open descriptors after its file is deleted or its folder moved away:
/// into a file nobody will find again, so such writes must not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

impl FileId {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            Ok(Self(meta.dev(), meta.ino()))
        }
        #[cfg(not(unix))]
        {
            drop(meta);
            Ok(Self(0, 0))
        }
    }
}

impl SqliteBackend {
    pub(crate) fn open(path: &Path, busy_timeout: Duration) -> Result<Self, AuditError> {
        let conn = open_for_write(path, busy_timeout)?;
        let file = FileId::of(path).map_err(|e| AuditError::storage(Op::Open, e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            file,
        })
    }

    /// Fails unless the path still names the file the connection writes:
    /// a removed or replaced store is unavailable, not silently orphaned,
    /// and becomes available again when the same file is put back.
    fn still_in_place(&self) -> Result<(), AuditError> {
        match FileId::of(&self.path) {
            Ok(id) if id == self.file => Ok(()),
            _ => Err(AuditError::storage(
                Op::Write,
                "the database file was removed or replaced since it was opened",
            )),
        }
    }

    fn execute_cached(&self, sql: &str) -> Result<(), AuditError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(werr)
    }
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        // Leave the WAL checkpointed for readers that copy the main file.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::debug!(error = %e, "audit log: WAL checkpoint at close failed");
        }
    }
}

impl Backend for SqliteBackend {
    // The per-batch statements are prepared once and cached: parsing them
    // again on every commit cost about a tenth of the writer's time per
    // batch outside the fsync.
    fn begin(&mut self) -> Result<(), AuditError> {
        self.still_in_place()?;
        self.execute_cached("BEGIN IMMEDIATE")
    }

    fn head(&mut self) -> Result<(i64, String), AuditError> {
        let last = self
            .conn
            .prepare_cached(HEAD_SQL)
            .map_err(werr)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(werr)?;
        Ok(last.unwrap_or_else(|| (0, crate::chain::GENESIS_HASH.to_owned())))
    }

    fn leaves_after(&mut self, after: i64) -> Result<Vec<Hash>, AuditError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM audit_log WHERE seq > ?1 ORDER BY seq")
            .map_err(rerr)?;
        let mut rows = stmt.query([after]).map_err(rerr)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(rerr)? {
            let body: String = row.get(0).map_err(rerr)?;
            out.push(leaf_hash(body.as_bytes()));
        }
        Ok(out)
    }

    fn last_checkpoint(&mut self) -> Result<Option<CheckpointRow>, AuditError> {
        self.conn
            .query_row(
                "SELECT size, time_ms, root, note, frontier FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                [],
                checkpoint_from_row,
            )
            .optional()
            .map_err(rerr)?
            .transpose()
    }

    fn insert(&mut self, rows: &[NewRow<'_>]) -> Result<(), AuditError> {
        let mut stmt = self.conn.prepare_cached(&INSERT_SQL).map_err(werr)?;
        for r in rows {
            let fixed: [&dyn ToSql; 4] = [&r.seq, &r.prev_hash, &r.hash, &r.row.body];
            let columns = r.row.columns.iter().map(|v| v as &dyn ToSql);
            stmt.execute(params_from_iter(fixed.into_iter().chain(columns)))
                .map_err(werr)?;
        }
        Ok(())
    }

    fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), AuditError> {
        let size = i64::try_from(cp.size).map_err(|e| AuditError::storage(Op::Write, e))?;
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO audit_checkpoints (size, time_ms, root, note, frontier) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(werr)?
            .execute(params![
                size,
                cp.time_ms,
                cp.root.to_hex(),
                cp.note,
                crate::backend::frontier_text(&cp.frontier)
            ])
            .map_err(werr)?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), AuditError> {
        self.execute_cached("COMMIT")?;
        // The file may have gone between BEGIN and COMMIT: then the batch
        // is not known to be where readers will look, and does not count.
        self.still_in_place()
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "audit log: rollback failed");
        }
    }
}

fn checkpoint_from_row(r: &Row<'_>) -> rusqlite::Result<Result<CheckpointRow, AuditError>> {
    let size: i64 = r.get(0)?;
    let root: String = r.get(2)?;
    let frontier: String = r.get(4)?;
    let bad = || AuditError::storage(Op::Read, format!("checkpoint {size} is malformed"));
    let parsed = (|| {
        Some(CheckpointRow {
            size: u64::try_from(size).ok()?,
            time_ms: r.get(1).ok()?,
            root: Hash::from_hex(&root)?,
            note: r.get(3).ok()?,
            frontier: parse_frontier(&frontier)?,
        })
    })();
    Ok(parsed.ok_or_else(bad))
}

/// A read-only connection.
pub(crate) struct SqliteReader {
    conn: Connection,
    version: i64,
}

impl SqliteReader {
    pub(crate) fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = open_for_read(path)?;
        let version = user_version(&conn).map_err(rerr)?;
        Ok(Self { conn, version })
    }
}

fn raw_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    let mut columns = Vec::with_capacity(COLUMNS.len());
    for i in 0..COLUMNS.len() {
        columns.push(row.get(i + 4)?);
    }
    Ok(RawRow {
        seq: row.get(0)?,
        prev_hash: row.get(1)?,
        hash: row.get(2)?,
        body: row.get(3)?,
        columns,
    })
}

impl Reader for SqliteReader {
    fn scan(
        &mut self,
        f: &mut dyn FnMut(RawRow) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let sql = format!("{} ORDER BY seq", &*SELECT_SQL);
        let mut stmt = self.conn.prepare(&sql).map_err(rerr)?;
        let mut rows = stmt.query([]).map_err(rerr)?;
        while let Some(row) = rows.next().map_err(rerr)? {
            f(raw_row(row).map_err(rerr)?)?;
        }
        Ok(())
    }

    fn rows(&mut self, filter: &Filter) -> Result<Vec<RawRow>, AuditError> {
        let (clause, params) = filter.clause();
        let values = params.iter().map(|p| match p {
            Param::Text(t) => t as &dyn ToSql,
            Param::Int(i) => i,
        });
        let sql = format!("{} {clause} ORDER BY seq", &*SELECT_SQL);
        let mut stmt = self.conn.prepare(&sql).map_err(rerr)?;
        let mut rows = stmt.query(params_from_iter(values)).map_err(rerr)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(rerr)? {
            out.push(raw_row(row).map_err(rerr)?);
        }
        Ok(out)
    }

    fn checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError> {
        if self.version < SCHEMA_VERSION {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT size, time_ms, root, note, frontier FROM audit_checkpoints ORDER BY size",
            )
            .map_err(rerr)?;
        let rows = stmt.query_map([], checkpoint_from_row).map_err(rerr)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(rerr)??);
        }
        Ok(out)
    }
}
