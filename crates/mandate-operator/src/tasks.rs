//! The task lifecycle API (`mandate task start|complete|cancel|list`),
//! served when a broker is configured.
//!
//! | method | path | role |
//! |---|---|---|
//! | GET  | `/api/tasks[?all=true]` | admin |
//! | POST | `/api/tasks` `{template, sub, id?, authorization_details?}` (the task's intent, docs/INTENT.md) | admin |
//! | POST | `/api/tasks/{id}/complete`, `/cancel` | admin |
//!
//! Each change is decided (the `admin` role), recorded in the audit log
//! before it happens (if the log cannot write, nothing changes: 503), and
//! its outcome recorded after. Ending a task revokes every token minted
//! for it. The broker keeps what is its own behind
//! [`mandate_broker::TaskApi`]: the templates, the checks of a start
//! request (the intent among them), the intent's judgement, the revocation
//! of a task's tokens.

use crate::control::{ListQuery, to_value};
use crate::error::ApiError;
use crate::operator::{Operator, record, record_outcome};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use mandate_broker::{TaskApi, TaskRequest};
use mandate_control::TaskStatus;
use mandate_gateway::{Gateway, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most bytes of a request body (a start request with its intent), as on
/// the broker's own endpoints.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct TaskState {
    gw: Arc<Gateway>,
    tasks: TaskApi,
}

/// The `/api/tasks` routes.
pub(crate) fn routes(gw: Arc<Gateway>, tasks: TaskApi) -> Router {
    Router::new()
        .route("/api/tasks", get(list).post(start))
        .route("/api/tasks/{id}/{action}", post(end))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(TaskState { gw, tasks })
}

async fn list(
    State(s): State<TaskState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    Operator::require(&s.gw, &headers, Role::Admin, "broker/task.list").await?;
    let tasks = s.tasks.list(q.all).await?;
    Ok(Json(json!({ "tasks": tasks })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    template: String,
    sub: String,
    #[serde(default)]
    id: Option<String>,
    /// The task's intent (RFC 9396 `authorization_details`, docs/INTENT.md),
    /// declared now, before any agent of the task has read anything.
    #[serde(default)]
    authorization_details: Option<Value>,
}

async fn start(
    State(s): State<TaskState>,
    headers: HeaderMap,
    body: Result<Json<StartBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "broker/task.start";
    let op = Operator::require(&s.gw, &headers, Role::Admin, ACTION).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let plan = s
        .tasks
        .plan(TaskRequest {
            template: body.template,
            sub: body.sub,
            id: body.id,
            authorization_details: body.authorization_details,
        })
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let rec = record(
        &s.gw,
        &op.subject(),
        ACTION,
        Some(Role::Admin),
        &format!("start task {}", plan.id()),
        &plan.detail(),
    )
    .await?;
    let result = s
        .tasks
        .start(&plan, op.name())
        .await
        .map_err(ApiError::from)
        .map(|started| to_value(&started));
    record_outcome(&s.gw, &rec, result.as_ref()).await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

async fn end(
    State(s): State<TaskState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let status = match action.as_str() {
        "complete" => TaskStatus::Completed,
        "cancel" => TaskStatus::Cancelled,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown task action (complete or cancel)",
            ));
        }
    };
    let name = format!("broker/task.{action}");
    let op = Operator::require(&s.gw, &headers, Role::Admin, &name).await?;
    let rec = record(
        &s.gw,
        &op.subject(),
        &name,
        Some(Role::Admin),
        &format!("{action} task {id}: its tokens are revoked"),
        &json!({"id": id}),
    )
    .await?;
    let result = s
        .tasks
        .end(&id, status, op.name())
        .await
        .map_err(ApiError::from)
        .map(|task| to_value(&task));
    record_outcome(&s.gw, &rec, result.as_ref()).await;
    Ok(Json(result?))
}
