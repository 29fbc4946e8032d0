//! Human approval of high-impact calls: the hold and its wake-ups.
//!
//! When the decision carries the `approval` obligation, the pipeline makes
//! the call an approval request (durable in the control store), records
//! the decision, notifies the webhook, and holds the agent's `tools/call`
//! open until a person decides, the deadline passes, or the client goes
//! away. The upstream sees nothing until then. A decision is only ever
//! taken from an authenticated approver of the operator plane
//! (`mandate-operator`: `/api/approvals` or the approval page), never from
//! anything arriving on the agent's own channel; it binds to the argument
//! hash the approver was shown, is stored in the control store, and
//! releases the held call once. The operator plane wakes the held call
//! through [`Gateway::wake_held`] and asks whether one is waiting through
//! [`Gateway::is_held_here`]; everything else it reads from the store.

use crate::Gateway;
use mandate_control::ephemeral::{Kind, OnFull};
use mandate_control::{ApprovalRequest, ApprovalStatus, NewApproval};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A person's approval, consumed by this call: the control store released
/// it once, for exactly these arguments. Only [`Gateway::hold`] makes one
/// (the field is private to this module), and the permit to forward a call
/// whose decision asks for a person requires it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Approved(ApprovalRequest);

impl Approved {
    pub(crate) fn id(&self) -> &str {
        &self.0.id
    }

    /// The argument hash the approver was shown and approved.
    pub(crate) fn args_hash(&self) -> &str {
        &self.0.request.args_hash
    }

    pub(crate) fn decided_by(&self) -> &str {
        self.0.decided_by.as_deref().unwrap_or_default()
    }

    pub(crate) fn comment(&self) -> Option<&str> {
        self.0.comment.as_deref()
    }
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HoldOutcome {
    /// Approved, and this call used the approval.
    Approved(Approved),
    /// A person denied it.
    Denied(ApprovalRequest),
    /// Nobody decided in time.
    Expired,
    /// The client went away.
    Withdrawn,
    /// The gateway is stopping (the request was closed as withdrawn).
    Stopping,
    /// The control store failed (fail closed).
    Unavailable(String),
}

impl HoldOutcome {
    /// The `outcome` label of `mandate_approval_wait_seconds`.
    fn label(&self) -> &'static str {
        match self {
            Self::Approved(_) => "approved",
            Self::Denied(_) => "denied",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
            Self::Stopping => "stopping",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Interval of progress notifications to a client that asked for them.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long the mark of a held call lasts unless renewed (it is renewed
/// every [`PROGRESS_EVERY`] while the call waits).
const HOLDER_MARK_TTL: Duration = Duration::from_secs(20);

/// Most marks of held calls kept at once (held calls are bounded per
/// subject already; past this a held call goes unmarked and may be
/// withdrawn as orphaned, which fails it closed).
const MAX_HOLDER_MARKS: usize = 100_000;

/// A pending request younger than this is never taken for an orphan (its
/// holder writes its first mark right after creating it).
const ORPHAN_GRACE_MS: i64 = 30_000;

/// How often pending requests are checked for a live holder.
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Most pending requests one sweep looks at (the most recent first).
const ORPHAN_SWEEP_BATCH: usize = 1_000;

/// Shortest interval at which a held call re-reads its own request.
const HOLD_POLL_FLOOR: Duration = Duration::from_millis(10);

/// The hold's state, owned by this module: the calls held in this
/// process, the client that notifies the approval webhook, and this
/// process's id (recorded as the holder of its held calls).
pub(crate) struct Holds {
    waiters: Waiters,
    webhook: reqwest::Client,
    instance: String,
}

impl Holds {
    pub(crate) fn new() -> Self {
        Self {
            waiters: Waiters::default(),
            webhook: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            instance: format!("gw-{}", uuid::Uuid::now_v7()),
        }
    }

    /// This process's id, recorded as the holder of its held calls.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }
}

/// Held calls waiting in this process: approval id → wake-up.
#[derive(Default)]
struct Waiters {
    map: dashmap::DashMap<String, watch::Sender<bool>>,
}

impl Waiters {
    fn register(&self, id: &str) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        self.map.insert(id.to_owned(), tx);
        rx
    }

    fn wake(&self, id: &str) {
        if let Some(tx) = self.map.get(id) {
            let _ = tx.send(true);
        }
    }

    fn remove(&self, id: &str) {
        self.map.remove(id);
    }

    /// Whether a call in this process is waiting for `id`.
    fn is_waiting(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }
}

/// Removes the waiter and, if the hold is abandoned (the future dropped
/// because the client went away), closes the request as withdrawn.
struct HoldGuard<'a> {
    waiters: &'a Waiters,
    control: Arc<mandate_control::ControlStore>,
    id: String,
    armed: bool,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.waiters.remove(&self.id);
        if self.armed {
            let control = self.control.clone();
            let id = std::mem::take(&mut self.id);
            // No runtime left (the process is ending): the request
            // expires at its deadline instead.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if let Ok(true) = control.close_approval(&id, ApprovalStatus::Withdrawn).await {
                    tracing::info!(approval = %id, "held call abandoned by its client: withdrawn");
                }
            });
        }
    }
}

