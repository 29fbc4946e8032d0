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

mod backend;
pub mod bundle;
mod chain;
mod error;
pub mod merkle;
pub mod note;
mod open;
mod postgres;
mod read;
pub mod replay;
mod schema;
mod sqlite;
mod writer;

pub use backend::Store;
pub use chain::{GENESIS_HASH, canonical_body, record_hash};
pub use error::{AuditError, CorruptRow, EncodeError, SchemaVersion, StorageError};
pub use note::{CheckpointSigner, NoteVerifier};
pub use read::{
    LogTree, Problem, ProblemKind, SessionTail, StoredCheckpoint, StoredRecord, VerifyReport,
    read_by_correlation, read_by_decision, read_calls_since, read_checkpoints, read_records,
    read_time_range, verify,
};
pub use writer::SignedCheckpoint;

use mandate_core::{AuditRecord, Clock};
use schema::PreparedRow;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::{Append, Job, Shared, TreeState};

/// Appends waiting for the writer before `append` itself waits (backpressure).
const QUEUE_CAPACITY: usize = 8192;

/// The receipt of a durable record: where it landed in the chain, and the
/// decision it records. Only this crate makes one, once the transaction
/// holding the record is committed (and fsynced), so holding an `Appended`
/// proves the record is durable: the gateway forwards a call only with the
/// receipt of its decision.
///
/// ```compile_fail,E0451
/// let forged = mandate_audit::Appended { seq: 1, hash: String::new(), decision: todo!() };
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Appended {
    seq: i64,
    hash: String,
    decision: mandate_core::DecisionId,
}

impl Appended {
    /// Its sequence number.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Its chain hash.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The decision the record documents.
    pub fn decision_id(&self) -> &mandate_core::DecisionId {
        &self.decision
    }
}

/// Where the writer put a record (its receipt lacks the decision id until
/// [`AuditLog::append`] adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Landed {
    pub(crate) seq: i64,
    pub(crate) hash: String,
}

/// Tuning for [`AuditLog::open`].
#[derive(Debug, Clone)]
pub struct Options {
    busy_timeout: Duration,
    max_batch: usize,
    signer: Option<CheckpointSigner>,
    checkpoint_interval: Option<Duration>,
    clock: Clock,
    write_deadline: Duration,
}

/// The former name of [`Options`].
pub type SqliteOptions = Options;

impl Default for Options {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_batch: 512,
            signer: None,
            checkpoint_interval: None,
            clock: Clock::system(),
            write_deadline: DEFAULT_WRITE_DEADLINE,
        }
    }
}

impl Options {
    /// How long a SQLite batch waits for a write lock held by another
    /// connection before it fails (default 5 s).
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

    /// Sign checkpoints with `signer`: on demand ([`AuditLog::checkpoint`]),
    /// at close, and every `interval` when given (if records were added).
    #[must_use]
    pub fn checkpoints(mut self, signer: CheckpointSigner, interval: Option<Duration>) -> Self {
        self.signer = Some(signer);
        self.checkpoint_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// The clock that dates checkpoints (default: the system's).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How long an append may take to become durable before it fails with
    /// [`AuditError::Timeout`] (default 5 s): a stuck disk must not hold
    /// callers forever, and "not durable in time" counts as not written.
    #[must_use]
    pub fn write_deadline(mut self, deadline: Duration) -> Self {
        self.write_deadline = deadline;
        self
    }
}

/// The default of [`Options::write_deadline`].
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// A handle to the audit log. Cheap to clone; all clones feed one writer
/// thread, which stops (after draining the queue and signing a last
/// checkpoint) when the last is dropped.
#[derive(Debug, Clone)]
pub struct AuditLog {
    // Field order matters: the last handle's `tx` must drop before `writer`
    // joins the thread, or the join would wait for itself.
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    store: Arc<Store>,
    write_deadline: Duration,
    #[expect(dead_code, reason = "held for its Drop, which joins the writer thread")]
    writer: Arc<WriterThread>,
}

impl AuditLog {
    /// Opens (creating if needed) the SQLite log at `path`; WAL +
    /// `synchronous=FULL`; no checkpoints. See [`AuditLog::open`].
    pub fn open_sqlite(path: &Path) -> Result<AuditLog, AuditError> {
        Self::open(&Store::sqlite(path), Options::default())
    }

    /// [`AuditLog::open_sqlite`] with explicit options.
    pub fn open_sqlite_with(path: &Path, options: Options) -> Result<AuditLog, AuditError> {
        Self::open(&Store::sqlite(path), options)
    }

