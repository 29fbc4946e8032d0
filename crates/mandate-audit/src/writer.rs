//! The single writer (sequencer) thread and its group commit.

use crate::Landed;
use crate::backend::{Backend, CheckpointRow, NewRow};
use crate::chain::record_hash;
use crate::error::{AuditError, Op};
use crate::merkle::Frontier;
use crate::note::CheckpointSigner;
use crate::schema::PreparedRow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::sync::{mpsc, oneshot};

/// A signed checkpoint, as [`crate::AuditLog::checkpoint`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignedCheckpoint {
    /// Records covered (1 ..= size).
    pub size: u64,
    /// Their RFC 9162 tree hash.
    pub root: crate::merkle::Hash,
    /// The C2SP signed note.
    pub note: String,
}

/// Work for the writer.
#[derive(Debug)]
pub(crate) enum Job {
    /// Append one record.
    Append(Append),
    /// Sign a checkpoint of everything committed (if it grew since the
    /// last one); `None` for the periodic tick, which wants no answer.
    Checkpoint(Option<oneshot::Sender<Result<Option<SignedCheckpoint>, AuditError>>>),
}

/// One pending append: the prepared row and where to send its fate.
#[derive(Debug)]
pub(crate) struct Append {
    pub(crate) row: PreparedRow,
    pub(crate) reply: oneshot::Sender<Result<Landed, AuditError>>,
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
    /// Records taken off the queue whose batch is not answered yet.
    pub(crate) in_batch: AtomicU64,
    /// Told how long each committed transaction took (`AuditStats::on_commit`).
    pub(crate) on_commit: OnCommit,
}

/// Called with the duration of every committed transaction (writes,
/// commit and fsync), on the writer thread: it must be quick.
type CommitObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// The commit observer, if one was set.
#[derive(Default)]
pub(crate) struct OnCommit(RwLock<Option<CommitObserver>>);

impl std::fmt::Debug for OnCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCommit")
    }
}

impl OnCommit {
    pub(crate) fn set(&self, observe: CommitObserver) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(observe);
    }

    fn observe(&self, took: std::time::Duration) {
        if let Some(observe) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            observe(took);
        }
    }
}

impl Shared {
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

/// How long a batch waits for company when appends are concurrent.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);

/// How long deferrable records wait for an urgent one to share a commit.
const DEFER_MAX: std::time::Duration = std::time::Duration::from_millis(5);

/// Checkpoint requests waiting for the next commit.
type CheckpointWaiters = Vec<oneshot::Sender<Result<Option<SignedCheckpoint>, AuditError>>>;

/// Moves queued jobs into `batch` (appends, up to `max_batch`) and
/// `checkpoints` (requests).
fn drain(
    rx: &mut mpsc::Receiver<Job>,
    batch: &mut Vec<Append>,
    checkpoints: &mut Checkpoints,
    max_batch: usize,
) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(job) => take(job, batch, checkpoints),
            Err(_) => break,
        }
    }
}

fn take(job: Job, batch: &mut Vec<Append>, checkpoints: &mut Checkpoints) {
    match job {
        Job::Append(a) => batch.push(a),
        Job::Checkpoint(reply) => {
            checkpoints.wanted = true;
            checkpoints.waiters.extend(reply);
        }
    }
}

/// Pending checkpoint requests.
#[derive(Default)]
struct Checkpoints {
    wanted: bool,
    waiters: CheckpointWaiters,
}

/// The Merkle tree's right edge and the signing key, when the log signs
/// checkpoints.
pub(crate) struct TreeState {
    signer: CheckpointSigner,
    /// Dates checkpoints.
    clock: mandate_core::Clock,
    frontier: Frontier,
    last: Option<SignedCheckpoint>,
}

impl TreeState {
    /// Resumes from the store's last checkpoint, then reads the leaves
    /// written after it.
    pub(crate) fn load(
        backend: &mut dyn Backend,
        signer: CheckpointSigner,
        clock: mandate_core::Clock,
    ) -> Result<Self, AuditError> {
        let mut state = Self {
            signer,
            clock,
            frontier: Frontier::default(),
            last: None,
        };
        let (head, _) = backend.head()?;
        // The stored frontier and root are not signed: they are used only
        // if the note verifies with this log's key and they agree with it.
        // Otherwise the tree is rebuilt from the leaves.
        if let Some(cp) = backend.last_checkpoint()? {
            let signed = state.signer.verifier().open_checkpoint(&cp.note).ok();
            let size = i64::try_from(cp.size).unwrap_or(i64::MAX);
            let frontier = Frontier::from_parts(cp.size, cp.frontier.clone());
            match (signed, frontier) {
                (Some(signed), Some(f))
                    if signed.size == cp.size && size <= head && f.root() == signed.root =>
                {
                    state.frontier = f;
                    state.last = Some(SignedCheckpoint {
                        size: cp.size,
                        root: signed.root,
                        note: cp.note,
                    });
                }
                _ => tracing::warn!(
                    size = cp.size,
                    "audit log: the last stored checkpoint does not verify with this log's key; rebuilding the tree from the records (run `mandate audit verify`)"
                ),
            }
        }
        state.catch_up(backend, head)?;
        Ok(state)
    }

