//! The PostgreSQL store: the same tables as SQLite, in their own schema.
//!
//! - Durability: `synchronous_commit = on` for the writer's session, so a
//!   commit returns only after the WAL is flushed (on the primary, and on
//!   synchronous standbys if the server has any).
//! - Group commit: one transaction per batch, the rows inserted by ONE
//!   multi-row `INSERT … SELECT FROM unnest(…)` statement.
//! - One sequencer across replicas: each batch takes an `EXCLUSIVE` lock on
//!   the log table (readers are not blocked) before reading the head.
//! - Round trips: the writer's statements are prepared once per connection
//!   (not parsed and planned again in every batch, while the lock is held),
//!   and so are a reader's; one session's records after a sequence number,
//!   read before every call when replicas share the log, come from one
//!   `(session, seq)` index.
//! - Append-only: a statement trigger refuses UPDATE, DELETE and TRUNCATE
//!   on both tables for every role, and those privileges are revoked from
//!   PUBLIC and from the serving role (see docs/AUDIT-FORMAT.md for a
//!   deployment where another role owns the tables).
//!
//! The blocking `postgres` client runs its own small runtime, so it is only
//! ever used from the writer thread or a dedicated reader thread.

use crate::backend::{
    Backend, CheckpointRow, Filter, NewRow, Param, RawRow, Reader, frontier_text, parse_frontier,
};
use crate::chain::GENESIS_HASH;
use crate::error::{AuditError, Op};
use crate::merkle::{Hash, leaf_hash};
use crate::schema::COLUMNS;
use postgres::types::{FromSql, ToSql};
use postgres::{Client, NoTls, Row, Statement};
use rusqlite::types::Value;
use std::collections::HashMap;

fn err(op: Op) -> impl Fn(postgres::Error) -> AuditError {
    move |e: postgres::Error| {
        // The driver's Display of a server error is "db error"; the
        // server's own message says what went wrong.
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        AuditError::storage(op, message)
    }
}

/// A plain lower-case identifier, safe to splice into SQL.
fn check_schema(schema: &str) -> Result<(), AuditError> {
    if mandate_core::text::is_plain_identifier(schema) {
        Ok(())
    } else {
        Err(AuditError::storage(
            Op::Open,
            "the PostgreSQL schema name must be a lower-case identifier",
        ))
    }
}

fn connect(url: &str, schema: &str, op: Op) -> Result<Client, AuditError> {
    check_schema(schema)?;
    let mut client = Client::connect(url, NoTls).map_err(err(op))?;
    client
        .batch_execute(&format!(
            "SET synchronous_commit = on; SET search_path TO {schema}"
        ))
        .map_err(err(op))?;
    Ok(client)
}

/// Tables, indexes and the append-only trigger. Idempotent; run under an
/// advisory lock so concurrent first starts do not race.
fn ddl(schema: &str) -> String {
    let columns = COLUMNS
        .iter()
        .map(|c| {
            let ty = match *c {
                "time_ms" => "bigint NOT NULL",
                "task_id" | "build" | "outcome" | "detail" => "text",
                _ => "text NOT NULL",
            };
            format!(",\n    {c} {ty}")
        })
        .collect::<Vec<_>>()
        .concat();
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.audit_log (
    seq bigint PRIMARY KEY CHECK (seq >= 1),
    prev_hash text NOT NULL,
    hash text NOT NULL,
    body text NOT NULL{columns}
);
CREATE INDEX IF NOT EXISTS audit_log_session_seq ON {schema}.audit_log (session, seq);
DROP INDEX IF EXISTS {schema}.audit_log_session;
CREATE INDEX IF NOT EXISTS audit_log_correlation_id ON {schema}.audit_log (correlation_id);
CREATE INDEX IF NOT EXISTS audit_log_time_ms ON {schema}.audit_log (time_ms);
CREATE TABLE IF NOT EXISTS {schema}.audit_checkpoints (
    size bigint PRIMARY KEY CHECK (size >= 1),
    time_ms bigint NOT NULL,
    root text NOT NULL,
    note text NOT NULL,
    frontier text NOT NULL
);
CREATE OR REPLACE FUNCTION {schema}.audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE OR REPLACE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON {schema}.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.audit_append_only();
CREATE OR REPLACE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON {schema}.audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_log, {schema}.audit_checkpoints FROM PUBLIC;
"
    )
}

