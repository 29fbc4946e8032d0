//! [`ControlStore`]: the async interface every plane uses. Each operation
//! runs the blocking store (`store.rs`, over SQLite or PostgreSQL) on
//! tokio's blocking pool, so no caller blocks an async worker and none
//! needs `spawn_blocking` of its own. The per-call checks
//! ([`ControlStore::check`], [`ControlStore::ceiling`]) read in-memory
//! indexes and never wait.

use crate::approvals::{ApprovalRequest, ApprovalStatus, NewApproval};
use crate::changes::{Change, ChangeKind};
use crate::db::Location;
use crate::ephemeral::{Entry, Kind, OnFull};
use crate::error::ControlError;
use crate::intents::{Consumed, GrantStatus, IntentKey, TaskIntent};
use crate::revocations::{Revocation, RevocationKind};
use crate::sessions::McpSession;
use crate::signal::{Listener, Signals, Topic};
use crate::store::{Store, ToolPin};
use crate::tasks::{Task, TaskStatus};
use mandate_core::{Caller, Clock, Scope};
use mandate_intent::Intent;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The control store. `Send + Sync`; share it in an `Arc`.
pub struct ControlStore {
    inner: Arc<Store>,
    /// Whether other processes share the database (PostgreSQL).
    shared: bool,
    /// When the in-memory indexes were last read from a shared database
    /// (Unix ms).
    refreshed_ms: Arc<AtomicI64>,
    /// How often a shared store is re-read (and held calls look again).
    poll: Duration,
    /// Notifications from other replicas (and this one), per topic.
    signals: Arc<Signals>,
    /// The thread listening for them; stops with the store.
    _listener: Option<Listener>,
}

/// The default of [`ControlStore::with_poll`].
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);
/// A shared store older than this many polls (and at least
/// [`MIN_STALE`]) is [stale](ControlStore::stale).
const STALE_POLLS: u32 = 10;
/// The shortest staleness limit.
const MIN_STALE: Duration = Duration::from_secs(5);

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Runs `f` on the store, on the blocking pool.
macro_rules! blocking {
    ($self:ident, |$s:ident| $body:expr) => {{
        let inner = $self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let $s: &Store = &inner;
            $body
        })
        .await
        .map_err(|_| ControlError::Storage("the control store's worker stopped".into()))?
    }};
}