impl Gateway {
    /// The page where a person decides the approval request `id`.
    pub fn approval_url(&self, id: &str) -> String {
        format!("{}/approvals#{id}", self.config().public_url)
    }

    /// Whether a call held in this process is waiting for the approval
    /// request `id` (the operator plane shows it as `waiting`).
    pub fn is_held_here(&self, id: &str) -> bool {
        self.holds.waiters.is_waiting(id)
    }

    /// Wakes the call held for `id`, if it waits in this process, after a
    /// decision was stored: it reads the decision back from the control
    /// store and releases itself only if that says approved, for its own
    /// arguments. Waking it without a decision changes nothing.
    pub fn wake_held(&self, id: &str) {
        self.holds.waiters.wake(id);
    }

    /// Creates the durable approval request for a held call.
    pub(crate) async fn create_approval(
        &self,
        new: NewApproval,
    ) -> Result<ApprovalRequest, String> {
        let created = self
            .control()
            .create_approval(new)
            .await
            .map_err(|e| e.to_string())?;
        self.notify_webhook(&created);
        Ok(created)
    }

    /// Holds the call until `approval` is decided, its deadline passes or
    /// the client goes away (`cancel`, or its transport closing). Sends
    /// MCP progress notifications meanwhile if the client asked for them.
    pub(crate) async fn hold(
        &self,
        approval: &ApprovalRequest,
        cancel: CancellationToken,
        client: Option<rmcp::Peer<rmcp::RoleServer>>,
        progress: Option<rmcp::model::ProgressToken>,
    ) -> HoldOutcome {
        let id = approval.id.clone();
        let mut pending = self.metrics().hold_started();
        let mut rx = self.holds.waiters.register(&id);
        // The request was visible to approvers before this waiter existed: a
        // decision made in between woke nobody. Look at the store once first.
        rx.mark_changed();
        let mut guard = HoldGuard {
            waiters: &self.holds.waiters,
            control: self.control().clone(),
            id: id.clone(),
            armed: true,
        };
        let remaining_ms = approval.request.deadline_ms - self.clock().now_ms();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0));
        let url = self.approval_url(&id);
        // Point the person at the page through the client's own UI, where
        // it supports URL-mode elicitation. Whatever comes back is ignored:
        // only an authenticated approver on Mandate's side decides.
        if let Some(peer) = client.clone()
            && let Ok(page) = url::Url::parse(&url)
        {
            let message = format!(
                "A person must approve this {} call before it runs. Open the approval page to decide.",
                approval.request.tool
            );
            let elicitation_id = id.clone();
            let limit = Duration::from_millis(u64::try_from(remaining_ms.max(0)).unwrap_or(0));
            tokio::spawn(async move {
                match peer
                    .elicit_url_with_timeout(message, page, elicitation_id, Some(limit))
                    .await
                {
                    Ok(action) => {
                        tracing::debug!(?action, "approval page elicitation answered (ignored)")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no URL elicitation for the approval page")
                    }
                }
            });
        }
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        // A decision made on another replica wakes no waiter here: with a
        // shared control store, its notification does (`elsewhere`), and
        // a look at this one request twice per poll interval covers a lost
        // one (so a release without notifications takes at most about half
        // an interval plus one read: held calls are few, the read indexed).
        let shared_poll = self.control().poll_every();
        let mut poll = tokio::time::interval(
            shared_poll.map_or(PROGRESS_EVERY, |every| (every / 2).max(HOLD_POLL_FLOOR)),
        );
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut elsewhere = self.control().signal(mandate_control::Topic::Approvals);
        let mut step = 0.0;
        let outcome = loop {
            tokio::select! {
                Ok(()) = elsewhere.changed(), if shared_poll.is_some() => {
                    match self.settle(&id, &approval.request.args_hash).await {
                        Some(outcome) => break outcome,
                        None => continue,
                    }
                }
                _ = poll.tick(), if shared_poll.is_some() => {
                    match self.settle(&id, &approval.request.args_hash).await {
                        Some(outcome) => break outcome,
                        None => continue,
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        break HoldOutcome::Unavailable("approval waiter dropped".into());
                    }
                    match self.settle(&id, &approval.request.args_hash).await {
                        Some(outcome) => break outcome,
                        None => continue,
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let _ = self.control().close_approval(&id, ApprovalStatus::Expired).await;
                    // A decision may have landed in the same instant.
                    break self.settle(&id, &approval.request.args_hash).await.unwrap_or(HoldOutcome::Expired);
                }
                () = cancel.cancelled() => {
                    break HoldOutcome::Withdrawn;
                }
                () = self.draining.cancelled() => {
                    break HoldOutcome::Stopping;
                }
                _ = ticker.tick() => {
                    self.mark_holder(&id).await;
                    if let Some(peer) = &client {
                        if peer.is_transport_closed() {
                            break HoldOutcome::Withdrawn;
                        }
                        if let Some(token) = &progress {
                            step += 1.0;
                            let mut p = rmcp::model::ProgressNotificationParam::new(token.clone(), step);
                            p.message = Some(format!("waiting for a person to approve this call: {url}"));
                            let _ = peer.notify_progress(p).await;
                        }
                    }
                }
            }
        };
        if matches!(outcome, HoldOutcome::Withdrawn | HoldOutcome::Stopping) {
            let _ = self
                .control()
                .close_approval(&id, ApprovalStatus::Withdrawn)
                .await;
        }
        guard.armed = false;
        pending.ended(outcome.label());
        let _ = self.control().drop_ephemeral(Kind::HeldCall, &id).await;
        outcome
    }

    /// Marks the call held for request `id` as waiting in a live process
    /// (first at once, then every [`PROGRESS_EVERY`]). A mark that cannot
    /// be written lets the sweep withdraw the request, which fails the
    /// call closed.
    async fn mark_holder(&self, id: &str) {
        let until = self
            .clock()
            .now_ms()
            .saturating_add(i64::try_from(HOLDER_MARK_TTL.as_millis()).unwrap_or(i64::MAX));
        match self
            .control()
            .put_ephemeral(
                Kind::HeldCall,
                id,
                String::new(),
                until,
                MAX_HOLDER_MARKS,
                OnFull::Refuse,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(approval = %id, "too many held calls to mark this one as held")
            }
            Err(e) => tracing::warn!(approval = %id, error = %e, "cannot mark a held call as held"),
        }
    }

    /// Withdraws, every few seconds, the pending approval requests whose
    /// call no process holds any more: their replica was killed or lost
    /// its store before it could close them. Approving one would release
    /// nothing, so it leaves the approvers' queue instead of waiting there
    /// for its deadline. Runs until the gateway is dropped.
    pub fn spawn_orphan_sweep(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ORPHAN_SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(gw) = gw.upgrade() else { break };
                if gw.is_draining() {
                    break;
                }
                gw.sweep_orphaned_holds().await;
            }
        })
    }

    /// One pass of [`Gateway::spawn_orphan_sweep`]; how many requests it
    /// withdrew. Stops at the first store error (the next pass retries).
    pub async fn sweep_orphaned_holds(&self) -> usize {
        let control = self.control();
        let Ok(pending) = control
            .approvals(Some(ApprovalStatus::Pending), ORPHAN_SWEEP_BATCH)
            .await
        else {
            return 0;
        };
        let cutoff = self.clock().now_ms().saturating_sub(ORPHAN_GRACE_MS);
        let mut withdrawn = 0;
        for req in pending.iter().filter(|r| r.created_ms <= cutoff) {
            if self.holds.waiters.is_waiting(&req.id) {
                continue;
            }
            match control.ephemeral(Kind::HeldCall, &req.id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => break,
            }
            if let Ok(true) = control
                .close_approval(&req.id, ApprovalStatus::Withdrawn)
                .await
            {
                tracing::warn!(
                    approval = %req.id,
                    tool = %req.request.tool,
                    "no process holds this call any more (its replica stopped without closing it): withdrawn"
                );
                self.metrics().holds_orphaned.inc();
                withdrawn += 1;
            }
        }
        withdrawn
    }

    /// Reads the request after a wake-up; `None` if still pending.
    async fn settle(&self, id: &str, args_hash: &str) -> Option<HoldOutcome> {
        let control = self.control();
        let result = match control.approval(id).await {
            Err(e) => Err(e),
            Ok(current) => match current.status {
                // Use it now: single use, bound to this call's arguments.
                ApprovalStatus::Approved => control
                    .release_approval(id, args_hash)
                    .await
                    .map(|released| Some(HoldOutcome::Approved(Approved(released)))),
                ApprovalStatus::Denied => Ok(Some(HoldOutcome::Denied(current))),
                ApprovalStatus::Expired => Ok(Some(HoldOutcome::Expired)),
                ApprovalStatus::Withdrawn => Ok(Some(HoldOutcome::Withdrawn)),
                ApprovalStatus::Pending => Ok(None),
            },
        };
        result.unwrap_or_else(|e| Some(HoldOutcome::Unavailable(e.to_string())))
    }

    /// Fires the configured webhook for a new request (in the background,
    /// a few retries; a failure never affects the held call).
    fn notify_webhook(&self, a: &ApprovalRequest) {
        let Some(url) = self.config().approvals.webhook_url.clone() else {
            return;
        };
        let body = json!({
            "type": "approval.requested",
            "id": a.id,
            "url": self.approval_url(&a.id),
            "tool": a.request.tool,
            "class": a.request.class,
            "sub": a.request.sub,
            "act": a.request.act,
            "task_id": a.request.task_id,
            "args_hash": a.request.args_hash,
            "reasons": a.request.reasons,
            "taint": a.request.taint,
            "deadline_ms": a.request.deadline_ms,
        });
        let http = self.holds.webhook.clone();
        tokio::spawn(async move {
            for attempt in 0..3u32 {
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), attempt, "approval webhook refused")
                    }
                    Err(e) => tracing::warn!(error = %e, attempt, "approval webhook failed"),
                }
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
            }
            tracing::error!(url = %url, "approval webhook gave up after 3 attempts");
        });
    }
}
