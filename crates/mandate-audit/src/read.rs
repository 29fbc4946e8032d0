//! Read-only access: queries, proofs and verification. Each call opens its
//! own read-only connection, so the CLI can use these while `serve` writes.

use crate::backend::{CheckpointRow, Filter, RawRow, Reader, Store, blocking};
use crate::chain::{GENESIS_HASH, record_hash};
use crate::error::AuditError;
use crate::merkle::{Frontier, Hash, Tree, leaf_hash};
use crate::note::{Checkpoint, NoteVerifier};
use crate::open::open_reader;
use crate::schema::{COLUMNS, column_values};
use mandate_core::AuditRecord;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

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
    /// The stored canonical JSON, exactly as hashed (never re-serialised).
    pub body: String,
}

impl StoredRecord {
    fn parse(raw: RawRow) -> Result<Self, AuditError> {
        let record = serde_json::from_str(&raw.body).map_err(|_| AuditError::corrupt(raw.seq))?;
        Ok(Self {
            seq: raw.seq,
            prev_hash: raw.prev_hash,
            hash: raw.hash,
            record,
            body: raw.body,
        })
    }
}

fn query(store: Store, filter: Filter) -> Result<Vec<StoredRecord>, AuditError> {
    blocking(move || {
        let mut reader = open_reader(&store)?;
        reader
            .rows(&filter)?
            .into_iter()
            .map(StoredRecord::parse)
            .collect()
    })
}

/// All records in seq order, or only those of one session.
pub fn read_records(
    store: impl Into<Store>,
    session: Option<&str>,
) -> Result<Vec<StoredRecord>, AuditError> {
    let filter = session.map_or(Filter::All, |s| Filter::Session(s.to_owned()));
    query(store.into(), filter)
}

/// The records of one tool call (decision and outcome), in seq order.
pub fn read_by_correlation(
    store: impl Into<Store>,
    correlation_id: &str,
) -> Result<Vec<StoredRecord>, AuditError> {
    query(store.into(), Filter::Correlation(correlation_id.to_owned()))
}

/// The records of decision `decision_id` (`dec_…`, as agents are told it):
/// the decision record and its outcome, in seq order. A scan of the log
/// (the column is not indexed, to keep appends cheap): meant for an
/// investigator's lookup, not for a hot path.
pub fn read_by_decision(
    store: impl Into<Store>,
    decision_id: &str,
) -> Result<Vec<StoredRecord>, AuditError> {
    query(store.into(), Filter::Decision(decision_id.to_owned()))
}

/// The decision and outcome records written at or after `since_ms` (Unix
/// ms), in seq order: what the gateway replays at start to restore session
/// and task usage counters and session taint.
pub fn read_calls_since(
    store: impl Into<Store>,
    since_ms: i64,
) -> Result<Vec<StoredRecord>, AuditError> {
    query(store.into(), Filter::CallsSince(since_ms))
}

/// The records with `from_ms <= time_ms < to_ms`, in seq order.
pub fn read_time_range(
    store: impl Into<Store>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<StoredRecord>, AuditError> {
    query(
        store.into(),
        Filter::Time {
            from: from_ms,
            to: to_ms,
        },
    )
}

/// Follows one session's calls as any replica appends them, over one read
/// connection kept open (reopened after an error): how a replica learns
/// what a session did elsewhere (its calls, and the taint of what it read)
/// before deciding its next call.
pub struct SessionTail {
    store: Store,
    reader: std::sync::Mutex<Option<Box<dyn Reader + Send>>>,
}

impl fmt::Debug for SessionTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTail")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl SessionTail {
    /// Follows `store`; connects on first use.
    pub fn new(store: impl Into<Store>) -> Self {
        Self {
            store: store.into(),
            reader: std::sync::Mutex::new(None),
        }
    }

    /// The decision and outcome records of `session` (as records name it)
    /// after sequence number `after`, in seq order. Blocks: call it from a
    /// blocking thread.
    pub fn after(&self, session: &str, after: i64) -> Result<Vec<StoredRecord>, AuditError> {
        let mut slot = self.reader.lock().map_err(|_| {
            AuditError::storage(crate::error::Op::Read, "the tail's lock is poisoned")
        })?;
        let reader = match slot.as_mut() {
            Some(r) => r,
            None => slot.insert(open_reader(&self.store)?),
        };
        let filter = Filter::SessionCallsAfter {
            session: session.to_owned(),
            after,
        };
        match reader.rows(&filter) {
            Ok(rows) => rows.into_iter().map(StoredRecord::parse).collect(),
            Err(e) => {
                // A broken connection is not reused.
                *slot = None;
                Err(e)
            }
        }
    }
}

