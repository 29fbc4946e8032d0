//! Tasks: the unit of delegated work the broker mints tokens for.
//!
//! A task is started (by an operator, or implicitly by the first token
//! exchange that names it), then completed or cancelled. Ending a task
//! writes a `task` revocation in the same transaction: the gateway checks
//! revocations on every call, so a token minted for the task is refused on
//! its very next call (F-01), with no second mechanism to keep in step.

use crate::db::{Record, Sql, args};
use crate::error::ControlError;
use crate::revocations::RevocationKind;
use crate::signal::Topic;
use crate::store::Store;
use serde::{Deserialize, Serialize};

/// Where a task is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(
    serialize_all = "snake_case",
    parse_err_ty = String,
    parse_err_fn = unknown_status
)]
pub enum TaskStatus {
    /// Tokens may be minted for it (until its deadline).
    Active,
    /// Finished; its tokens are revoked.
    Completed,
    /// Stopped; its tokens are revoked.
    Cancelled,
}

impl TaskStatus {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_status(s: &str) -> String {
    format!("unknown task status {s:?}")
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Task id (the tokens' `task_id`).
    pub id: String,
    /// The task template it was started from.
    pub template: String,
    /// The user the work is done for (tokens' `sub`).
    pub sub: String,
    /// Status.
    pub status: TaskStatus,
    /// Who started it (an operator, or `broker:<agent>` for an implicit start).
    pub started_by: String,
    /// Unix milliseconds.
    pub started_ms: i64,
    /// No token for the task outlives this (Unix milliseconds).
    pub deadline_ms: i64,
    /// Who completed or cancelled it.
    pub ended_by: Option<String>,
    /// When (Unix milliseconds).
    pub ended_ms: Option<i64>,
}

impl Task {
    /// Whether tokens may still be minted for it at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.status == TaskStatus::Active && now_ms < self.deadline_ms
    }
}

fn task_row(row: &Record) -> Result<Task, ControlError> {
    let id: String = row.get("id")?;
    let status = row
        .get::<String>("status")?
        .parse::<TaskStatus>()
        .map_err(|reason| ControlError::Corrupt {
            id: id.clone(),
            reason,
        })?;
    Ok(Task {
        template: row.get("template")?,
        sub: row.get("sub")?,
        status,
        started_by: row.get("started_by")?,
        started_ms: row.get("started_ms")?,
        deadline_ms: row.get("deadline_ms")?,
        ended_by: row.get("ended_by")?,
        ended_ms: row.get("ended_ms")?,
        id,
    })
}

/// Task ids: printable, no white space, at most 128 bytes.
fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic())
}

