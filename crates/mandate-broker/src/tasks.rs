//! What the broker provides to the task lifecycle API (`/api/tasks`,
//! served by the operator plane, `mandate_operator`): its task templates,
//! the checks of a start request (template, user, intent), the start with
//! the intent judged and recorded, and the end of a task, which revokes
//! every token minted for it.
//!
//! The operator plane authenticates the operator, checks the role and
//! records each change in the audit log before it calls here; nothing in
//! this module authenticates or records.

use crate::Broker;
use crate::error::InvalidTask;
use mandate_control::{ControlError, Task, TaskIntent, TaskStatus};
use mandate_core::{CallerData, Scope};
use mandate_intent::Intent;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The broker's side of the task API, handed to the operator plane. Cheap
/// to clone.
#[derive(Clone)]
pub struct TaskApi {
    broker: Arc<Broker>,
}

impl std::fmt::Debug for TaskApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskApi")
            .field("templates", &self.broker.cfg.templates.keys())
            .finish()
    }
}

/// A task start as an operator asks for it (`POST /api/tasks`).
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// The task template (`[broker.tasks.<name>]`).
    pub template: String,
    /// The user the task is for.
    pub sub: String,
    /// The task id (default: a fresh one).
    pub id: Option<String>,
    /// The task's intent (RFC 9396 `authorization_details`,
    /// docs/INTENT.md), declared before any agent of the task has read
    /// anything.
    pub authorization_details: Option<Value>,
}

/// A start request that passed the checks, with its id and deadline
/// fixed; made only by [`TaskApi::plan`].
#[derive(Debug, Clone)]
pub struct TaskPlan {
    id: String,
    template: String,
    sub: String,
    deadline_ms: i64,
    intent: Option<Intent>,
    /// The template's, for judging the intent.
    scope: Scope,
    agents: BTreeSet<String>,
}

impl TaskPlan {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the audit record of the start keeps.
    pub fn detail(&self) -> Value {
        json!({
            "id": self.id, "template": self.template, "sub": self.sub,
            "deadline_ms": self.deadline_ms,
            "intent_hash": self.intent.as_ref().map(Intent::hash),
        })
    }
}

/// A started task, with its intent as recorded when one was declared
/// (serialised as the task's fields plus `intent`).
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// Its intent, each grant judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<TaskIntent>,
}

impl TaskApi {
    /// The task API of `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    /// Checks a start request: a known template, a named user, a valid
    /// intent; fixes the id and the deadline (the template's
    /// `max_duration` from now).
    pub fn plan(&self, req: TaskRequest) -> Result<TaskPlan, InvalidTask> {
        let b = &self.broker;
        let template = b
            .cfg
            .templates
            .get(&req.template)
            .ok_or_else(|| InvalidTask(format!("no task template {:?}", req.template)))?;
        if req.sub.trim().is_empty() {
            return Err(InvalidTask("sub must name the user the task is for".into()));
        }
        let intent = req
            .authorization_details
            .as_ref()
            .map(Intent::parse)
            .transpose()
            .map_err(|e| {
                InvalidTask(format!(
                    "authorization_details are not a valid intent (docs/INTENT.md): {e}"
                ))
            })?;
        let id = req
            .id
            .unwrap_or_else(|| format!("task-{}", uuid::Uuid::now_v7()));
        let deadline_ms = b
            .clock
            .now_ms()
            .saturating_add(i64::try_from(template.max_duration.as_millis()).unwrap_or(i64::MAX));
        Ok(TaskPlan {
            id,
            template: req.template,
            sub: req.sub,
            deadline_ms,
            intent,
            scope: template.scope.clone(),
            agents: template.agents.clone(),
        })
    }

    /// Starts the task `by` an operator, and records its intent if one was
    /// declared.
    pub async fn start(&self, plan: &TaskPlan, by: &str) -> Result<Started, ControlError> {
        let b = &self.broker;
        let task = b
            .control
            .start_task(&plan.id, &plan.template, &plan.sub, plan.deadline_ms, by)
            .await?;
        let Some(intent) = &plan.intent else {
            return Ok(Started { task, intent: None });
        };
        // Judged for every agent the template lets work on the task (the
        // strictest answer per grant): what policy does not grant outright
        // waits for the user's one approval until the task's deadline.
        let caller = |act: Vec<String>| CallerData {
            iss: b.cfg.issuer.clone(),
            sub: plan.sub.clone(),
            act,
            scope: plan.scope.clone(),
            task_id: Some(plan.id.clone()),
            build: None,
            sid: None,
            jti: None,
        };
        let mut callers: Vec<_> = plan
            .agents
            .iter()
            .map(|a| caller(vec![a.clone()]))
            .collect();
        if callers.is_empty() {
            callers.push(caller(Vec::new()));
        }
        let recorded = b
            .record_intent(intent, &callers, by, plan.deadline_ms)
            .await?;
        Ok(Started {
            task,
            intent: Some(recorded),
        })
    }

    /// Completes or cancels task `id` (`status`) and revokes every token
    /// minted for it: the gateway refuses them from their next call.
    pub async fn end(&self, id: &str, status: TaskStatus, by: &str) -> Result<Task, ControlError> {
        let task = self.broker.control.end_task(id, status, by).await?;
        tracing::warn!(task = %task.id, status = task.status.as_str(), "task ended; its tokens are revoked");
        Ok(task)
    }

    /// Active tasks (with `all`, ended ones too), newest first.
    pub async fn list(&self, all: bool) -> Result<Vec<Task>, ControlError> {
        self.broker.control.tasks(all).await
    }
}