impl Drop for SessionTail {
    /// A PostgreSQL reader closes through a small runtime of its own, which
    /// must not run on an async worker (where the gateway owning the tail
    /// is dropped at shutdown): it is closed on a thread of its own.
    fn drop(&mut self) {
        let reader = match self.reader.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(reader) = reader {
            let _ = std::thread::Builder::new()
                .name("audit-tail-close".into())
                .spawn(move || drop(reader));
        }
    }
}

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCheckpoint {
    /// Records covered.
    pub size: u64,
    /// When it was signed (Unix ms).
    pub time_ms: i64,
    /// The tree hash (as stored; the note is what is signed).
    pub root: Hash,
    /// The signed note.
    pub note: String,
}

impl From<CheckpointRow> for StoredCheckpoint {
    fn from(c: CheckpointRow) -> Self {
        Self {
            size: c.size,
            time_ms: c.time_ms,
            root: c.root,
            note: c.note,
        }
    }
}

/// Every stored checkpoint, by size.
pub fn read_checkpoints(store: impl Into<Store>) -> Result<Vec<StoredCheckpoint>, AuditError> {
    let store = store.into();
    blocking(move || {
        let mut reader = open_reader(&store)?;
        Ok(reader.checkpoints()?.into_iter().map(Into::into).collect())
    })
}

/// The Merkle tree of a whole log, read once, for proofs.
#[derive(Debug, Clone)]
pub struct LogTree {
    tree: Tree,
}

impl LogTree {
    /// Reads every record's leaf hash (in seq order).
    pub fn load(store: impl Into<Store>) -> Result<Self, AuditError> {
        let store = store.into();
        blocking(move || {
            let mut reader = open_reader(&store)?;
            let mut leaves = Vec::new();
            reader.scan(&mut |row| {
                leaves.push(leaf_hash(row.body.as_bytes()));
                Ok(())
            })?;
            Ok(Self {
                tree: Tree::new(leaves),
            })
        })
    }

    /// Records in the log.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The tree hash of the first `size` records.
    pub fn root(&self, size: u64) -> Result<Hash, crate::merkle::ProofError> {
        self.tree.root_at(size)
    }

    /// The leaf hash of record `seq`.
    pub fn leaf(&self, seq: i64) -> Option<Hash> {
        self.tree.leaf(u64::try_from(seq).ok()?.checked_sub(1)?)
    }

    /// Inclusion proof of record `seq` (leaf `seq - 1`) in the tree of
    /// `size` records.
    pub fn inclusion_proof(
        &self,
        seq: i64,
        size: u64,
    ) -> Result<Vec<Hash>, crate::merkle::ProofError> {
        let index = u64::try_from(seq.saturating_sub(1)).unwrap_or(u64::MAX);
        self.tree.inclusion_proof(index, size)
    }

    /// Consistency proof from the tree of `old` records to that of `new`.
    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, crate::merkle::ProofError> {
        self.tree.consistency_proof(old, new)
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Rows examined.
    pub records: u64,
    /// The last row's hash.
    pub head: Option<String>,
    /// The Merkle tree hash over all rows, as recomputed.
    pub root: Hash,
    /// Checkpoints checked against the recomputed tree.
    pub checkpoints: u64,
    /// Whether their signatures were checked (a public key was given).
    pub signatures_checked: bool,
    /// Size of the largest checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint: nothing outside the store vouches
    /// for them yet (a forged tail there is invisible until the next one).
    pub unanchored: u64,
    /// Everything wrong, in seq order. Empty means the log is intact.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems with records (not with checkpoints).
    pub fn record_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| !p.kind.is_checkpoint())
    }
}

