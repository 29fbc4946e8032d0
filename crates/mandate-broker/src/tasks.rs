//! The task lifecycle API (`mandate task start|complete|cancel|list`).
//!
//! | method | path | body |
//! |---|---|---|
//! | GET | `/api/tasks[?all=true]` | — |
//! | POST | `/api/tasks` | `{template, sub, id?, authorization_details?}` (the task's intent, docs/INTENT.md) |
//! | POST | `/api/tasks/{id}/complete`, `/cancel` | — |
//!
//! Callers are operators (`[[operators]]` with the `admin` role): a bearer
//! token with `aud = <public_url>/api` and no `act`. Each change is recorded
//! in the audit log before it happens; if the log cannot write, nothing
//! changes. Ending a task revokes every token minted for it.

use crate::Broker;
use crate::error::{ApiError, ErrorCode};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode, header};
use mandate_authn::Principal;
use mandate_control::TaskStatus;
use mandate_core::{AuditRecord, DecisionRecord, Effect, Subject};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/api/tasks", get(list).post(start))
        .route("/api/tasks/{id}/{action}", post(end))
}

/// Runs a control-store operation off the async threads.
fn operator_subject(p: &Principal) -> Subject {
    Subject {
        iss: p.iss().to_owned(),
        sub: p.sub().to_owned(),
        session: format!("operator:{}", p.sub()),
        ..Subject::default()
    }
}

/// Authenticates an operator with task rights; refusals of verified
/// subjects are recorded.
async fn operator(b: &Broker, headers: &HeaderMap, action: &str) -> Result<Principal, ApiError> {
    let unauthorized = |m: &str| ApiError::new(ErrorCode::InvalidToken, m);
    let authn = b
        .operator_authn
        .as_ref()
        .ok_or_else(|| unauthorized("no operator issuer is configured"))?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| mandate_authn::token_of(h, "Bearer"))
        .ok_or_else(|| unauthorized("an operator bearer token is required"))?;
    let p = authn
        .verify(token)
        .await
        .map_err(|e| unauthorized(&format!("invalid token: {}", e.description())))?;
    let allowed = p.act().is_empty()
        && b.cfg
            .task_operators
            .iter()
            .any(|(sub, iss)| *sub == p.sub() && iss.as_ref().is_none_or(|i| *i == p.iss()));
    if !allowed {
        let why = format!("{} may not manage tasks", p.sub());
        record(b, &p, action, false, &why, &json!({})).await?;
        return Err(ApiError::new(ErrorCode::Forbidden, why));
    }
    Ok(p)
}

async fn record(
    b: &Broker,
    op: &Principal,
    action: &str,
    allowed: bool,
    reason: &str,
    detail: &Value,
) -> Result<(), ApiError> {
    let decision = if allowed {
        DecisionRecord::control(Effect::Allow, "operator-role:admin", reason)
    } else {
        DecisionRecord::deny(reason, String::new())
    };
    let rec = AuditRecord::control(
        b.clock.now_ms(),
        decision,
        operator_subject(op),
        action,
        detail,
    );
    b.audit.append(rec).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit store unavailable; task change refused");
        ApiError::new(
            ErrorCode::TemporarilyUnavailable,
            "the audit store is unavailable; nothing was changed",
        )
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    operator(&b, &headers, "broker/task.list").await?;
    let tasks = b.control.tasks(q.all).await?;
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
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    body: Result<Json<StartBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "broker/task.start";
    let op = operator(&b, &headers, ACTION).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let template =
        b.cfg.templates.get(&body.template).ok_or_else(|| {
            ApiError::bad_request(format!("no task template {:?}", body.template))
        })?;
    if body.sub.trim().is_empty() {
        return Err(ApiError::bad_request(
            "sub must name the user the task is for",
        ));
    }
    let intent = body
        .authorization_details
        .as_ref()
        .map(mandate_intent::Intent::parse)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request(format!(
                "authorization_details are not a valid intent (docs/INTENT.md): {e}"
            ))
        })?;
    let id = body
        .id
        .clone()
        .unwrap_or_else(|| format!("task-{}", uuid::Uuid::now_v7()));
    let deadline = b
        .clock
        .now_ms()
        .saturating_add(i64::try_from(template.max_duration.as_millis()).unwrap_or(i64::MAX));
    let detail = json!({
        "id": id, "template": body.template, "sub": body.sub, "deadline_ms": deadline,
        "intent_hash": intent.as_ref().map(mandate_intent::Intent::hash),
    });
    record(&b, &op, ACTION, true, &format!("start task {id}"), &detail).await?;
    let task = b
        .control
        .start_task(&id, &body.template, &body.sub, deadline, op.sub())
        .await?;
    let mut out = json!(task);
    if let Some(intent) = intent {
        // Judged for every agent the template lets work on the task (the
        // strictest answer per grant): what policy does not grant outright
        // waits for the user's one approval until the task's deadline.
        let caller = |act: Vec<String>| mandate_core::CallerData {
            iss: b.cfg.issuer.clone(),
            sub: body.sub.clone(),
            act,
            scope: template.scope.clone(),
            task_id: Some(id.clone()),
            build: None,
            sid: None,
            jti: None,
        };
        let mut callers: Vec<_> = template
            .agents
            .iter()
            .map(|a| caller(vec![a.clone()]))
            .collect();
        if callers.is_empty() {
            callers.push(caller(Vec::new()));
        }
        let recorded = b
            .record_intent(&intent, &callers, op.sub(), deadline)
            .await?;
        if let Some(obj) = out.as_object_mut() {
            obj.insert("intent".into(), json!(recorded));
        }
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn end(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let status = match action.as_str() {
        "complete" => TaskStatus::Completed,
        "cancel" => TaskStatus::Cancelled,
        _ => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "unknown task action (complete or cancel)",
            ));
        }
    };
    let name = format!("broker/task.{action}");
    let op = operator(&b, &headers, &name).await?;
    record(
        &b,
        &op,
        &name,
        true,
        &format!("{action} task {id}: its tokens are revoked"),
        &json!({"id": id}),
    )
    .await?;
    let task = b.control.end_task(&id, status, op.sub()).await?;
    tracing::warn!(task = %task.id, status = task.status.as_str(), "task ended; its tokens are revoked");
    Ok(Json(json!(task)))
}
