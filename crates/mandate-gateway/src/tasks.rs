//! Long holds as MCP tasks (the `io.modelcontextprotocol/tasks` extension,
//! SEP-2663): a client that declares the extension gets a task handle as
//! soon as its call is held for approval, instead of a request that stays
//! open for minutes. The held call goes on in the background (same
//! pipeline: nothing reaches the upstream before an approver decides) and
//! `tasks/get` returns its result once decided. `tasks/cancel` withdraws it.
//!
//! A task belongs to the subject that started it (`sub`, `act` chain, `sid`):
//! anyone else asking about it is told it does not exist (F-04). Tasks live
//! in this process only; after a restart `tasks/get` answers "not found" and
//! the held call has failed closed.

use mandate_authn::Principal;
use mandate_core::Clock;
use rmcp::ErrorData;
use rmcp::model::{CallToolResponse, DetailedTask, JsonObject, Task, TaskPayload, TaskStatus};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a finished task's result is kept for `tasks/get`.
const KEEP_FINISHED: Duration = Duration::from_secs(600);
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

/// The tasks of this process.
pub(crate) struct Tasks {
    map: dashmap::DashMap<String, Entry>,
    /// Dates tasks (`createdAt`, `lastUpdatedAt`).
    clock: Clock,
}

fn to_object<T: serde::Serialize>(v: &T) -> JsonObject {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => JsonObject::new(),
    }
}

impl Tasks {
    pub(crate) fn new(clock: Clock) -> Self {
        Self {
            map: dashmap::DashMap::new(),
            clock,
        }
    }

    /// Now, as RFC 3339 UTC with milliseconds.
    fn now_iso(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.clock.now_ms())
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// Registers a task for a held call; returns its handle.
    pub(crate) fn start(
        &self,
        id: &str,
        principal: &Principal,
        message: String,
        cancel: CancellationToken,
    ) -> Task {
        self.prune();
        let now = self.now_iso();
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
        Task::new(id, TaskStatus::Working, now.clone(), now)
            .with_status_message(message)
            .with_poll_interval_ms(POLL_MS)
    }

    /// Records the call's final response.
    pub(crate) fn finish(&self, id: &str, result: Result<CallToolResponse, ErrorData>) {
        if let Some(mut e) = self.map.get_mut(id) {
            e.updated = self.now_iso();
            e.state = State::Done(Box::new(result), Instant::now());
        }
    }

    /// `tasks/get` for `principal`.
    pub(crate) fn get(&self, id: &str, principal: &Principal) -> Result<DetailedTask, ErrorData> {
        let e = self
            .map
            .get(id)
            .filter(|e| e.owner == principal.binding())
            .ok_or_else(|| not_found(id))?;
        let payload = match &e.state {
            State::Working => TaskPayload::Working,
            State::Done(done, _) => match done.as_ref() {
                Ok(CallToolResponse::Complete(r)) => TaskPayload::Completed {
                    result: to_object(r),
                },
                // An upstream that answers a released call with its own task or
                // an input request cannot be relayed through a held task.
                Ok(_) => TaskPayload::Failed {
                    error: to_object(&crate::error::unrelayable_in_task()),
                },
                Err(_) if e.cancel.is_cancelled() => TaskPayload::Cancelled,
                Err(err) => TaskPayload::Failed {
                    error: to_object(err),
                },
            },
        };
        let task = Task::new(
            id,
            TaskStatus::Working,
            e.created.clone(),
            e.updated.clone(),
        )
        .with_status_message(e.message.clone())
        .with_poll_interval_ms(POLL_MS);
        Ok(DetailedTask::new(task, payload))
    }

    /// `tasks/cancel` for `principal`: withdraws the held call.
    pub(crate) fn cancel(&self, id: &str, principal: &Principal) -> Result<(), ErrorData> {
        let e = self
            .map
            .get(id)
            .filter(|e| e.owner == principal.binding())
            .ok_or_else(|| not_found(id))?;
        e.cancel.cancel();
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