    /// Brings the frontier to `head` (another writer may have appended).
    fn catch_up(&mut self, backend: &mut dyn Backend, head: i64) -> Result<(), AuditError> {
        let size = i64::try_from(self.frontier.size()).unwrap_or(i64::MAX);
        if size > head {
            // The store is behind us: rebuild from scratch.
            self.frontier = Frontier::default();
            return self.catch_up(backend, head);
        }
        if size < head {
            for leaf in backend.leaves_after(size)? {
                self.frontier.push(leaf);
            }
        }
        Ok(())
    }
}

/// The writer loop: block for one job, drain up to `max_batch` queued jobs,
/// write them in one transaction, commit (fsync), then answer every waiter.
/// Returns when every sender is gone and the queue is empty, after a last
/// checkpoint of whatever it appended.
pub(crate) fn run(
    mut backend: Box<dyn Backend>,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    max_batch: usize,
    mut tree: Option<TreeState>,
) {
    let mut batch: Vec<Append> = Vec::with_capacity(max_batch);
    let mut checkpoints = Checkpoints::default();
    let mut last_batch_len = 0usize;
    // Waits on the queue with a deadline (a blocking receive has none).
    // Without it, deferrable records are simply committed at once.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(
            |e| tracing::warn!(error = %e, "audit writer: no timer; outcomes are not deferred"),
        )
        .ok();
    while let Some(first) = rx.blocking_recv() {
        take(first, &mut batch, &mut checkpoints);
        drain(&mut rx, &mut batch, &mut checkpoints, max_batch);
        // Only deferrable records so far: give the next decision a few
        // milliseconds to arrive and share this commit. The wait ends the
        // moment an urgent record arrives, so it never delays one.
        if let Some(timer) = &timer
            && !batch.is_empty()
            && batch.iter().all(|j| j.deferrable)
        {
            let deadline = tokio::time::Instant::now() + DEFER_MAX;
            while batch.len() < max_batch {
                // (The timeout is made inside the runtime it needs.)
                let next =
                    timer.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await });
                let Ok(Some(job)) = next else {
                    break; // deadline passed, or every sender is gone
                };
                let before = batch.len();
                take(job, &mut batch, &mut checkpoints);
                drain(&mut rx, &mut batch, &mut checkpoints, max_batch);
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
            drain(&mut rx, &mut batch, &mut checkpoints, max_batch);
        }
        last_batch_len = batch.iter().filter(|j| !j.deferrable).count();
        let wanted = std::mem::take(&mut checkpoints);
        shared.in_batch.store(batch.len() as u64, Ordering::Relaxed);
        // (commit_and_answer sets `in_batch` back to 0 before it replies.)
        commit_and_answer(backend.as_mut(), &shared, &mut batch, tree.as_mut(), wanted);
    }
    // Closing: sign what was appended since the last checkpoint.
    if tree.as_ref().is_some_and(|t| {
        t.frontier.size() > 0 && t.last.as_ref().map(|c| c.size) != Some(t.frontier.size())
    }) {
        commit_and_answer(
            backend.as_mut(),
            &shared,
            &mut batch,
            tree.as_mut(),
            Checkpoints {
                wanted: true,
                waiters: Vec::new(),
            },
        );
    }
}

/// Writes `batch` (and a checkpoint, if wanted), then answers every waiter.
fn commit_and_answer(
    backend: &mut dyn Backend,
    shared: &Shared,
    batch: &mut Vec<Append>,
    tree: Option<&mut TreeState>,
    checkpoints: Checkpoints,
) {
    if batch.is_empty() && !checkpoints.wanted {
        return;
    }
    let no_key = tree.is_none() && checkpoints.wanted;
    let started = std::time::Instant::now();
    let result = match tree {
        Some(tree) => write_batch(backend, batch, Some(tree), checkpoints.wanted),
        None if checkpoints.wanted && batch.is_empty() => Err(AuditError::NoCheckpointKey),
        None => write_batch(backend, batch, None, false),
    };
    // Written or failed, the batch is no longer waiting: a caller that has
    // its answer must not see its record still counted in the queue.
    shared.in_batch.store(0, Ordering::Relaxed);
    match result {
        Ok((appended, checkpoint)) => {
            // Publish before replying, so a caller that sees Ok also
            // sees the counters and health that include its record.
            if !appended.is_empty() {
                shared.on_commit.observe(started.elapsed());
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared
                    .appended
                    .fetch_add(appended.len() as u64, Ordering::Relaxed);
                if shared.failure().is_some() {
                    tracing::info!("audit log writes succeed again");
                }
                shared.set_failure(None);
            }
            for (job, appended) in batch.drain(..).zip(appended) {
                // A waiter that gave up is fine: its record is durable.
                let _ = job.reply.send(Ok(appended));
            }
            for waiter in checkpoints.waiters {
                let answer = if no_key {
                    Err(AuditError::NoCheckpointKey)
                } else {
                    Ok(checkpoint.clone())
                };
                let _ = waiter.send(answer);
            }
        }
        Err(e) => {
            if !batch.is_empty() {
                tracing::error!(error = %e, records = batch.len(), "audit batch failed; none acknowledged");
                shared.set_failure(Some(e.to_string()));
            }
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(e.clone()));
            }
            for waiter in checkpoints.waiters {
                let _ = waiter.send(Err(e.clone()));
            }
        }
    }
}