/// The writer's statements, prepared on its connection.
#[derive(Clone)]
struct Prepared {
    head: Statement,
    leaves_after: Statement,
    insert: Statement,
}

/// The writer's connection.
pub(crate) struct PgBackend {
    url: String,
    schema: String,
    client: Client,
    insert: String,
    /// Prepared at the first batch on a connection; dropped with it, and
    /// after a failed batch (a schema changed under it is prepared anew).
    prepared: Option<Prepared>,
}

impl PgBackend {
    pub(crate) fn open(url: &str, schema: &str) -> Result<Self, AuditError> {
        let mut client = connect(url, schema, Op::Open)?;
        let mut tx = client.transaction().map_err(err(Op::Open))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("mandate-audit-ddl:{schema}")],
        )
        .map_err(err(Op::Open))?;
        // Tables owned by another role (separation of duties) are used as
        // they are; otherwise they are created or brought up to date.
        let owned_by_us: Option<bool> = tx
            .query_opt(
                "SELECT tableowner = current_user FROM pg_tables WHERE schemaname = $1 AND tablename = 'audit_log'",
                &[&schema],
            )
            .map_err(err(Op::Open))?
            .map(|r| r.get(0));
        if owned_by_us != Some(false) {
            tx.batch_execute(&ddl(schema)).map_err(err(Op::Open))?;
            // The serving role keeps INSERT and SELECT only, even as owner
            // (an owner could grant itself more; the trigger still refuses).
            tx.batch_execute(&format!(
                "REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_log, {schema}.audit_checkpoints FROM CURRENT_USER"
            ))
            .map_err(err(Op::Open))?;
        }
        tx.commit().map_err(err(Op::Open))?;
        let names = COLUMNS.join(", ");
        let arrays: Vec<String> = (0..COLUMNS.len() + 4)
            .map(|i| {
                let ty = if i == 0 || i == 4 { "bigint" } else { "text" };
                format!("${}::{ty}[]", i + 1)
            })
            .collect();
        let insert = format!(
            "INSERT INTO audit_log (seq, prev_hash, hash, body, {names}) SELECT * FROM unnest({})",
            arrays.join(", ")
        );
        Ok(Self {
            url: url.to_owned(),
            schema: schema.to_owned(),
            client,
            insert,
            prepared: None,
        })
    }

    /// The writer's statements on this connection, prepared if needed.
    fn prepared(&mut self) -> Result<Prepared, AuditError> {
        if let Some(p) = &self.prepared {
            return Ok(p.clone());
        }
        let mut prepare = |sql: &str| self.client.prepare(sql).map_err(err(Op::Write));
        let p = Prepared {
            head: prepare("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?,
            leaves_after: prepare("SELECT body FROM audit_log WHERE seq > $1 ORDER BY seq")?,
            insert: prepare(&self.insert)?,
        };
        self.prepared = Some(p.clone());
        Ok(p)
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(r) => Some(r.to_string()),
        Value::Null | Value::Blob(_) => None,
    }
}

impl Backend for PgBackend {
    fn begin(&mut self) -> Result<(), AuditError> {
        // A lost connection (server restart) is replaced on the next batch.
        if self.client.is_closed() {
            self.prepared = None;
            self.client = connect(&self.url, &self.schema, Op::Write)?;
        }
        self.client
            .batch_execute("BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE")
            .map_err(err(Op::Write))
    }

    fn head(&mut self) -> Result<(i64, String), AuditError> {
        let head = self.prepared()?.head;
        let row = self.client.query_opt(&head, &[]).map_err(err(Op::Write))?;
        match row {
            None => Ok((0, GENESIS_HASH.to_owned())),
            Some(r) => Ok((col(&r, 0, Op::Write)?, col(&r, 1, Op::Write)?)),
        }
    }

    fn leaves_after(&mut self, after: i64) -> Result<Vec<Hash>, AuditError> {
        let leaves_after = self.prepared()?.leaves_after;
        let rows = self
            .client
            .query(&leaves_after, &[&after])
            .map_err(err(Op::Read))?;
        rows.iter()
            .map(|r| Ok(leaf_hash(col::<&str>(r, 0, Op::Read)?.as_bytes())))
            .collect()
    }