    /// Opens (creating its tables if needed) the log in `store` and spawns
    /// ONE writer (sequencer) thread. The chain (and, with a signer, the
    /// Merkle tree) resumes from what is stored.
    pub fn open(store: &Store, options: Options) -> Result<AuditLog, AuditError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let thread_store = store.clone();
        let thread_options = options.clone();
        // The store is opened on the writer thread: the PostgreSQL client
        // blocks, and must not run on an async runtime's thread.
        let handle = std::thread::Builder::new()
            .name("mandate-audit-writer".to_owned())
            .spawn(move || {
                let opened =
                    open::open_backend(&thread_store, &thread_options).and_then(|mut b| {
                        let tree = match thread_options.signer.clone() {
                            Some(signer) => Some(TreeState::load(
                                b.as_mut(),
                                signer,
                                thread_options.clock.clone(),
                            )?),
                            None => None,
                        };
                        let (seq, _) = b.head()?;
                        Ok((b, tree, seq))
                    });
                match opened {
                    Ok((backend, tree, seq)) => {
                        let _ = opened_tx.send(Ok(seq));
                        writer::run(backend, rx, thread_shared, thread_options.max_batch, tree);
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| AuditError::storage(error::Op::Open, e))?;
        let opened = opened_rx.recv().unwrap_or(Err(AuditError::WriterStopped));
        let seq = match opened {
            Ok(seq) => seq,
            Err(e) => {
                let _ = handle.join();
                return Err(e);
            }
        };
        tracing::info!(store = %store, last_seq = seq, "audit log open");
        if let Some(interval) = options.checkpoint_interval {
            spawn_ticker(tx.downgrade(), interval)?;
        }
        Ok(AuditLog {
            tx,
            shared,
            store: Arc::new(store.clone()),
            write_deadline: options.write_deadline,
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
        // Serialising (and hashing the Merkle leaf) here keeps that work
        // off the single writer thread.
        let row = PreparedRow::new(&record)?;
        let decision = record.decision.id;
        let (reply, answer) = oneshot::channel();
        let written = async {
            self.tx
                .send(Job::Append(Append {
                    row,
                    reply,
                    deferrable,
                }))
                .await
                .map_err(|_| AuditError::WriterStopped)?;
            answer.await.map_err(|_| AuditError::WriterStopped)?
        };
        // The deadline is part of the append, for every caller: a record
        // not durable in time counts as not written.
        let landed = match tokio::time::timeout(self.write_deadline, written).await {
            Ok(landed) => landed?,
            Err(_) => {
                // A stuck store is as unhealthy as a failing one; the next
                // commit that lands clears this.
                let e = AuditError::Timeout(self.write_deadline);
                self.shared.set_failure(Some(e.to_string()));
                return Err(e);
            }
        };
        Ok(Appended {
            seq: landed.seq,
            hash: landed.hash,
            decision,
        })
    }

    /// Signs (and stores) a checkpoint of every committed record now, or
    /// returns the latest one if nothing was added since. `None` for an
    /// empty log. Fails if the log was opened without a signing key.
    pub async fn checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Checkpoint(Some(reply)))
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        answer.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Health: `Ok` if the last write succeeded (or nothing was written yet);
    /// `Err(message)` after a failed or timed-out write until a later write
    /// succeeds, or once the writer thread has stopped.
    pub fn health(&self) -> Result<(), String> {
        if self.tx.is_closed() {
            return Err(AuditError::WriterStopped.to_string());
        }
        match self.shared.failure() {
            Some(message) => Err(message),
            None => Ok(()),
        }
    }

    /// Where the log lives (for reading it back).
    pub fn store(&self) -> &Store {
        &self.store
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

    /// A monitoring handle: queue depth, counters, commit durations. It
    /// does not keep the writer running.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            shared: Arc::clone(&self.shared),
            tx: self.tx.downgrade(),
        }
    }
}

/// What the writer is doing, for monitoring (`AuditLog::stats`). Cheap to
/// clone; it holds no handle, so it never keeps the writer alive.
#[derive(Debug, Clone)]
pub struct AuditStats {
    shared: Arc<Shared>,
    tx: mpsc::WeakSender<Job>,
}

impl AuditStats {
    /// Appends waiting for the writer: queued, or in the batch being
    /// committed (a checkpoint request in the queue counts as one).
    pub fn queue_depth(&self) -> u64 {
        let queued = self
            .tx
            .upgrade()
            .map_or(0, |tx| tx.max_capacity().saturating_sub(tx.capacity()));
        (queued as u64).saturating_add(self.shared.in_batch.load(Ordering::Relaxed))
    }

    /// Records committed since open (as [`AuditLog::appended_count`]).
    pub fn appended(&self) -> u64 {
        self.shared.appended.load(Ordering::Relaxed)
    }

    /// Transactions committed since open (as [`AuditLog::commits_count`]).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Whether the last write succeeded and the writer runs (as
    /// [`AuditLog::health`]).
    pub fn is_healthy(&self) -> bool {
        self.tx.strong_count() > 0 && self.shared.failure().is_none()
    }

    /// Calls `observe` with the duration of every committed transaction
    /// (writes, commit and fsync), on the writer thread, so it must be
    /// quick. Replaces an earlier observer.
    pub fn on_commit(&self, observe: impl Fn(Duration) + Send + Sync + 'static) {
        self.shared.on_commit.set(Arc::new(observe));
    }
}

/// Asks for a checkpoint every `interval` while any handle lives (it holds
/// no handle itself, so it never keeps the writer alive).
fn spawn_ticker(tx: mpsc::WeakSender<Job>, interval: Duration) -> Result<(), AuditError> {
    std::thread::Builder::new()
        .name("mandate-audit-checkpoints".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(tx) = tx.upgrade() else { break };
                if tx.blocking_send(Job::Checkpoint(None)).is_err() {
                    break;
                }
            }
        })
        .map(drop)
        .map_err(|e| AuditError::storage(error::Op::Open, e))
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
