//! Long holds as MCP tasks (the `io.modelcontextprotocol/tasks` extension,
//! SEP-2663): a client that declares the extension gets a task handle as
//! soon as its call is held for approval, instead of a request that stays
//! open for minutes. The held call goes on in the background (same
//! pipeline: nothing reaches the upstream before an approver decides) and
//! `tasks/get` returns its result once decided. `tasks/cancel` withdraws it.
//!
//! A task belongs to the subject that started it (issuer, `sub`, `act`
//! chain, `sid`): anyone else asking about it is told it does not exist
//! (F-04). Each task is also kept in the control store, so `tasks/get` and
//! `tasks/cancel` work on any replica (and after a restart): a task
//! cancelled on another replica withdraws its approval request, which
//! ends the held call where it waits. A held call whose replica stopped
//! has failed closed; its task reads as failed once the stopping replica
//! records it, or as working until its row expires if the replica was
//! killed (its approval request can no longer release anything).

use mandate_authn::Principal;
use mandate_control::ephemeral::{Kind, OnFull};
use mandate_control::{ApprovalStatus, ControlStore};
use mandate_core::Clock;
use rmcp::ErrorData;
use rmcp::model::{CallToolResponse, DetailedTask, JsonObject, Task, TaskPayload, TaskStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a finished task's result is kept for `tasks/get`.
const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// How long a working task's row is kept at most (longer than any hold).
const KEEP_WORKING: Duration = Duration::from_secs(24 * 3600);
/// Most tasks kept in the control store (a new one beyond it is served by
/// this replica only).
const MAX_STORED: usize = 100_000;
/// Suggested polling interval for clients.
const POLL_MS: u64 = 1000;

/// The state of one task.
enum State {
    /// Held (or forwarding).
    Working,
    /// The call finished: its response or its JSON-RPC error.
    Done(Box<Result<CallToolResponse, ErrorData>>, Instant),
}

struct Entry {
    owner: (String, String, Vec<String>, Option<String>),
    created: String,
    updated: String,
    message: String,
    state: State,
    cancel: CancellationToken,
}

/// How a finished task ended, as the control store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
enum Outcome {
    Completed(JsonObject),
    Failed(JsonObject),
    Cancelled,
}

/// A task as the control store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    owner: (String, String, Vec<String>, Option<String>),
    created: String,
    updated: String,
    message: String,
    /// Cancelled through another replica (or this one).
    cancelled: bool,
    outcome: Option<Outcome>,
}

/// The tasks of this process, and of every replica through the store.
pub(crate) struct Tasks {
    map: dashmap::DashMap<String, Entry>,
    control: Arc<ControlStore>,
    /// Dates tasks (`createdAt`, `lastUpdatedAt`).
    clock: Clock,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn to_object<T: serde::Serialize>(v: &T) -> JsonObject {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => JsonObject::new(),
    }
}

/// What a finished call shows in `tasks/get`.
fn outcome_of(result: &Result<CallToolResponse, ErrorData>, cancelled: bool) -> Outcome {
    match result {
        Ok(CallToolResponse::Complete(r)) => Outcome::Completed(to_object(r)),
        // An upstream that answers a released call with its own task or
        // an input request cannot be relayed through a held task.
        Ok(_) => Outcome::Failed(to_object(&crate::error::unrelayable_in_task())),
        Err(_) if cancelled => Outcome::Cancelled,
        Err(err) => Outcome::Failed(to_object(err)),
    }
}

fn payload_of(outcome: Option<Outcome>) -> TaskPayload {
    match outcome {
        None => TaskPayload::Working,
        Some(Outcome::Completed(result)) => TaskPayload::Completed { result },
        Some(Outcome::Failed(error)) => TaskPayload::Failed { error },
        Some(Outcome::Cancelled) => TaskPayload::Cancelled,
    }
}

impl Tasks {
    pub(crate) fn new(clock: Clock, control: Arc<ControlStore>) -> Self {
        Self {
            map: dashmap::DashMap::new(),
            control,
            clock,
        }
    }

