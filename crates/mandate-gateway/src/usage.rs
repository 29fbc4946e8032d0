//! Usage and budgets: what each Mandate session and each task has done so
//! far (calls, per-tool counts, the last minute's calls, amounts, taint,
//! the values results introduced), which policies read as facts, and the
//! per-subject call slots. Owns [`Usage`]; the pipeline counts a permitted
//! call under the session's entry (`pipeline.rs`), `intent.rs` keeps the
//! session's values there.

use crate::Metrics;
use dashmap::DashMap;
use dashmap::mapref::one::{Ref, RefMut};
use mandate_policy::SessionFacts;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// How long per-session state is kept after the session's last token expired.
pub(crate) const SESSION_GRACE_SECS: u64 = 120;

/// How often usage of expired sessions and tasks is swept.
const USAGE_PRUNE_SECS: i64 = 60;

/// The usage maps and the call slots, owned by this module.
pub(crate) struct Usage {
    /// By the session's state key (its `sid`), never shared across
    /// sessions (F-04).
    sessions: DashMap<String, SessionState>,
    /// By issuer, user and task id.
    tasks: DashMap<String, TaskState>,
    /// Unix seconds after which usage of expired sessions and tasks is
    /// next pruned.
    next_prune: AtomicI64,
    /// Tool calls in flight per subject (bounded).
    slots: Arc<CallSlots>,
}

impl Usage {
    /// No usage yet; at most `max_calls_per_subject` calls in flight per
    /// subject (at least one).
    pub(crate) fn new(max_calls_per_subject: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            sessions: DashMap::new(),
            tasks: DashMap::new(),
            next_prune: AtomicI64::new(0),
            slots: Arc::new(CallSlots {
                inflight: DashMap::new(),
                max: max_calls_per_subject.max(1),
                metrics,
            }),
        }
    }

    /// The session's usage, created empty if new; the entry stays locked
    /// until the guard is dropped.
    pub(crate) fn session(&self, key: String) -> RefMut<'_, String, SessionState> {
        self.sessions.entry(key).or_default()
    }

    /// The session's usage, if any, for reading.
    pub(crate) fn session_view(&self, key: &str) -> Option<Ref<'_, String, SessionState>> {
        self.sessions.get(key)
    }

    /// The task's usage, created empty if new.
    pub(crate) fn task(&self, key: String) -> RefMut<'_, String, TaskState> {
        self.tasks.entry(key).or_default()
    }

    /// A slot for one more call of `subject`, unless it is at its cap.
    pub(crate) fn try_acquire(&self, subject: String) -> Option<CallSlot> {
        self.slots.try_acquire(subject)
    }

    /// Usage outlives its session or task only until every token of it
    /// has expired; pruned at most once a minute (a sweep visits every
    /// session, so it must not run on every call).
    pub(crate) fn prune(&self, now: i64) {
        let due = self.next_prune.load(Ordering::Relaxed);
        if now < due
            || self
                .next_prune
                .compare_exchange(
                    due,
                    now + USAGE_PRUNE_SECS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let cutoff = now.cast_unsigned().saturating_sub(SESSION_GRACE_SECS);
        self.sessions.retain(|_, s| s.exp > cutoff);
        self.tasks.retain(|_, t| t.exp > cutoff);
    }
}

/// Per-Mandate-session state (keyed by the token's `sid`), never shared
/// across sessions (F-04).
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) calls: u64,
    /// Latest expiry of any token seen for the session.
    pub(crate) exp: u64,
    pub(crate) taint: BTreeSet<String>,
    /// The tools whose untrusted, sensitive or suspicious results entered the
    /// session, in order (bounded), for the people asked to approve.
    pub(crate) sources: Vec<String>,
    /// Permitted calls per exposed tool name.
    pub(crate) per_tool: std::collections::HashMap<String, u64>,
    /// Unix seconds of the permitted calls of the last minute (bounded).
    pub(crate) recent: std::collections::VecDeque<i64>,
    /// The values results introduced, by provenance (`intent.rs`).
    pub(crate) values: Option<mandate_provenance::SessionValues>,
    /// The session's history predates this process (restored after a
    /// restart) or was written on another replica: what it read cannot be
    /// placed any more.
    pub(crate) values_lost: bool,
    /// The taint labels some durable outcome record already carries (with
    /// a shared log, a result adding any other label waits for its record).
    pub(crate) taint_recorded: BTreeSet<String>,
    /// The last audit sequence number applied from the log (restored, or
    /// caught up from other replicas).
    pub(crate) cursor: i64,
    /// The correlation ids of this replica's latest calls of the session,
    /// whose records it applied itself (only with a shared log; bounded,
    /// oldest first).
    pub(crate) own: std::collections::VecDeque<mandate_core::CorrelationId>,
}

/// Per-task usage (keyed by issuer, user and task id), for task budgets.
#[derive(Debug, Default)]
pub(crate) struct TaskState {
    pub(crate) calls: u64,
    /// Sum of the `amount` argument of permitted `financial` calls.
    pub(crate) amount: i64,
    /// Latest expiry of any token seen for the task.
    pub(crate) exp: u64,
}

/// Tool calls in flight per subject (issuer and `sub`), each bounded, so
/// one token cannot tie up the gateway with held or slow calls.
struct CallSlots {
    inflight: DashMap<String, usize>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// One call's slot, given back when dropped.
pub(crate) struct CallSlot {
    slots: Arc<CallSlots>,
    key: String,
}

impl CallSlots {
    /// A slot for one more call of `subject`, unless it is at its cap.
    fn try_acquire(self: &Arc<Self>, subject: String) -> Option<CallSlot> {
        let mut entry = self.inflight.entry(subject.clone()).or_insert(0);
        if *entry >= self.max {
            return None;
        }
        if *entry == 0 {
            self.metrics.busy_subjects.fetch_add(1, Ordering::Relaxed);
        }
        *entry += 1;
        drop(entry);
        Some(CallSlot {
            slots: self.clone(),
            key: subject,
        })
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let emptied = self
            .slots
            .inflight
            .remove_if_mut(&self.key, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            })
            .is_some();
        if emptied {
            self.slots
                .metrics
                .busy_subjects
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a decision saw of its session, kept (with replicas only) to check
/// it again once its record has its place in the shared log.
pub(crate) struct Basis {
    /// The facts the policies were given.
    pub(crate) facts: SessionFacts,
    /// The last record of the session applied when deciding.
    pub(crate) cursor: i64,
    /// When it was decided (Unix seconds).
    pub(crate) now: i64,
}