    fn last_checkpoint(&mut self) -> Result<Option<CheckpointRow>, AuditError> {
        let row = self
            .client
            .query_opt(
                "SELECT size, time_ms, root, note, frontier FROM audit_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .map_err(err(Op::Read))?;
        row.map(|r| checkpoint_from_row(&r)).transpose()
    }

    fn insert(&mut self, rows: &[NewRow<'_>]) -> Result<(), AuditError> {
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let prevs: Vec<&str> = rows.iter().map(|r| r.prev_hash).collect();
        let hashes: Vec<&str> = rows.iter().map(|r| r.hash).collect();
        let bodies: Vec<&str> = rows.iter().map(|r| r.row.body.as_str()).collect();
        let mut times: Vec<i64> = Vec::with_capacity(rows.len());
        let mut texts: Vec<Vec<Option<String>>> =
            vec![Vec::with_capacity(rows.len()); COLUMNS.len() - 1];
        for r in rows {
            let mut values = r.row.columns.iter();
            times.push(match values.next() {
                Some(Value::Integer(t)) => *t,
                _ => 0,
            });
            for (column, v) in texts.iter_mut().zip(values) {
                column.push(text(v));
            }
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&seqs, &prevs, &hashes, &bodies, &times];
        for column in &texts {
            params.push(column);
        }
        let insert = self.prepared()?.insert;
        self.client
            .execute(&insert, &params)
            .map_err(err(Op::Write))?;
        Ok(())
    }

    fn insert_checkpoint(&mut self, cp: &CheckpointRow) -> Result<(), AuditError> {
        let size = i64::try_from(cp.size).map_err(|e| AuditError::storage(Op::Write, e))?;
        self.client
            .execute(
                "INSERT INTO audit_checkpoints (size, time_ms, root, note, frontier) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (size) DO NOTHING",
                &[&size, &cp.time_ms, &cp.root.to_hex(), &cp.note, &frontier_text(&cp.frontier)],
            )
            .map_err(err(Op::Write))?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), AuditError> {
        self.client.batch_execute("COMMIT").map_err(err(Op::Write))
    }

    fn rollback(&mut self) {
        self.prepared = None;
        if !self.client.is_closed()
            && let Err(e) = self.client.batch_execute("ROLLBACK")
        {
            tracing::warn!(error = %e, "audit log: rollback failed");
        }
    }
}

/// Column `i` of `row`, or a storage error (never a panic: the tables may
/// be another role's, and their types are not ours to guarantee).
fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize, op: Op) -> Result<T, AuditError> {
    row.try_get(i).map_err(|e| AuditError::storage(op, e))
}

fn checkpoint_from_row(r: &Row) -> Result<CheckpointRow, AuditError> {
    let size: i64 = col(r, 0, Op::Read)?;
    let bad = || AuditError::storage(Op::Read, format!("checkpoint {size} is malformed"));
    Ok(CheckpointRow {
        size: u64::try_from(size).map_err(|_| bad())?,
        time_ms: col(r, 1, Op::Read)?,
        root: Hash::from_hex(col(r, 2, Op::Read)?).ok_or_else(bad)?,
        note: col(r, 3, Op::Read)?,
        frontier: parse_frontier(col(r, 4, Op::Read)?).ok_or_else(bad)?,
    })
}

/// A reading connection.
pub(crate) struct PgReader {
    client: Client,
    /// [`Reader::rows`]' statements by their SQL (one per kind of
    /// [`Filter`], so few), prepared once on this connection: a replica's
    /// tail reads one session's new records before every call.
    prepared: HashMap<String, Statement>,
}

impl PgReader {
    pub(crate) fn open(url: &str, schema: &str) -> Result<Self, AuditError> {
        let mut client = connect(url, schema, Op::Read)?;
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'audit_log')",
                &[&schema],
            )
            .map_err(err(Op::Read))?
            .get(0);
        if !exists {
            return Err(AuditError::storage(
                Op::Read,
                format!("no audit log in schema {schema}"),
            ));
        }
        Ok(Self {
            client,
            prepared: HashMap::new(),
        })
    }
}

fn raw_row(row: &Row) -> Result<RawRow, AuditError> {
    let mut columns = Vec::with_capacity(COLUMNS.len());
    for i in 0..COLUMNS.len() {
        let v = if i == 0 {
            Value::Integer(col(row, i + 4, Op::Read)?)
        } else {
            col::<Option<String>>(row, i + 4, Op::Read)?.map_or(Value::Null, Value::Text)
        };
        columns.push(v);
    }
    Ok(RawRow {
        seq: col(row, 0, Op::Read)?,
        prev_hash: col(row, 1, Op::Read)?,
        hash: col(row, 2, Op::Read)?,
        body: col(row, 3, Op::Read)?,
        columns,
    })
}