/// Appends `batch` in one transaction and commits it; with `checkpoint`,
/// also signs and stores a checkpoint of the tree after the batch (if the
/// tree grew since the last one) in the same transaction. Commit returns
/// only after the fsync. On any error the transaction is rolled back, the
/// tree state is left as it was, and nothing counts.
fn write_batch(
    backend: &mut dyn Backend,
    batch: &[Append],
    tree: Option<&mut TreeState>,
    checkpoint: bool,
) -> Result<(Vec<Landed>, Option<SignedCheckpoint>), AuditError> {
    // A failed BEGIN may leave a transaction open (PostgreSQL: the LOCK
    // after it timed out), so it is rolled back too.
    let result = backend
        .begin()
        .and_then(|()| write_in_transaction(backend, batch, tree, checkpoint));
    if result.is_err() {
        backend.rollback();
    }
    result
}

fn write_in_transaction(
    backend: &mut dyn Backend,
    batch: &[Append],
    tree: Option<&mut TreeState>,
    checkpoint: bool,
) -> Result<(Vec<Landed>, Option<SignedCheckpoint>), AuditError> {
    // INVARIANT: the head is read inside the write transaction, so the chain
    // always extends what is committed, including after a failed batch and
    // with other writers on the same store.
    let (mut seq, mut prev) = backend.head()?;
    let mut hashes = Vec::with_capacity(batch.len());
    let mut seqs = Vec::with_capacity(batch.len());
    for job in batch {
        seq = seq
            .checked_add(1)
            .ok_or_else(|| AuditError::storage(Op::Write, "sequence numbers exhausted"))?;
        let hash = record_hash(&prev, &job.row.body);
        seqs.push(seq);
        hashes.push((prev, hash.clone()));
        prev = hash;
    }
    // The tree as it will be after this batch: first caught up with the
    // committed rows (another writer may have added some), then extended.
    let mut next_tree = match tree.as_deref() {
        Some(tree) => {
            let mut state = TreeState {
                signer: tree.signer.clone(),
                clock: tree.clock.clone(),
                frontier: tree.frontier.clone(),
                last: tree.last.clone(),
            };
            let head_before = seqs.first().map_or(seq, |first| first - 1);
            state.catch_up(backend, head_before)?;
            for job in batch {
                state.frontier.push(job.row.leaf);
            }
            Some(state)
        }
        None => None,
    };
    let rows: Vec<NewRow<'_>> = batch
        .iter()
        .zip(&seqs)
        .zip(&hashes)
        .map(|((job, seq), (prev, hash))| NewRow {
            seq: *seq,
            prev_hash: prev,
            hash,
            row: &job.row,
        })
        .collect();
    if !rows.is_empty() {
        backend.insert(&rows)?;
    }
    let mut signed = None;
    if let Some(state) = next_tree.as_mut() {
        let size = state.frontier.size();
        let grew = state.last.as_ref().map(|c| c.size) != Some(size);
        if checkpoint && size > 0 && grew {
            let root = state.frontier.root();
            let note = state.signer.sign_checkpoint(size, &root);
            backend.insert_checkpoint(&CheckpointRow {
                size,
                time_ms: state.clock.now_ms(),
                root,
                note: note.clone(),
                frontier: state.frontier.nodes().to_vec(),
            })?;
            state.last = Some(SignedCheckpoint { size, root, note });
        }
        if checkpoint {
            signed = state.last.clone();
        }
    }
    backend.commit()?;
    if let (Some(tree), Some(next)) = (tree, next_tree) {
        *tree = next;
    }
    let appended = seqs
        .into_iter()
        .zip(hashes)
        .map(|(seq, (_, hash))| Landed { seq, hash })
        .collect();
    Ok((appended, signed))
}