impl ControlStore {
    /// Opens (creating if needed) the SQLite store at `path`. Blocks
    /// briefly: call it at start, or use [`Self::open_at`].
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        Ok(Self::wrap(
            Store::open_at(&Location::Sqlite(path.to_owned()))?,
            false,
        ))
    }

    /// Opens (creating tables if needed) the store at `location`.
    pub async fn open_at(location: Location) -> Result<Self, ControlError> {
        let shared = location.is_shared();
        let store = tokio::task::spawn_blocking(move || Store::open_at(&location))
            .await
            .map_err(|_| ControlError::Storage("the control store's worker stopped".into()))??;
        let mut out = Self::wrap(store, shared);
        if let Some((config, channel)) = out.inner.listen_target() {
            let listener = crate::signal::listen(config, channel, out.signals.clone())
                .map_err(|e| ControlError::Storage(format!("cannot start the listener: {e}")))?;
            out._listener = Some(listener);
        }
        Ok(out)
    }

    fn wrap(store: Store, shared: bool) -> Self {
        let now = store.clock.now_ms();
        Self {
            inner: Arc::new(store),
            shared,
            refreshed_ms: Arc::new(AtomicI64::new(now)),
            poll: DEFAULT_POLL,
            signals: Arc::new(Signals::default()),
            _listener: None,
        }
    }

    /// How often a shared store re-reads its indexes and held calls look
    /// for a decision made on another replica (at least 10 ms).
    #[must_use]
    pub fn with_poll(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(10));
        self
    }

    /// For a shared store, how often to look again for what other
    /// replicas changed; `None` when only this process writes the store
    /// (every change here wakes its waiters directly).
    pub fn poll_every(&self) -> Option<Duration> {
        self.shared.then_some(self.poll)
    }

    /// Dates rows (and judges approval deadlines) by `clock` instead of
    /// the system's. Call it before the store is shared.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        if let Some(store) = Arc::get_mut(&mut self.inner) {
            store.clock = clock;
        }
        self
    }

    /// The clock this store dates rows by.
    pub fn clock(&self) -> &Clock {
        self.inner.clock()
    }

    /// Whether other processes (replicas) share this store.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Changes every time any replica (this one included) commits a write
    /// about `topic` to a shared store, as PostgreSQL notifies it. Never
    /// changes for a store only this process uses. A notification can be
    /// lost (while the listening connection is reopened): keep polling at
    /// [`Self::poll_every`] as well.
    pub fn signal(&self, topic: Topic) -> tokio::sync::watch::Receiver<u64> {
        self.signals.subscribe(topic)
    }

    /// For a shared store: whether notifications from other replicas are
    /// being received now (otherwise only the polls see their changes).
    pub fn listening(&self) -> bool {
        self.signals.listening()
    }

    // ----- freshness -----------------------------------------------------

    /// Re-reads the in-memory indexes (revocations, ceilings) from the
    /// database: what another replica changed becomes visible here.
    pub async fn refresh(&self) -> Result<(), ControlError> {
        blocking!(self, |s| s.refresh())?;
        self.refreshed_ms
            .store(self.inner.clock.now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// For a shared store: how long ago the indexes were last read, when
    /// that is more than ten polls (at least 5 s): a revocation made on
    /// another replica since might not be seen here, so callers deny.
    /// `None` when fresh, and always for a store only this process writes.
    pub fn stale(&self) -> Option<Duration> {
        if !self.shared {
            return None;
        }
        let limit = (self.poll * STALE_POLLS).max(MIN_STALE);
        let age_ms = self.inner.clock.now_ms() - self.refreshed_ms.load(Ordering::Relaxed);
        let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        (age > limit).then_some(age)
    }

    /// For a shared store: re-reads the indexes whenever a replica
    /// notifies a revocation or a change, and every poll regardless, until
    /// the store is dropped or the task aborted; a failed read is logged
    /// and retried (and the store turns [stale](Self::stale)).
    pub fn spawn_refresh(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.shared {
            return None;
        }
        let every = self.poll;
        let mut revocations = self.signal(Topic::Revocations);
        let mut changes = self.signal(Topic::Changes);
        let store = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    Ok(()) = revocations.changed() => {}
                    Ok(()) = changes.changed() => {}
                }
                let Some(store) = store.upgrade() else { break };
                if let Err(e) = store.refresh().await {
                    tracing::warn!(error = %e, "control store: could not re-read revocations and ceilings");
                }
            }
        }))
    }

    // ----- leases ----------------------------------------------------------

    /// Takes or renews lease `name` (a role one replica plays at a time,
    /// such as signing audit checkpoints) for `holder` for `ttl`; whether
    /// `holder` holds it now. Another holder's lease passes only once it
    /// has expired, so a holder that dies is replaced within `ttl`.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, ControlError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        blocking!(self, |s| s.lease(&name, &holder, ttl_ms))
    }

    /// Gives lease `name` up if `holder` holds it (at a clean stop, so
    /// another replica need not wait for it to expire).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), ControlError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        blocking!(self, |s| s.release_lease(&name, &holder))
    }

    // ----- MCP transport sessions ---------------------------------------

    /// Stores transport session `s` so any replica can carry it on; keeps
    /// the subject's newest `max_per_subject` stored sessions.
    pub async fn open_mcp_session(
        &self,
        s: McpSession,
        max_per_subject: usize,
    ) -> Result<(), ControlError> {
        blocking!(self, |st| st.open_mcp_session(&s, max_per_subject))
    }

    /// Transport session `id`, if stored.
    pub async fn mcp_session(&self, id: &str) -> Result<Option<McpSession>, ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.mcp_session(&id))
    }

    /// Raises session `id`'s expiry to `exp` (Unix seconds).
    pub async fn touch_mcp_session(&self, id: &str, exp: i64) -> Result<(), ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.touch_mcp_session(&id, exp))
    }

    /// Forgets session `id`.
    pub async fn close_mcp_session(&self, id: &str) -> Result<(), ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.close_mcp_session(&id))
    }

    /// Forgets sessions whose tokens all expired before `before` (Unix
    /// seconds), then the oldest beyond `max_total`; how many went.
    pub async fn prune_mcp_sessions(
        &self,
        before: i64,
        max_total: usize,
    ) -> Result<u64, ControlError> {
        blocking!(self, |s| s.prune_mcp_sessions(before, max_total))
    }

    // ----- short-lived shared state (ephemeral.rs) -----------------------

    /// Writes `value` under (`kind`, `key`) until `expires_ms` (Unix ms).
    /// `Ok(false)`: the key is new, `max` rows of the kind are live, and
    /// `on_full` refuses.
    pub async fn put_ephemeral(
        &self,
        kind: Kind,
        key: &str,
        value: String,
        expires_ms: i64,
        max: usize,
        on_full: OnFull,
    ) -> Result<bool, ControlError> {
        let key = key.to_owned();
        blocking!(self, |s| s
            .put_ephemeral(kind, &key, &value, expires_ms, max, on_full))
    }

    /// Counts one more under (`kind`, `key`); the new count, or `None` if
    /// the key is new and `max` rows of the kind are live.
    pub async fn count_up_ephemeral(
        &self,
        kind: Kind,
        key: &str,
        expires_ms: i64,
        max: usize,
    ) -> Result<Option<i64>, ControlError> {
        let key = key.to_owned();
        blocking!(self, |s| s.count_up_ephemeral(kind, &key, expires_ms, max))
    }

    /// Replaces a live row's value and expiry; `false` if it is gone.
    pub async fn update_ephemeral(
        &self,
        kind: Kind,
        key: &str,
        value: String,
        expires_ms: i64,
    ) -> Result<bool, ControlError> {
        let key = key.to_owned();
        blocking!(self, |s| s.update_ephemeral(kind, &key, &value, expires_ms))
    }

    /// The live row under (`kind`, `key`).
    pub async fn ephemeral(&self, kind: Kind, key: &str) -> Result<Option<Entry>, ControlError> {
        let key = key.to_owned();
        blocking!(self, |s| s.ephemeral(kind, &key))
    }

    /// Removes and returns the live row under (`kind`, `key`): of several
    /// replicas taking one key, one gets it.
    pub async fn take_ephemeral(
        &self,
        kind: Kind,
        key: &str,
    ) -> Result<Option<Entry>, ControlError> {
        let key = key.to_owned();
        blocking!(self, |s| s.take_ephemeral(kind, &key))
    }

    /// Removes the row under (`kind`, `key`), if any.
    pub async fn drop_ephemeral(&self, kind: Kind, key: &str) -> Result<(), ControlError> {
        let key = key.to_owned();
        blocking!(self, |s| s.drop_ephemeral(kind, &key))
    }

    /// How many rows of `kind` are live.
    pub async fn count_ephemeral(&self, kind: Kind) -> Result<u64, ControlError> {
        blocking!(self, |s| s.count_ephemeral(kind))
    }

    // ----- kill switches -------------------------------------------------

    /// The active revocation covering `p`, if any. In memory: no I/O.
    pub fn check(&self, p: &Caller<'_>) -> Option<Revocation> {
        self.inner.check(p)
    }

    /// Revokes `value` of `kind`. Revoking what is already revoked returns
    /// the existing revocation unchanged.
    pub async fn revoke(
        &self,
        kind: RevocationKind,
        value: &str,
        reason: &str,
        by: &str,
    ) -> Result<Revocation, ControlError> {
        let (value, reason, by) = (value.to_owned(), reason.to_owned(), by.to_owned());
        blocking!(self, |s| s.revoke(kind, &value, &reason, &by))
    }

    /// Lifts revocation `id`.
    pub async fn lift(&self, id: i64, by: &str) -> Result<Revocation, ControlError> {
        let by = by.to_owned();
        blocking!(self, |s| s.lift(id, &by))
    }

    /// One revocation.
    pub async fn revocation(&self, id: i64) -> Result<Revocation, ControlError> {
        blocking!(self, |s| s.revocation(id))
    }

    /// Revocations, newest first; lifted ones only if `include_lifted`.
    pub async fn revocations(&self, include_lifted: bool) -> Result<Vec<Revocation>, ControlError> {
        blocking!(self, |s| s.revocations(include_lifted))
    }

    // ----- change gate ---------------------------------------------------

    /// The scope ceiling in force for `agent`, if any. In memory.
    pub fn ceiling(&self, agent: &str) -> Option<Scope> {
        self.inner.ceiling(agent)
    }

    /// Whether any agent has a ceiling (lets callers skip the lookup).
    pub fn has_ceilings(&self) -> bool {
        self.inner.has_ceilings()
    }

    /// Records a proposal. Validation of the payload (policy set compiles,
    /// scope parses) is the caller's job.
    pub async fn propose(
        &self,
        kind: ChangeKind,
        target: &str,
        payload: serde_json::Value,
        payload_hash: &str,
        summary: &str,
        by: &str,
    ) -> Result<Change, ControlError> {
        let (target, hash, summary, by) = (
            target.to_owned(),
            payload_hash.to_owned(),
            summary.to_owned(),
            by.to_owned(),
        );
        blocking!(self, |s| s
            .propose(kind, &target, &payload, &hash, &summary, &by))
    }

    /// Approves (or, with `approve = false`, rejects) a proposal. The
    /// reviewer must not be the proposer: that is the point of the gate.
    pub async fn review(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
    ) -> Result<Change, ControlError> {
        let (id, by, comment) = (id.to_owned(), by.to_owned(), comment.map(str::to_owned));
        blocking!(self, |s| s.review(&id, approve, &by, comment.as_deref()))
    }

    /// Puts an approved change in force. For a policy set, the caller
    /// must have installed and loaded the files first (and checked their
    /// hash equals [`Change::payload_hash`]); this records it as active.
    pub async fn activate(&self, id: &str, by: &str) -> Result<Change, ControlError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        blocking!(self, |s| s.activate(&id, &by))
    }

    /// Records `payload` as the change in force for (`kind`, `target`)
    /// without review, only when nothing is in force for it yet: the
    /// first policy set of a new installation comes from its config.
    /// Returns `None` (and changes nothing) if something is already in force.
    pub async fn bootstrap(
        &self,
        kind: ChangeKind,
        target: &str,
        payload: serde_json::Value,
        payload_hash: &str,
        summary: &str,
        by: &str,
    ) -> Result<Option<Change>, ControlError> {
        let (target, hash, summary, by) = (
            target.to_owned(),
            payload_hash.to_owned(),
            summary.to_owned(),
            by.to_owned(),
        );
        blocking!(self, |s| s
            .bootstrap(kind, &target, &payload, &hash, &summary, &by))
    }

    /// One change.
    pub async fn change(&self, id: &str) -> Result<Change, ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.change(&id))
    }

    /// Every change, newest first.
    pub async fn changes(&self) -> Result<Vec<Change>, ControlError> {
        blocking!(self, |s| s.changes())
    }

    /// The changes of `kind` currently in force (one per target).
    pub async fn active_changes(&self, kind: ChangeKind) -> Result<Vec<Change>, ControlError> {
        blocking!(self, |s| s.active_changes(kind))
    }

    // ----- approvals -----------------------------------------------------

    /// Records a held call as a pending approval request (durable).
    pub async fn create_approval(&self, new: NewApproval) -> Result<ApprovalRequest, ControlError> {
        blocking!(self, |s| s.create_approval(&new))
    }

    /// One approval request.
    pub async fn approval(&self, id: &str) -> Result<ApprovalRequest, ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.approval(&id))
    }

    /// Approval requests, newest first, optionally of one status.
    pub async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        limit: usize,
    ) -> Result<Vec<ApprovalRequest>, ControlError> {
        blocking!(self, |s| s.approvals(status, limit))
    }

    /// A person's decision. It binds to the argument hash the person was
    /// shown (`seen_args_hash`): if the request's differs, nothing is
    /// decided. Only a pending request before its deadline can be decided.
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
        seen_args_hash: &str,
    ) -> Result<ApprovalRequest, ControlError> {
        let (id, by, comment, seen) = (
            id.to_owned(),
            by.to_owned(),
            comment.map(str::to_owned),
            seen_args_hash.to_owned(),
        );
        blocking!(self, |s| s.decide_approval(
            &id,
            approve,
            &by,
            comment.as_deref(),
            &seen
        ))
    }

    /// Ends a pending request without a person's decision (`Expired`,
    /// `Withdrawn`). Returns whether it was still pending.
    pub async fn close_approval(
        &self,
        id: &str,
        status: ApprovalStatus,
    ) -> Result<bool, ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.close_approval(&id, status))
    }

    /// Uses an approval to release the held call with `args_hash`: only
    /// an approved request, only for its own arguments, only once.
    pub async fn release_approval(
        &self,
        id: &str,
        args_hash: &str,
    ) -> Result<ApprovalRequest, ControlError> {
        let (id, hash) = (id.to_owned(), args_hash.to_owned());
        blocking!(self, |s| s.release_approval(&id, &hash))
    }

    // ----- tool pins -----------------------------------------------------

    /// The pin of `tool`, if any.
    pub async fn tool_pin(&self, tool: &str) -> Result<Option<ToolPin>, ControlError> {
        let tool = tool.to_owned();
        blocking!(self, |s| s.tool_pin(&tool))
    }

    /// Every pin, by name.
    pub async fn tool_pins(&self) -> Result<Vec<ToolPin>, ControlError> {
        blocking!(self, |s| s.tool_pins())
    }

    /// Records `tool` as approved (pinned to `fingerprint`) or quarantined.
    pub async fn set_tool_pin(
        &self,
        tool: &str,
        fingerprint: &str,
        description: &str,
        approved: bool,
        reason: &str,
        by: &str,
    ) -> Result<ToolPin, ControlError> {
        let (tool, fp, description, reason, by) = (
            tool.to_owned(),
            fingerprint.to_owned(),
            description.to_owned(),
            reason.to_owned(),
            by.to_owned(),
        );
        blocking!(self, |s| s.set_tool_pin(
            &tool,
            &fp,
            &description,
            approved,
            &reason,
            &by
        ))
    }

    // ----- tasks ---------------------------------------------------------

    /// Starts task `id`. Starting an id that exists is a conflict.
    pub async fn start_task(
        &self,
        id: &str,
        template: &str,
        sub: &str,
        deadline_ms: i64,
        by: &str,
    ) -> Result<Task, ControlError> {
        let (id, template, sub, by) = (
            id.to_owned(),
            template.to_owned(),
            sub.to_owned(),
            by.to_owned(),
        );
        blocking!(self, |s| s.start_task(
            &id,
            &template,
            &sub,
            deadline_ms,
            &by
        ))
    }

    /// Task `id`, if it exists.
    pub async fn task(&self, id: &str) -> Result<Option<Task>, ControlError> {
        let id = id.to_owned();
        blocking!(self, |s| s.task(&id))
    }

    /// Tasks, newest first; ended ones only if `include_ended`.
    pub async fn tasks(&self, include_ended: bool) -> Result<Vec<Task>, ControlError> {
        blocking!(self, |s| s.tasks(include_ended))
    }

    /// Completes or cancels task `id` and revokes its tokens, in one
    /// transaction; the in-memory revocation index is swapped before this
    /// returns, so this process refuses the task's tokens on their next call.
    pub async fn end_task(
        &self,
        id: &str,
        status: TaskStatus,
        by: &str,
    ) -> Result<Task, ControlError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        blocking!(self, |s| s.end_task(&id, status, &by))
    }

    // ----- task intents --------------------------------------------------

    /// Records the intent `key`'s task requested, with each grant's status
    /// as policy decided it (see [`TaskIntent`]).
    pub async fn record_intent(
        &self,
        key: &IntentKey,
        intent: &Intent,
        statuses: &[GrantStatus],
        requested_by: &str,
        deadline_ms: i64,
    ) -> Result<TaskIntent, ControlError> {
        let (key, intent, statuses, by) = (
            key.clone(),
            intent.clone(),
            statuses.to_vec(),
            requested_by.to_owned(),
        );
        blocking!(self, |s| s.record_intent(
            &key,
            &intent,
            &statuses,
            &by,
            deadline_ms
        ))
    }

    /// The intent of `key`'s task, if one was recorded.
    pub async fn intent(&self, key: &IntentKey) -> Result<Option<TaskIntent>, ControlError> {
        let key = key.clone();
        blocking!(self, |s| s.intent(&key))
    }

    /// The grants in force for `key`'s task (`None`: no intent recorded).
    pub async fn granted_intent(&self, key: &IntentKey) -> Result<Option<Intent>, ControlError> {
        Ok(self.intent(key).await?.map(|t| t.granted()))
    }

    /// The intent whose approval request is `approval_id`.
    pub async fn intent_approval(&self, approval_id: &str) -> Result<TaskIntent, ControlError> {
        let id = approval_id.to_owned();
        blocking!(self, |s| s.intent_approval(&id))
    }

    /// Intents with an approval request, newest first, optionally of one
    /// approval status.
    pub async fn intent_approvals(
        &self,
        status: Option<ApprovalStatus>,
        limit: usize,
    ) -> Result<Vec<TaskIntent>, ControlError> {
        blocking!(self, |s| s.intent_approvals(status, limit))
    }

    /// The user's decision on the intent approval `approval_id`, bound to
    /// the intent they were shown (`seen_hash`).
    pub async fn decide_intent(
        &self,
        approval_id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
        seen_hash: &str,
    ) -> Result<TaskIntent, ControlError> {
        let (id, by, comment, seen) = (
            approval_id.to_owned(),
            by.to_owned(),
            comment.map(str::to_owned),
            seen_hash.to_owned(),
        );
        blocking!(self, |s| s.decide_intent(
            &id,
            approve,
            &by,
            comment.as_deref(),
            &seen
        ))
    }

    /// Ends a pending intent approval without a decision; its grants are
    /// refused. Returns whether it was still pending.
    pub async fn close_intent_approval(
        &self,
        approval_id: &str,
        status: ApprovalStatus,
    ) -> Result<bool, ControlError> {
        let id = approval_id.to_owned();
        blocking!(self, |s| s.close_intent_approval(&id, status))
    }

    /// Takes one use of grant `identifier` of `key`'s task (atomically:
    /// concurrent callers on any replica cannot both take the last use).
    pub async fn consume_grant(
        &self,
        key: &IntentKey,
        identifier: &str,
    ) -> Result<Option<Consumed>, ControlError> {
        let (key, id) = (key.clone(), identifier.to_owned());
        blocking!(self, |s| s.consume_grant(&key, &id))
    }

    /// Takes one use of the first of `identifiers` that has one.
    pub async fn consume_first(
        &self,
        key: &IntentKey,
        identifiers: &[&str],
    ) -> Result<Option<Consumed>, ControlError> {
        let key = key.clone();
        let ids: Vec<String> = identifiers.iter().map(|s| (*s).to_owned()).collect();
        blocking!(self, |s| {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            s.consume_first(&key, &ids)
        })
    }

    /// Gives back one use of grant `identifier` taken for a call that was
    /// then not let through. Whether a use was given back.
    pub async fn refund_grant(
        &self,
        key: &IntentKey,
        identifier: &str,
    ) -> Result<bool, ControlError> {
        let (key, id) = (key.clone(), identifier.to_owned());
        blocking!(self, |s| s.refund_grant(&key, &id))
    }
}

/// The token verifier narrows every principal to these (activated through
/// the change gate; swapped atomically, read without I/O).
impl mandate_core::ScopeCeilings for ControlStore {
    fn any(&self) -> bool {
        self.has_ceilings()
    }

    fn ceiling(&self, agent: &str) -> Option<Scope> {
        ControlStore::ceiling(self, agent)
    }
}
