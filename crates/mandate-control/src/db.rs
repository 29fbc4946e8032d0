//! One SQL surface over the two backends: SQLite (embedded, one file, one
//! process) and PostgreSQL (shared by every replica). The store's
//! statements are written once, with `$1`-style placeholders, in the SQL
//! both dialects accept (`RETURNING`, `ON CONFLICT`, partial indexes,
//! `CAST(… AS TEXT)`); no statement contains a literal `$`.
//!
//! Every operation is one transaction. SQLite: `BEGIN IMMEDIATE` on the
//! one connection. PostgreSQL: `SERIALIZABLE` for writes (the same
//! one-at-a-time outcome SQLite's write lock gives, across replicas),
//! retried a few times on a serialization failure; `REPEATABLE READ READ
//! ONLY` for reads. Both clients block: the store runs them on tokio's
//! blocking pool (`api.rs`), never on an async worker.

use crate::error::ControlError;
use crate::signal::Topic;
use postgres::types::{ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// A statement argument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(v))
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(Some(v))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v)
    }
}

/// `args![a, b, …]`: a statement's arguments, in placeholder order.
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$($crate::db::Arg::from($e)),*][..]
    };
}
pub(crate) use args;

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Self::Int(v) => rusqlite::ToSql::to_sql(v),
            Self::Text(v) => rusqlite::ToSql::to_sql(v),
        }
    }
}

/// One column's value as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// A column's value as a Rust type.
pub(crate) trait FromCell: Sized {
    fn from_cell(cell: &Cell) -> Option<Self>;
}
impl FromCell for i64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Int(n) => Some(*n),
            _ => None,
        }
    }
}
impl FromCell for String {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Null => Some(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

/// A column by name or by position.
pub(crate) trait Col: std::fmt::Display + Copy {
    fn index(self, names: &[String]) -> Option<usize>;
}
impl Col for &str {
    fn index(self, names: &[String]) -> Option<usize> {
        names.iter().position(|n| n == self)
    }
}
impl Col for usize {
    fn index(self, names: &[String]) -> Option<usize> {
        (self < names.len()).then_some(self)
    }
}

/// One row as read back, whichever backend.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    names: Arc<[String]>,
    cells: Vec<Cell>,
}

impl Record {
    /// Column `col` as a `T`; a missing column or another type is a
    /// storage error (the schema is not what this version expects).
    pub(crate) fn get<T: FromCell>(&self, col: impl Col) -> Result<T, ControlError> {
        let cell = col
            .index(&self.names)
            .and_then(|i| self.cells.get(i))
            .ok_or_else(|| ControlError::Storage(format!("no column {col}")))?;
        T::from_cell(cell).ok_or_else(|| {
            let found = match cell {
                Cell::Null => "null",
                Cell::Int(_) => "an integer",
                Cell::Text(_) => "text",
            };
            ControlError::Storage(format!("column {col}: unexpected {found}"))
        })
    }
}

/// Statements inside one transaction.
pub(crate) trait Sql {
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, ControlError>;
    /// Runs a query; every row.
    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Record>, ControlError>;
    /// Runs a query; its first row, if any.
    fn query_opt(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Record>, ControlError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
    /// Tells the other replicas about `topic` once this transaction
    /// commits (PostgreSQL `NOTIFY`); nothing for a store only this
    /// process uses.
    fn notify(&mut self, _topic: Topic) -> Result<(), ControlError> {
        Ok(())
    }
}

/// A statement in SQLite's spelling: `?1` for `$1`.
fn lite(sql: &str) -> Cow<'_, str> {
    if sql.contains('$') {
        Cow::Owned(sql.replace('$', "?"))
    } else {
        Cow::Borrowed(sql)
    }
}

struct LiteTx<'c>(&'c rusqlite::Transaction<'c>);

impl Sql for LiteTx<'_> {
    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, ControlError> {
        let mut stmt = self.0.prepare_cached(&lite(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(args))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Record>, ControlError> {
        let mut stmt = self.0.prepare_cached(&lite(sql))?;
        let names: Arc<[String]> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(n) => Cell::Int(n),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Real(_) | ValueRef::Blob(_) => {
                        return Err(ControlError::Storage(format!(
                            "column {}: unexpected type",
                            names.get(i).map_or("?", String::as_str)
                        )));
                    }
                });
            }
            out.push(Record {
                names: names.clone(),
                cells,
            });
        }
        Ok(out)
    }
}

/// A PostgreSQL transaction and the store's notification channel.
struct PgTx<'a, 'c>(&'a mut postgres::Transaction<'c>, &'a str);

/// PostgreSQL parameters for `args` (owned, so they outlive the call).
fn pg_args(args: &[Arg<'_>]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|a| -> Box<dyn ToSql + Sync> {
            match *a {
                Arg::Int(v) => Box::new(v),
                Arg::Text(v) => Box::new(v.map(str::to_owned)),
            }
        })
        .collect()
}