    /// Now, as RFC 3339 UTC with milliseconds.
    fn now_iso(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.clock.now_ms())
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Writes task `id` to the control store (a failure leaves the task
    /// known to this replica only: logged, never fatal to the call).
    async fn store(&self, id: &str, row: &Stored, keep: Duration) {
        let Ok(value) = serde_json::to_string(row) else {
            return;
        };
        let until = self.clock.now_ms().saturating_add(ms(keep));
        let put = self
            .control
            .put_ephemeral(Kind::McpTask, id, value, until, MAX_STORED, OnFull::Refuse)
            .await;
        if !matches!(put, Ok(true)) {
            tracing::warn!(
                task = id,
                "MCP task not shared with other replicas: {put:?}"
            );
        }
    }

    /// Task `id` as another replica (or an earlier run) stored it, if it
    /// is `principal`'s.
    async fn stored(&self, id: &str, principal: &Principal) -> Result<Stored, ErrorData> {
        let entry = self
            .control
            .ephemeral(Kind::McpTask, id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "MCP tasks: the control store is unavailable");
                crate::error::tasks_unavailable()
            })?
            .ok_or_else(|| not_found(id))?;
        serde_json::from_str::<Stored>(&entry.value)
            .ok()
            .filter(|s| s.owner == principal.binding())
            .ok_or_else(|| not_found(id))
    }

    /// Registers a task for a held call; returns its handle.
    pub(crate) async fn start(
        &self,
        id: &str,
        principal: &Principal,
        message: String,
        cancel: CancellationToken,
    ) -> Task {
        self.prune();
        let now = self.now_iso();
        let row = Stored {
            owner: principal.binding(),
            created: now.clone(),
            updated: now.clone(),
            message: message.clone(),
            cancelled: false,
            outcome: None,
        };
        self.map.insert(
            id.to_owned(),
            Entry {
                owner: principal.binding(),
                created: now.clone(),
                updated: now.clone(),
                message: message.clone(),
                state: State::Working,
                cancel,
            },
        );
        self.store(id, &row, KEEP_WORKING).await;
        Task::new(id, TaskStatus::Working, now.clone(), now)
            .with_status_message(message)
            .with_poll_interval_ms(POLL_MS)
    }

    /// Records the call's final response (here and in the store).
    pub(crate) async fn finish(&self, id: &str, result: Result<CallToolResponse, ErrorData>) {
        let updated = self.now_iso();
        // Cancelled through another replica: the store says so.
        let cancelled_elsewhere = matches!(
            self.control.ephemeral(Kind::McpTask, id).await,
            Ok(Some(e)) if serde_json::from_str::<Stored>(&e.value).is_ok_and(|s| s.cancelled)
        );
        let Some(row) = self.map.get_mut(id).map(|mut e| {
            if cancelled_elsewhere {
                e.cancel.cancel();
            }
            let cancelled = e.cancel.is_cancelled();
            let outcome = outcome_of(&result, cancelled);
            e.updated.clone_from(&updated);
            e.state = State::Done(Box::new(result), Instant::now());
            Stored {
                owner: e.owner.clone(),
                created: e.created.clone(),
                updated,
                message: e.message.clone(),
                cancelled,
                outcome: Some(outcome),
            }
        }) else {
            return;
        };
        self.store(id, &row, KEEP_FINISHED).await;
    }

    /// `tasks/get` for `principal`, from this replica or the store.
    pub(crate) async fn get(
        &self,
        id: &str,
        principal: &Principal,
    ) -> Result<DetailedTask, ErrorData> {
        let local = self.map.get(id).and_then(|e| {
            (e.owner == principal.binding()).then(|| {
                let outcome = match &e.state {
                    State::Working => None,
                    State::Done(done, _) => Some(outcome_of(done, e.cancel.is_cancelled())),
                };
                (
                    e.created.clone(),
                    e.updated.clone(),
                    e.message.clone(),
                    outcome,
                )
            })
        });
        let (created, updated, message, outcome) = match local {
            Some(l) => l,
            None => {
                let s = self.stored(id, principal).await?;
                (s.created, s.updated, s.message, s.outcome)
            }
        };
        let task = Task::new(id, TaskStatus::Working, created, updated)
            .with_status_message(message)
            .with_poll_interval_ms(POLL_MS);
        Ok(DetailedTask::new(task, payload_of(outcome)))
    }

    /// `tasks/cancel` for `principal`: withdraws the held call, here or,
    /// through its approval request, on the replica that holds it.
    pub(crate) async fn cancel(&self, id: &str, principal: &Principal) -> Result<(), ErrorData> {
        if let Some(e) = self.map.get(id) {
            if e.owner != principal.binding() {
                return Err(not_found(id));
            }
            e.cancel.cancel();
            return Ok(());
        }
        let mut row = self.stored(id, principal).await?;
        if row.outcome.is_none() {
            row.cancelled = true;
            row.updated = self.now_iso();
            self.store(id, &row, KEEP_WORKING).await;
            // The holder wakes on the closed request and fails closed.
            if let Err(e) = self
                .control
                .close_approval(id, ApprovalStatus::Withdrawn)
                .await
            {
                tracing::error!(error = %e, "MCP tasks: a cancel could not reach the held call");
                return Err(crate::error::tasks_unavailable());
            }
        }
        Ok(())
    }

    fn prune(&self) {
        self.map.retain(|_, e| match &e.state {
            State::Working => true,
            State::Done(_, at) => at.elapsed() < KEEP_FINISHED,
        });
    }
}

fn not_found(id: &str) -> ErrorData {
    crate::error::unknown_task(id)
}