impl Store {
    /// Starts task `id`. Starting an id that exists is a conflict (whatever
    /// its state: a task id is never reused, so a revocation of an ended
    /// task can never hit a later one).
    pub(crate) fn start_task(
        &self,
        id: &str,
        template: &str,
        sub: &str,
        deadline_ms: i64,
        by: &str,
    ) -> Result<Task, ControlError> {
        if !valid_task_id(id) {
            return Err(ControlError::Invalid(
                "a task id is 1-128 printable ASCII characters without spaces".into(),
            ));
        }
        if sub.is_empty() || template.is_empty() {
            return Err(ControlError::Invalid(
                "a task needs a user and a template".into(),
            ));
        }
        let now = self.clock().now_ms();
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO tasks (id, template, sub, status, started_by, started_ms, deadline_ms)
                 VALUES ($1, $2, $3, 'active', $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                args![id, template, sub, by, now, deadline_ms],
            )?;
            if inserted == 0 {
                return Err(ControlError::Conflict(format!("task {id} already exists")));
            }
            get_task(tx, id)
        })
    }

    /// Task `id`, if it exists.
    pub(crate) fn task(&self, id: &str) -> Result<Option<Task>, ControlError> {
        self.read(|tx| {
            tx.query_opt("SELECT * FROM tasks WHERE id = $1", args![id])?
                .as_ref()
                .map(task_row)
                .transpose()
        })
    }

    /// Tasks, newest first; ended ones only if `include_ended`.
    pub(crate) fn tasks(&self, include_ended: bool) -> Result<Vec<Task>, ControlError> {
        let sql = if include_ended {
            "SELECT * FROM tasks ORDER BY started_ms DESC"
        } else {
            "SELECT * FROM tasks WHERE status = 'active' ORDER BY started_ms DESC"
        };
        self.read(|tx| tx.query(sql, args![])?.iter().map(task_row).collect())
    }

    /// Completes or cancels task `id` and revokes its tokens, in one
    /// transaction; the in-memory revocation index is swapped before this
    /// returns, so the gateway refuses the task's tokens on their next call.
    pub(crate) fn end_task(
        &self,
        id: &str,
        status: TaskStatus,
        by: &str,
    ) -> Result<Task, ControlError> {
        if status == TaskStatus::Active {
            return Err(ControlError::Invalid(
                "a task ends as completed or cancelled".into(),
            ));
        }
        let now = self.clock().now_ms();
        let reason = format!("task {}", status.as_str());
        let ended = self.write(|tx| {
            let task = get_task(tx, id)?;
            if task.status != TaskStatus::Active {
                return Err(ControlError::Conflict(format!(
                    "task {id} is already {}",
                    task.status.as_str()
                )));
            }
            tx.execute(
                "UPDATE tasks SET status = $1, ended_by = $2, ended_ms = $3 WHERE id = $4",
                args![status.as_str(), by, now, id],
            )?;
            tx.execute(
                "INSERT INTO revocations (kind, value, reason, revoked_by, revoked_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                args![RevocationKind::Task.as_str(), id, &reason, by, now],
            )?;
            tx.notify(Topic::Revocations)?;
            get_task(tx, id)
        })?;
        self.refresh()?;
        Ok(ended)
    }
}

fn get_task(tx: &mut dyn Sql, id: &str) -> Result<Task, ControlError> {
    let row = tx.query_opt("SELECT * FROM tasks WHERE id = $1", args![id])?;
    task_row(&row.ok_or_else(|| crate::store::not_found("task", id))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_core::{CallerData, Scope};

    fn token(task: &str) -> CallerData {
        CallerData {
            iss: "i".into(),
            sub: "alice".into(),
            act: vec!["assistant".into()],
            scope: Scope::parse("docs.*"),
            task_id: Some(task.into()),
            build: None,
            sid: Some("s".into()),
            jti: Some("j".into()),
        }
    }

    #[test]
    fn ending_a_task_revokes_its_tokens_at_once() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("c.sqlite"))?;
        let t = store.start_task("t-1", "research", "alice", i64::MAX, "ops")?;
        assert!(t.is_live(store.clock().now_ms()));
        assert!(store.check(&token("t-1").caller()).is_none());
        assert!(matches!(
            store.start_task("t-1", "research", "bob", i64::MAX, "ops"),
            Err(ControlError::Conflict(_))
        ));
        let ended = store.end_task("t-1", TaskStatus::Completed, "ops")?;
        assert_eq!(ended.status, TaskStatus::Completed);
        assert!(!ended.is_live(store.clock().now_ms()));
        assert!(store.check(&token("t-1").caller()).is_some());
        assert!(store.check(&token("t-2").caller()).is_none());
        assert!(matches!(
            store.end_task("t-1", TaskStatus::Cancelled, "ops"),
            Err(ControlError::Conflict(_))
        ));
        assert!(matches!(
            store.end_task("nope", TaskStatus::Cancelled, "ops"),
            Err(ControlError::NotFound { .. })
        ));
        // Durable: a reopened store still refuses the task's tokens.
        drop(store);
        let store = Store::open(&dir.path().join("c.sqlite"))?;
        assert!(store.check(&token("t-1").caller()).is_some());
        assert_eq!(store.tasks(true)?.len(), 1);
        assert!(store.tasks(false)?.is_empty());
        Ok(())
    }

    #[test]
    fn task_ids_are_bounded_printable_text() {
        assert!(valid_task_id("task-0193"));
        assert!(!valid_task_id(""));
        assert!(!valid_task_id("a b"));
        assert!(!valid_task_id(&"x".repeat(129)));
    }
}