impl Sql for PgTx<'_, '_> {
    fn notify(&mut self, topic: Topic) -> Result<(), ControlError> {
        self.0
            .execute("SELECT pg_notify($1, $2)", &[&self.1, &topic.as_str()])?;
        Ok(())
    }

    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, ControlError> {
        let owned = pg_args(args);
        let params: Vec<&(dyn ToSql + Sync)> = owned.iter().map(AsRef::as_ref).collect();
        Ok(self.0.execute(sql, &params)?)
    }

    fn query(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Record>, ControlError> {
        let owned = pg_args(args);
        let params: Vec<&(dyn ToSql + Sync)> = owned.iter().map(AsRef::as_ref).collect();
        let stmt = self.0.prepare(sql)?;
        let names: Arc<[String]> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
        let rows = self.0.query(&stmt, &params)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut cells = Vec::with_capacity(names.len());
            for (i, column) in row.columns().iter().enumerate() {
                let ty = column.type_();
                cells.push(if *ty == Type::INT8 {
                    row.try_get::<_, Option<i64>>(i)?
                        .map_or(Cell::Null, Cell::Int)
                } else if *ty == Type::INT4 {
                    row.try_get::<_, Option<i32>>(i)?
                        .map_or(Cell::Null, |n| Cell::Int(i64::from(n)))
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                    row.try_get::<_, Option<String>>(i)?
                        .map_or(Cell::Null, Cell::Text)
                } else {
                    return Err(ControlError::Storage(format!(
                        "column {}: unexpected type {ty}",
                        column.name()
                    )));
                });
            }
            out.push(Record {
                names: names.clone(),
                cells,
            });
        }
        Ok(out)
    }
}

/// Where a control store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (the embedded default): one process.
    Sqlite(PathBuf),
    /// A PostgreSQL database, shared by every replica: the tables live in
    /// `schema` (created if missing).
    Postgres {
        /// `postgres://…` connection URL.
        url: String,
        /// Schema of the control tables (a lower-case identifier).
        schema: String,
    },
}

impl Location {
    /// The default schema of the PostgreSQL tables.
    pub const DEFAULT_SCHEMA: &'static str = "mandate_control";

    /// `postgres://…` or `postgresql://…` names PostgreSQL (tables in
    /// [`Self::DEFAULT_SCHEMA`]); anything else is a SQLite file path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::Postgres {
                url: s.to_owned(),
                schema: Self::DEFAULT_SCHEMA.to_owned(),
            }
        } else {
            Self::Sqlite(PathBuf::from(s))
        }
    }

    /// Whether other processes may share this store (and change it
    /// behind this one's back).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }
}

impl std::fmt::Display for Location {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres { url, schema } => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    write!(f, "{u} (schema {schema})")
                }
                Err(_) => write!(f, "postgres://… (schema {schema})"),
            },
        }
    }
}

/// The database behind a store.
pub(crate) enum Db {
    Sqlite(LiteDb),
    Postgres(Box<PgDb>),
}

impl Db {
    /// Opens (creating tables if needed) the store at `location`.
    pub(crate) fn open(location: &Location) -> Result<Self, ControlError> {
        match location {
            Location::Sqlite(path) => LiteDb::open(path).map(Self::Sqlite),
            Location::Postgres { url, schema } => {
                PgDb::connect(url, schema).map(|db| Self::Postgres(Box::new(db)))
            }
        }
    }

    /// For a shared store: how to open the connection that listens for
    /// other replicas' notifications, and the channel (the schema's name).
    pub(crate) fn listen_target(&self) -> Option<(postgres::Config, String)> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(db) => Some((db.config.clone(), db.schema.clone())),
        }
    }

    /// Runs `f` as one write transaction; commits only if it returns `Ok`.
    pub(crate) fn write<T>(
        &self,
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        match self {
            Self::Sqlite(db) => db.run(TransactionBehavior::Immediate, &mut f),
            Self::Postgres(db) => db.run(true, &mut f),
        }
    }

    /// Runs `f` as one read-only transaction (a consistent snapshot).
    pub(crate) fn read<T>(
        &self,
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        match self {
            Self::Sqlite(db) => db.run(TransactionBehavior::Deferred, &mut f),
            Self::Postgres(db) => db.run(false, &mut f),
        }
    }
}

/// The device and inode a path names.
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

/// SQLite: one connection, `synchronous=FULL`, WAL.
pub(crate) struct LiteDb {
    conn: Mutex<Connection>,
    /// Where the store was opened, and the file it was then.
    path: PathBuf,
    file: FileId,
}

impl LiteDb {
    fn open(path: &Path) -> Result<Self, ControlError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(crate::schema::CONTROL)?;
        conn.execute_batch(crate::schema::INTENTS)?;
        let file = FileId::of(path).map_err(|_| ControlError::Gone)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            file,
        })
    }

    /// The connection, once the path still names the file it was opened
    /// on: SQLite keeps using a deleted or moved-away file through its open
    /// descriptors, and what it wrote there would be lost at the next start
    /// (a revocation among it). Such a store is unavailable until the same
    /// file is back.
    fn conn(&self) -> Result<MutexGuard<'_, Connection>, ControlError> {
        if FileId::of(&self.path).ok() != Some(self.file) {
            return Err(ControlError::Gone);
        }
        // A panic while holding the lock leaves SQLite consistent (every
        // operation is one transaction).
        Ok(self.conn.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn run<T>(
        &self,
        behavior: TransactionBehavior,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(behavior)?;
        let out = f(&mut LiteTx(&tx))?;
        tx.commit()?;
        Ok(out)
    }
}

