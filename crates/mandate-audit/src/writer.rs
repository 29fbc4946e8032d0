//! The single writer (sequencer) thread and its group commit.

use crate::Appended;
use crate::chain::record_hash;
use crate::error::{AuditError, Op};
use crate::schema::{INSERT_SQL, PreparedRow, head};
use rusqlite::types::ToSql;
use rusqlite::{Connection, TransactionBehavior, params_from_iter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{mpsc, oneshot};

/// One pending append: the prepared row and where to send its fate.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) row: PreparedRow,
    pub(crate) reply: oneshot::Sender<Result<Appended, AuditError>>,
    /// A record that gates nothing (an outcome) may wait briefly for an
    /// urgent one (a decision) to share its commit.
    pub(crate) deferrable: bool,
}

/// State the writer publishes to every handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The last batch's error; `None` once a batch commits.
    failure: Mutex<Option<String>>,
    /// Records committed since open.
    pub(crate) appended: AtomicU64,
    /// Transactions committed since open.
    pub(crate) commits: AtomicU64,
}

impl Shared {
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

/// How long a batch waits for company when appends are concurrent.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);

/// How long deferrable records wait for an urgent one to share a commit.
const DEFER_MAX: std::time::Duration = std::time::Duration::from_millis(5);
/// How often a deferred batch looks for company.
const DEFER_POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// Moves queued jobs into `batch`, up to `max_batch`.
fn drain(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, max_batch: usize) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// The writer loop: block for one job, drain up to `max_batch` queued jobs,
/// write them in one transaction, commit (fsync), then answer every waiter.
/// Returns when every sender is gone and the queue is empty.
pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    max_batch: usize,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut last_batch_len = 0usize;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch, max_batch);
        // Only deferrable records so far: give the next decision a few
        // milliseconds to arrive and share this commit (checked every
        // 50 µs, so an urgent record never waits more than that).
        if batch.iter().all(|j| j.deferrable) {
            let deadline = std::time::Instant::now() + DEFER_MAX;
            while std::time::Instant::now() < deadline && batch.len() < max_batch {
                std::thread::sleep(DEFER_POLL);
                let before = batch.len();
                drain(&mut rx, &mut batch, max_batch);
                if batch.iter().skip(before).any(|j| !j.deferrable) {
                    break;
                }
            }
        }
        // Under concurrency (the previous batch had company), wait a moment
        // for more records before paying for a commit: every commit writes
        // whole pages to the WAL and fsyncs, so fewer, larger commits cost
        // far less CPU and I/O. A lone caller never waits (its previous
        // batch was a single record).
        if last_batch_len > 1 && batch.len() < max_batch && batch.iter().any(|j| !j.deferrable) {
            // (last_batch_len counts urgent records only: an outcome riding
            // along with one decision is not concurrency.)
            std::thread::sleep(LINGER);
            drain(&mut rx, &mut batch, max_batch);
        }
        last_batch_len = batch.iter().filter(|j| !j.deferrable).count();
        match write_batch(&mut conn, &batch) {
            Ok(appended) => {
                // Publish before replying, so a caller that sees Ok also
                // sees the counters and health that include its record.
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared
                    .appended
                    .fetch_add(appended.len() as u64, Ordering::Relaxed);
                if shared.failure().is_some() {
                    tracing::info!("audit log writes succeed again");
                }
                shared.set_failure(None);
                for (job, appended) in batch.drain(..).zip(appended) {
                    // A waiter that gave up is fine: its record is durable.
                    let _ = job.reply.send(Ok(appended));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), "audit batch failed; none acknowledged");
                shared.set_failure(Some(e.to_string()));
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "audit log did not close cleanly");
    }
}

/// Appends `batch` in one IMMEDIATE transaction and commits it. With WAL
/// and `synchronous=FULL` the commit returns only after the WAL is fsynced.
/// On any error the transaction is rolled back (on drop) and nothing counts.
fn write_batch(conn: &mut Connection, batch: &[Job]) -> Result<Vec<Appended>, AuditError> {
    let err = |e: rusqlite::Error| AuditError::storage(Op::Write, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // INVARIANT: the head is read inside the write transaction, so the chain
    // always extends what is committed, including after a failed batch.
    let (mut seq, mut prev) = head(&tx).map_err(err)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut stmt = tx.prepare_cached(&INSERT_SQL).map_err(err)?;
        for job in batch {
            seq = seq
                .checked_add(1)
                .ok_or_else(|| AuditError::storage(Op::Write, "sequence numbers exhausted"))?;
            let hash = record_hash(&prev, &job.row.body);
            let fixed: [&dyn ToSql; 4] = [&seq, &prev, &hash, &job.row.body];
            let columns = job.row.columns.iter().map(|v| v as &dyn ToSql);
            stmt.execute(params_from_iter(fixed.into_iter().chain(columns)))
                .map_err(err)?;
            out.push(Appended {
                seq,
                hash: hash.clone(),
            });
            prev = hash;
        }
    }
    tx.commit().map_err(err)?;
    Ok(out)
}