/// One defect found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The record concerned (for a checkpoint, its size).
    pub seq: i64,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What [`verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The record's content does not match its hash: it was edited.
    Edited,
    /// Records were deleted: `count` records from `seq` on are absent
    /// (`None`: the seqs were renumbered, so how many is unknown; they
    /// stood right before `seq`).
    Deleted {
        /// How many consecutive seqs are absent, when the gap shows it.
        count: Option<i64>,
    },
    /// A record that is not part of the chain: its neighbours link to each
    /// other (or to others), and nothing links to it.
    Inserted,
    /// The record is part of the chain but stored out of order: the chain
    /// puts it right after record `after` (0: first).
    Reordered {
        /// The seq the chain says precedes it.
        after: i64,
    },
    /// A seq below 1.
    InvalidSeq,
    /// `body` is not a valid record.
    UnreadableBody,
    /// A query column disagrees with `body`: the column was edited.
    ColumnMismatch {
        /// The column's name.
        column: String,
    },
    /// Records `seq ..= seq + count - 1` were removed from the end, though
    /// a checkpoint covers them.
    Truncated {
        /// How many.
        count: i64,
    },
    /// The checkpoint of size `seq` does not match the records.
    CheckpointMismatch,
    /// The checkpoint of size `seq` is not validly signed by the log's key.
    CheckpointSignature {
        /// Why.
        reason: String,
    },
}

impl ProblemKind {
    /// Whether this is about a checkpoint rather than a record.
    pub fn is_checkpoint(&self) -> bool {
        matches!(
            self,
            Self::CheckpointMismatch | Self::CheckpointSignature { .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.kind {
            ProblemKind::Edited => write!(
                f,
                "record {seq} was edited: its content does not match its hash"
            ),
            ProblemKind::Deleted { count: Some(1) } => {
                write!(f, "record {seq} was deleted")
            }
            ProblemKind::Deleted { count: Some(n) } => write!(
                f,
                "records {seq}..{} were deleted ({n} records)",
                seq.saturating_add(*n).saturating_sub(1)
            ),
            ProblemKind::Deleted { count: None } => write!(
                f,
                "a record before record {seq} was deleted (the log was renumbered), \
                 or record {} was rewritten with a new hash",
                seq.saturating_sub(1)
            ),
            ProblemKind::Inserted => {
                write!(f, "record {seq} was inserted: it is not part of the chain")
            }
            ProblemKind::Reordered { after: 0 } => {
                write!(f, "record {seq} was reordered: the chain places it first")
            }
            ProblemKind::Reordered { after } => write!(
                f,
                "record {seq} was reordered: the chain places it right after record {after}"
            ),
            ProblemKind::InvalidSeq => write!(f, "record {seq}: invalid sequence number"),
            ProblemKind::UnreadableBody => write!(f, "record {seq}: body is not a valid record"),
            ProblemKind::ColumnMismatch { column } => write!(
                f,
                "record {seq} was edited: column {column} disagrees with the hashed body"
            ),
            ProblemKind::Truncated { count } => write!(
                f,
                "records {seq}..{} were deleted from the end ({count} records a checkpoint covers)",
                seq.saturating_add(*count).saturating_sub(1)
            ),
            ProblemKind::CheckpointMismatch => write!(
                f,
                "checkpoint {seq}: its signed tree hash does not match records 1..{seq}"
            ),
            ProblemKind::CheckpointSignature { reason } => {
                write!(f, "checkpoint {seq}: {reason}")
            }
        }
    }
}

/// Recomputes the hash chain and the Merkle tree from the store, checks
/// every checkpoint (and, given the log's public key, its signature), and
/// reports every defect, naming the record edited, deleted, inserted or
/// reordered.
///
/// For each row in seq order: seq must follow the previous one (else
/// [`ProblemKind::Deleted`]); `hash` must be [`crate::record_hash`] of the
/// row's own `prev_hash` and `body` (else [`ProblemKind::Edited`]); query
/// columns must match `body`. When a `prev_hash` does not link to the row
/// before it, the chain is rebuilt by following the links from genesis,
/// which tells an inserted row (nothing links to it), a moved row (the
/// chain places it elsewhere) and a deletion hidden by renumbering (a link
/// to a hash no row has) apart. Every checkpoint's tree hash must equal the
/// tree hash of the rows it covers, and rows a checkpoint covers must not
/// be missing from the end.
pub fn verify(
    store: impl Into<Store>,
    key: Option<&NoteVerifier>,
) -> Result<VerifyReport, AuditError> {
    let store = store.into();
    let key = key.cloned();
    blocking(move || verify_store(&store, key.as_ref()))
}

fn verify_store(store: &Store, key: Option<&NoteVerifier>) -> Result<VerifyReport, AuditError> {
    let mut reader = open_reader(store)?;
    let checkpoints = reader.checkpoints()?;
    let mut problems = Vec::new();
    let mut cps = checkpoints.iter().peekable();
    let mut frontier = Frontier::default();
    let mut records = 0u64;
    let mut expected_seq: i64 = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut broken_link = false;
    let mut checked = 0u64;
    reader.scan(&mut |row| {
        records = records.saturating_add(1);
        let after_gap = row.seq > expected_seq;
        if row.seq < 1 {
            problems.push(Problem {
                seq: row.seq,
                kind: ProblemKind::InvalidSeq,
            });
        } else if after_gap {
            problems.push(Problem {
                seq: expected_seq,
                kind: ProblemKind::Deleted {
                    count: Some(row.seq.saturating_sub(expected_seq)),
                },
            });
        }
        if row.prev_hash != prev_hash && !after_gap {
            broken_link = true;
        }
        check_row(&row, &mut problems);
        frontier.push(leaf_hash(row.body.as_bytes()));
        while let Some(cp) = cps.next_if(|cp| cp.size <= frontier.size()) {
            checked += 1;
            check_checkpoint(cp, frontier.size(), &frontier.root(), key, &mut problems);
        }
        expected_seq = row.seq.saturating_add(1);
        prev_hash = row.hash;
        Ok(())
    })?;
    let last_seq = expected_seq.saturating_sub(1);
    for cp in cps {
        let size = i64::try_from(cp.size).unwrap_or(i64::MAX);
        if size > last_seq && cp.size == checkpoints.last().map_or(0, |c| c.size) {
            problems.push(Problem {
                seq: last_seq.saturating_add(1),
                kind: ProblemKind::Truncated {
                    count: size.saturating_sub(last_seq),
                },
            });
        }
        if let Some(reason) = signature_problem(cp, key) {
            problems.push(Problem {
                seq: size,
                kind: ProblemKind::CheckpointSignature { reason },
            });
        }
    }
    if broken_link {
        let mut rows = Vec::new();
        reader.scan(&mut |row| {
            rows.push(Link::of(&row));
            Ok(())
        })?;
        problems.extend(classify_links(&rows));
    }
    problems.sort_by_key(|p| (p.kind.is_checkpoint(), p.seq));
    problems.dedup();
    let last_checkpoint = checkpoints.last().map(|c| c.size);
    Ok(VerifyReport {
        records,
        head: (records > 0).then_some(prev_hash),
        root: frontier.root(),
        checkpoints: checked,
        signatures_checked: key.is_some(),
        last_checkpoint,
        unanchored: records.saturating_sub(last_checkpoint.unwrap_or(0)),
        problems,
    })
}

/// Checks one row's own hash, body and query columns.
fn check_row(row: &RawRow, out: &mut Vec<Problem>) {
    let here = |kind| Problem { seq: row.seq, kind };
    if record_hash(&row.prev_hash, &row.body) != row.hash {
        out.push(here(ProblemKind::Edited));
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

/// Why a checkpoint's note does not verify (`None`: it does, or no key).
fn signature_problem(cp: &CheckpointRow, key: Option<&NoteVerifier>) -> Option<String> {
    let key = key?;
    match key.open_checkpoint(&cp.note) {
        Ok(signed) if signed.size == cp.size && signed.root == cp.root => None,
        Ok(_) => Some("the signed note and the stored size or root differ".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

/// Compares a checkpoint with the recomputed tree of its size.
fn check_checkpoint(
    cp: &CheckpointRow,
    size: u64,
    root: &Hash,
    key: Option<&NoteVerifier>,
    out: &mut Vec<Problem>,
) {
    let seq = i64::try_from(cp.size).unwrap_or(i64::MAX);
    if let Some(reason) = signature_problem(cp, key) {
        out.push(Problem {
            seq,
            kind: ProblemKind::CheckpointSignature { reason },
        });
    }
    // What the note says is what counts (the root column is a copy).
    let text = cp.note.split("\n\n").next().unwrap_or("");
    let claimed = Checkpoint::parse(&format!("{text}\n")).map(|c| (c.size, c.root));
    if cp.size != size || claimed != Ok((size, *root)) {
        out.push(Problem {
            seq,
            kind: ProblemKind::CheckpointMismatch,
        });
    }
}

/// A row's links, for rebuilding the chain.
struct Link {
    seq: i64,
    prev: Hash,
    hash: Hash,
}

impl Link {
    fn of(row: &RawRow) -> Self {
        // A malformed stored hash still needs a stable identity.
        let key = |s: &str| Hash::from_hex(s).unwrap_or_else(|| leaf_hash(s.as_bytes()));
        Self {
            seq: row.seq,
            prev: key(&row.prev_hash),
            hash: key(&row.hash),
        }
    }
}

/// Rebuilds the chain by following `prev_hash` links and names the rows
/// that were inserted, moved, or follow a hidden deletion.
fn classify_links(rows: &[Link]) -> Vec<Problem> {
    let genesis = Hash([0u8; 32]);
    let mut children: HashMap<Hash, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        children.entry(r.prev).or_default().push(i);
    }
    let known: HashMap<Hash, usize> = rows.iter().enumerate().map(|(i, r)| (r.hash, i)).collect();
    let has_child = |i: usize| rows.get(i).is_some_and(|r| children.contains_key(&r.hash));
    let mut visited = vec![false; rows.len()];
    let mut order: Vec<usize> = Vec::with_capacity(rows.len());
    let mut problems = Vec::new();

    // Follows links from `from`, preferring a successor that itself has a
    // successor (the genuine chain continues; a forged fork does not).
    let walk = |from: Hash, visited: &mut Vec<bool>, order: &mut Vec<usize>| {
        let mut cur = from;
        let mut len = 0usize;
        loop {
            let next = children.get(&cur).and_then(|c| {
                let open = c
                    .iter()
                    .copied()
                    .filter(|&i| !visited.get(i).copied().unwrap_or(true));
                let open: Vec<usize> = open.collect();
                open.iter()
                    .copied()
                    .find(|&i| has_child(i))
                    .or_else(|| open.first().copied())
            });
            let Some(i) = next else { break };
            if let Some(v) = visited.get_mut(i) {
                *v = true;
            }
            order.push(i);
            len += 1;
            cur = rows.get(i).map_or(genesis, |r| r.hash);
        }
        len
    };
    walk(genesis, &mut visited, &mut order);
    // Chains that start from a hash no row has: something before them was
    // deleted (or they were inserted as a unit).
    for i in 0..rows.len() {
        let Some(r) = rows.get(i) else { continue };
        if visited.get(i).copied().unwrap_or(true) || known.contains_key(&r.prev) {
            continue;
        }
        if let Some(v) = visited.get_mut(i) {
            *v = true;
        }
        order.push(i);
        let len = 1 + walk(r.hash, &mut visited, &mut order);
        let before = i.checked_sub(1).and_then(|j| rows.get(j));
        let after = rows.get(i + 1);
        let neighbours_linked = matches!((before, after), (Some(b), Some(a)) if a.prev == b.hash);
        let gap_before = before.is_some_and(|b| r.seq > b.seq.saturating_add(1))
            || (before.is_none() && r.seq > 1);
        if len == 1 && neighbours_linked {
            order.pop();
            problems.push(Problem {
                seq: r.seq,
                kind: ProblemKind::Inserted,
            });
        } else if !gap_before {
            problems.push(Problem {
                seq: r.seq,
                kind: ProblemKind::Deleted { count: None },
            });
        }
    }
    // Rows no walk reached hang off the chain: inserted.
    for (i, r) in rows.iter().enumerate() {
        if !visited.get(i).copied().unwrap_or(true) {
            problems.push(Problem {
                seq: r.seq,
                kind: ProblemKind::Inserted,
            });
        }
    }
    // Rows the chain visits out of seq order: the fewest moved rows are
    // those outside a longest increasing run of seqs.
    let seqs: Vec<i64> = order
        .iter()
        .filter_map(|&i| rows.get(i).map(|r| r.seq))
        .collect();
    let keep = longest_increasing(&seqs);
    for (pos, seq) in seqs.iter().enumerate() {
        if !keep.get(pos).copied().unwrap_or(true) {
            let after = pos
                .checked_sub(1)
                .and_then(|p| seqs.get(p))
                .copied()
                .unwrap_or(0);
            problems.push(Problem {
                seq: *seq,
                kind: ProblemKind::Reordered { after },
            });
        }
    }
    problems
}

/// Marks the members of one longest strictly increasing subsequence.
fn longest_increasing(values: &[i64]) -> Vec<bool> {
    // tails[k]: index of the smallest tail of an increasing run of length k+1.
    let mut tails: Vec<usize> = Vec::new();
    let mut parent: Vec<Option<usize>> = vec![None; values.len()];
    for (i, v) in values.iter().enumerate() {
        let pos = tails.partition_point(|&t| values.get(t).is_some_and(|tv| tv < v));
        if let Some(p) = parent.get_mut(i) {
            *p = pos.checked_sub(1).and_then(|k| tails.get(k)).copied();
        }
        if pos == tails.len() {
            tails.push(i);
        } else if let Some(t) = tails.get_mut(pos) {
            *t = i;
        }
    }
    let mut keep = vec![false; values.len()];
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        if let Some(k) = keep.get_mut(i) {
            *k = true;
        }
        cur = parent.get(i).copied().flatten();
    }
    keep
}