impl Reader for PgReader {
    fn scan(
        &mut self,
        f: &mut dyn FnMut(RawRow) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let sql = format!("{} ORDER BY seq", *crate::schema::SELECT_SQL);
        let none: [&(dyn ToSql + Sync); 0] = [];
        let mut rows = self
            .client
            .query_raw(sql.as_str(), none)
            .map_err(err(Op::Read))?;
        while let Some(row) = rows.next().map_err(err(Op::Read))? {
            f(raw_row(&row)?)?;
        }
        Ok(())
    }

    fn rows(&mut self, filter: &Filter) -> Result<Vec<RawRow>, AuditError> {
        let (clause, values) = filter.clause();
        let sql = format!("{} {clause} ORDER BY seq", *crate::schema::SELECT_SQL);
        let params: Vec<&(dyn ToSql + Sync)> = values
            .iter()
            .map(|p| match p {
                Param::Text(t) => t as &(dyn ToSql + Sync),
                Param::Int(i) => i,
            })
            .collect();
        let statement = match self.prepared.get(&sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.client.prepare(&sql).map_err(err(Op::Read))?;
                self.prepared.insert(sql, s.clone());
                s
            }
        };
        let rows = self
            .client
            .query(&statement, &params)
            .map_err(err(Op::Read))?;
        rows.iter().map(raw_row).collect()
    }

    fn checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError> {
        self.client
            .query(
                "SELECT size, time_ms, root, note, frontier FROM audit_checkpoints ORDER BY size",
                &[],
            )
            .map_err(err(Op::Read))?
            .iter()
            .map(checkpoint_from_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `MANDATE_TEST_POSTGRES_URL` (default: the machine's server, as the
    /// store suite uses), or none when it is `skip`.
    fn server() -> Option<String> {
        let url = std::env::var("MANDATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        (url != "skip").then_some(url)
    }

    /// 2000 records over 20 sessions, then what a replica's tail reads
    /// before a call: one session's records after a sequence number.
    fn tail_reads_one_index(url: &str, schema: &str) -> Result<(), AuditError> {
        drop(PgBackend::open(url, schema)?);
        let mut admin = connect(url, schema, Op::Write)?;
        let values: Vec<&str> = COLUMNS
            .iter()
            .map(|c| match *c {
                "time_ms" => "i",
                "session" => "'sid:s' || (i % 20)",
                "kind" => "'decision'",
                _ => "''",
            })
            .collect();
        admin
            .batch_execute(&format!(
                "INSERT INTO audit_log (seq, prev_hash, hash, body, {}) \
                 SELECT i, '', '', '', {} FROM generate_series(1, 2000) i; ANALYZE audit_log",
                COLUMNS.join(", "),
                values.join(", ")
            ))
            .map_err(err(Op::Write))?;
        let filter = Filter::SessionCallsAfter {
            session: "sid:s3".into(),
            after: 1900,
        };
        let (clause, _) = filter.clause();
        let plan: Vec<String> = admin
            .query(
                &format!(
                    "EXPLAIN {} {clause} ORDER BY seq",
                    *crate::schema::SELECT_SQL
                ),
                &[&"sid:s3", &1900_i64],
            )
            .map_err(err(Op::Read))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        // Indexed and in order (the planner may prefer the primary key
        // when few records follow `after`; either is one ordered index).
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(!plan.contains("Sort"), "read in index order: {plan}");
        let old: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'audit_log_session'",
                &[&schema],
            )
            .map_err(err(Op::Read))?
            .get(0);
        assert_eq!(old, 0, "the session-only index is dropped");

        // Read twice on one connection: one statement, prepared once.
        let mut reader = PgReader::open(url, schema)?;
        for _ in 0..2 {
            let seqs: Vec<i64> = reader.rows(&filter)?.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1903..=2000).step_by(20).collect::<Vec<i64>>());
        }
        assert_eq!(reader.prepared.len(), 1);
        Ok(())
    }

    #[test]
    fn a_sessions_new_records_come_from_one_index_in_order() -> Result<(), AuditError> {
        let Some(url) = server() else {
            return Ok(());
        };
        let schema = format!(
            "t_pg_tail_{}_{}",
            std::process::id(),
            mandate_core::Clock::system().now_ms()
        );
        let result = tail_reads_one_index(&url, &schema);
        if let Ok(mut c) = Client::connect(&url, NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
        result
    }
}