/// PostgreSQL: a few blocking clients, each used by one operation at a
/// time, reconnected after the server went away.
pub(crate) struct PgDb {
    config: postgres::Config,
    schema: String,
    slots: [Mutex<Option<postgres::Client>>; PG_CONNECTIONS],
    next: AtomicUsize,
}

/// Connections per store (operations beyond this many at once wait).
const PG_CONNECTIONS: usize = 4;
/// How long connecting, and any one statement, may take before the
/// operation fails (and the call it serves is denied).
const PG_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a write transaction that lost a serialization race.
const PG_ATTEMPTS: usize = 5;

/// A plain lower-case identifier, safe to splice into SQL.
fn check_schema(schema: &str) -> Result<(), ControlError> {
    if mandate_core::text::is_plain_identifier(schema) {
        Ok(())
    } else {
        Err(ControlError::Invalid(
            "the control store's PostgreSQL schema must be a lower-case identifier".into(),
        ))
    }
}

/// Whether a failed transaction may simply be run again: it lost a
/// serialization race or a deadlock (SQLSTATE 40001, 40P01).
fn retryable(e: &ControlError) -> bool {
    matches!(e, ControlError::Storage(m) if m.starts_with("40001:") || m.starts_with("40P01:"))
}

impl PgDb {
    fn connect(url: &str, schema: &str) -> Result<Self, ControlError> {
        check_schema(schema)?;
        let mut config: postgres::Config = url.parse().map_err(|_| {
            ControlError::Invalid("the control store URL is not a PostgreSQL URL".into())
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_TIMEOUT);
        }
        let db = Self {
            config,
            schema: schema.to_owned(),
            slots: std::array::from_fn(|_| Mutex::new(None)),
            next: AtomicUsize::new(0),
        };
        let mut slot = db.slot();
        let client = db.client(&mut slot)?;
        // Concurrent first starts of several replicas: one creates.
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(7243507612)", &[])?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};"
        ))?;
        tx.batch_execute(crate::schema::CONTROL_PG)?;
        tx.batch_execute(crate::schema::INTENTS_PG)?;
        tx.commit()?;
        drop(slot);
        Ok(db)
    }

    /// A free connection slot (or, if all are busy, the first).
    fn slot(&self) -> MutexGuard<'_, Option<postgres::Client>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..PG_CONNECTIONS {
            if let Some(slot) = self.slots.get((start + k) % PG_CONNECTIONS)
                && let Ok(guard) = slot.try_lock()
            {
                return guard;
            }
        }
        let [first, ..] = &self.slots;
        first.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot's client, connecting (or reconnecting) first if needed.
    fn client<'s>(
        &self,
        slot: &'s mut MutexGuard<'_, Option<postgres::Client>>,
    ) -> Result<&'s mut postgres::Client, ControlError> {
        if slot.as_ref().is_some_and(postgres::Client::is_closed) {
            drop_off_runtime(slot.take());
        }
        if slot.is_none() {
            let mut client = self.config.connect(postgres::NoTls)?;
            client.batch_execute(&format!(
                "SET search_path TO {schema}; SET synchronous_commit = on; \
                 SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}",
                schema = self.schema,
                ms = PG_TIMEOUT.as_millis()
            ))?;
            **slot = Some(client);
        }
        slot.as_mut()
            .ok_or_else(|| ControlError::Storage("no PostgreSQL connection".into()))
    }

    fn run<T>(
        &self,
        write: bool,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut slot = self.slot();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.client(&mut slot)?;
            let result = (|| {
                let mut tx = client
                    .build_transaction()
                    .isolation_level(if write {
                        postgres::IsolationLevel::Serializable
                    } else {
                        postgres::IsolationLevel::RepeatableRead
                    })
                    .read_only(!write)
                    .start()?;
                let out = f(&mut PgTx(&mut tx, &self.schema))?;
                tx.commit()?;
                Ok(out)
            })();
            match result {
                Err(e) if retryable(&e) && attempt < PG_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(2 << attempt));
                }
                Err(e) => {
                    // A broken connection is replaced on the next use.
                    if slot.as_ref().is_some_and(postgres::Client::is_closed) {
                        drop_off_runtime(slot.take());
                    }
                    return Err(e);
                }
                Ok(out) => return Ok(out),
            }
        }
    }
}

/// Drops a blocking PostgreSQL client on a thread of its own: closing it
/// runs a small runtime, which must not happen on an async worker.
fn drop_off_runtime(client: Option<postgres::Client>) {
    if let Some(client) = client {
        let _ = std::thread::Builder::new()
            .name("control-pg-close".into())
            .spawn(move || drop(client));
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        for slot in &self.slots {
            drop_off_runtime(slot.lock().unwrap_or_else(PoisonError::into_inner).take());
        }
    }
}
