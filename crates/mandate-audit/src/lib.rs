//! Mandate's durable, hash-chained, append-only audit log (embedded SQLite).
//!
//! # The write-ahead rule
//!
//! The gateway appends a [`RecordKind::Decision`](mandate_core::RecordKind)
//! record and awaits [`AuditLog::append`] *before* it forwards a call
//! upstream. `append` resolves only after the SQLite transaction holding
//! the record has committed and been fsynced (WAL, `synchronous=FULL`). So
//! every action that reached a tool has a durable decision record, and if
//! the log cannot be written the call is not forwarded (fail closed).
//!
//! # Group commit
//!
//! One writer thread owns the connection. It blocks for the first pending
//! append, takes whatever else is queued (up to 512), writes them all in
//! one transaction, commits once, then answers every waiter. Concurrency
//! therefore turns into batching: many appends share one fsync, and none is
//! acknowledged before its fsync. A failed batch answers every waiter with
//! an error and acknowledges nothing; [`AuditLog::health`] reports it.
//!
//! # The chain
//!
//! Row `seq` (1, 2, 3, … strictly +1) stores the record's canonical JSON in
//! `body` and `hash = hex(SHA-256(prev_hash || "\n" || body))`, where
//! `prev_hash` is the previous row's `hash` (64 zeros for seq 1). See
//! [`record_hash`] and the crate README for the exact bytes. Query columns
//! (`session`, `correlation_id`, …) are derived from `body`; [`verify`]
//! checks them too. Triggers refuse UPDATE and DELETE, but [`verify`]
//! does not rely on them.

mod chain;
mod error;
mod read;
mod schema;
mod writer;

pub use chain::{GENESIS_HASH, canonical_body, record_hash};
pub use error::{AuditError, CorruptRow, EncodeError, SchemaVersion, StorageError};
pub use read::{
    Problem, ProblemKind, StoredRecord, VerifyReport, read_by_correlation, read_calls_since,
    read_records, verify,
};

use mandate_core::AuditRecord;
use schema::PreparedRow;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::{Job, Shared};

/// Appends waiting for the writer before `append` itself waits (backpressure).
const QUEUE_CAPACITY: usize = 8192;

/// Where an appended record landed in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Appended {
    /// Its sequence number.
    pub seq: i64,
    /// Its chain hash.
    pub hash: String,
}

/// Tuning for [`AuditLog::open_sqlite_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    busy_timeout: Duration,
    max_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
        }
    }
}

impl SqliteOptions {
    /// How long a batch waits for a write lock held by another connection
    /// before it fails (default 5 s).
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Most records per transaction (default 512; at least 1). `1`
    /// disables group commit.
    #[must_use]
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }
}

/// A handle to the audit log. Cheap to clone; all clones feed one writer
/// thread, which stops (after draining the queue) when the last is dropped.
#[derive(Debug, Clone)]
pub struct AuditLog {
    // Field order matters: the last handle's `tx` must drop before `writer`
    // joins the thread, or the join would wait for itself.
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    #[expect(dead_code, reason = "held for its Drop, which joins the writer thread")]
    writer: Arc<WriterThread>,
}

impl AuditLog {
    /// Opens (creating if needed) the SQLite log at `path`; WAL +
    /// `synchronous=FULL`; spawns ONE writer (sequencer) thread. The chain
    /// resumes from the last stored row.
    pub fn open_sqlite(path: &Path) -> Result<AuditLog, AuditError> {
        Self::open_sqlite_with(path, SqliteOptions::default())
    }

    /// [`AuditLog::open_sqlite`] with explicit options.
    pub fn open_sqlite_with(path: &Path, options: SqliteOptions) -> Result<AuditLog, AuditError> {
        let conn = schema::open_for_write(path, options.busy_timeout)?;
        let (seq, _) = schema::head(&conn).map_err(|e| AuditError::storage(error::Op::Open, e))?;
        tracing::info!(path = %path.display(), last_seq = seq, "audit log open");
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("mandate-audit-writer".to_owned())
            .spawn(move || writer::run(conn, rx, thread_shared, options.max_batch))
            .map_err(|e| AuditError::storage(error::Op::Open, e))?;
        Ok(AuditLog {
            tx,
            shared,
            writer: Arc::new(WriterThread(Mutex::new(Some(handle)))),
        })
    }

    /// Appends one record; resolves only after the transaction containing it
    /// is committed and fsynced. An `Err` means the record is not stored
    /// (or, if the writer stopped mid-batch, not known to be).
    ///
    /// If this future is dropped after the record was queued, the record may
    /// still be written; it is never acknowledged early.
    pub async fn append(&self, record: AuditRecord) -> Result<Appended, AuditError> {
        self.enqueue(record, false).await
    }

    /// Appends a record that gates no action (a call's outcome). It is just
    /// as durable once acknowledged, but its commit may wait up to 5 ms for
    /// an [`append`](Self::append) to share it, so outcomes do not cost a
    /// commit (and an fsync) of their own.
    pub async fn append_deferrable(&self, record: AuditRecord) -> Result<Appended, AuditError> {
        self.enqueue(record, true).await
    }

    async fn enqueue(&self, record: AuditRecord, deferrable: bool) -> Result<Appended, AuditError> {
        // Serialising here keeps that work off the single writer thread.
        let row = PreparedRow::new(&record)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                row,
                reply,
                deferrable,
            })
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        answer.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Health: `Ok` if the last write succeeded (or nothing was written yet);
    /// `Err(message)` after a failed write until a later write succeeds, or
    /// once the writer thread has stopped.
    pub fn health(&self) -> Result<(), String> {
        if self.tx.is_closed() {
            return Err(AuditError::WriterStopped.to_string());
        }
        match self.shared.failure() {
            Some(message) => Err(message),
            None => Ok(()),
        }
    }

    /// Number of appends acknowledged (committed) since open.
    pub fn appended_count(&self) -> u64 {
        self.shared.appended.load(Ordering::Relaxed)
    }

    /// Number of transactions committed since open; below
    /// [`AuditLog::appended_count`] whenever group commit batched appends.
    pub fn commits_count(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }
}

/// Joins the writer thread when the last handle goes, so the connection is
/// closed (and the WAL checkpointed) before the process moves on. The join
/// waits for at most the batch in flight.
#[derive(Debug)]
struct WriterThread(Mutex<Option<JoinHandle<()>>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        let handle = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("audit writer thread panicked");
        }
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests;
