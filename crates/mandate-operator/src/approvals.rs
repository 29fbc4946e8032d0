//! The approvers' API: people decide held calls and task intents.
//!
//! A decision is only ever taken from an authenticated approver here (or
//! on the approval page, which decides through [`decide`] too), never from
//! anything arriving on the agent's own channel. It is checked (class
//! permission, self-approval, still pending, the argument hash the approver
//! was shown), recorded durably before it takes effect, stored in the
//! control store, and the held call is woken ([`Gateway::wake_held`]): the
//! gateway keeps the hold and reads the decision back from the store.
//!
//! | method | path | who |
//! |---|---|---|
//! | GET  | `/api/approvals[?status=pending&limit=N]` | any operator |
//! | GET  | `/api/approvals/{id}` | any operator |
//! | POST | `/api/approvals/{id}/approve` or `/deny` `{args_hash, comment}` | an approver for the call's class |
//!
//! A task's **intent approval** (the grants of its declared intent that
//! policy did not grant outright, docs/INTENT.md) is listed and decided on
//! the same routes: `kind` is `"intent"`, `authorization_details` holds the
//! grants asked for, and `args_hash` is the intent's hash, to which the
//! decision binds. Only the task's own user may decide it (signed in as an
//! operator); approving grants every pending grant at once.

use crate::error::ApiError;
use crate::operator::{Operator, record, record_outcome};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use mandate_control::{ApprovalRequest, ApprovalStatus, ControlError, TaskIntent};
use mandate_gateway::{Gateway, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Clone)]
struct ApiState {
    gw: Arc<Gateway>,
}

/// The `/api/approvals` routes.
pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api/approvals", get(list))
        .route("/api/approvals/{id}", get(show))
        .route("/api/approvals/{id}/{action}", post(decide_route))
        .with_state(ApiState { gw })
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

/// An approval request as the API shows it (with whether a call is still
/// waiting for it in this process, and its page).
pub(crate) fn view(gw: &Gateway, a: &ApprovalRequest) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("waiting".into(), gw.is_held_here(&a.id).into());
        obj.insert("url".into(), gw.approval_url(&a.id).into());
    }
    v
}

async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&s.gw, &headers, "approval/list").await?;
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(
            s.parse::<ApprovalStatus>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e))?,
        ),
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let list = s.gw.control().approvals(status, limit).await?;
    let intents = s.gw.control().intent_approvals(status, limit).await?;
    let mut all: Vec<(i64, Value)> = list
        .iter()
        .map(|a| (a.created_ms, view(&s.gw, a)))
        .chain(
            intents
                .iter()
                .map(|t| (t.created_ms, intent_view(&s.gw, t))),
        )
        .collect();
    all.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
    all.truncate(limit);
    let list: Vec<Value> = all.into_iter().map(|(_, v)| v).collect();
    Ok(Json(json!({ "approvals": list })))
}

/// A task's intent approval as the API and the page show it: shaped like a
/// held call's request (`tool`, `class`, `args`, `args_hash`), with
/// `kind: "intent"` and the grants asked for as `authorization_details`.
pub(crate) fn intent_view(gw: &Gateway, t: &TaskIntent) -> Value {
    let id = t.approval_id.clone().unwrap_or_default();
    let pending = t.approval == Some(ApprovalStatus::Pending);
    let asked = if pending {
        t.pending()
    } else {
        t.intent.retain(|g| {
            t.state(g.identifier())
                .is_some_and(|s| s.status != mandate_control::GrantStatus::Granted || s.used > 0)
        })
    };
    let args: serde_json::Map<String, Value> = t
        .intent
        .grants()
        .iter()
        .map(|g| {
            let status = t
                .state(g.identifier())
                .map_or("unknown", |s| s.status.as_str());
            (
                g.identifier().to_owned(),
                Value::String(format!("{} [{status}]", g.describe())),
            )
        })
        .collect();
    json!({
        "kind": "intent",
        "id": id,
        "created_ms": t.created_ms,
        "status": t.approval.map(ApprovalStatus::as_str),
        "tool": "task intent",
        "class": "intent",
        "iss": t.key.iss,
        "sub": t.key.sub,
        "act": [t.requested_by],
        "task_id": t.key.task_id,
        "session": Value::Null,
        "policies": [],
        "reasons": [
            "the task declared what it will do before the agent read anything; these grants were not granted by policy outright",
            "approving grants all of them for this task (each with its uses); denying refuses all of them",
        ],
        "args": args,
        "authorization_details": asked.to_json(),
        "args_hash": t.intent_hash,
        "deadline_ms": t.deadline_ms,
        "decided_by": t.decided_by,
        "decided_ms": t.decided_ms,
        "comment": t.comment,
        "correlation_id": Value::Null,
        "waiting": pending && gw.clock().now_ms() <= t.deadline_ms,
        "url": gw.approval_url(&id),
    })
}

async fn show(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&s.gw, &headers, "approval/show").await?;
    let control = s.gw.control();
    let found = match control.approval(&id).await {
        Ok(a) => Err(a),
        Err(ControlError::NotFound { .. }) => Ok(control.intent_approval(&id).await?),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(match found {
        Err(call) => view(&s.gw, &call),
        Ok(intent) => intent_view(&s.gw, &intent),
    }))
}

/// A person's decision on a held call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecideBody {
    /// The argument hash the approver was shown: the decision binds to it.
    pub(crate) args_hash: String,
    /// Optional comment, recorded.
    #[serde(default)]
    pub(crate) comment: Option<String>,
}

async fn decide_route(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Result<Json<DecideBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let approve = match action.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such action",
            ));
        }
    };
    let action_name = if approve {
        "approval/approve"
    } else {
        "approval/deny"
    };
    let op = Operator::authenticate(&s.gw, &headers, action_name).await?;
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "{} (a decision must name the args_hash it was shown)",
                e.body_text()
            ),
        )
    })?;
    let v = decide(&s.gw, &op, &id, approve, body).await?;
    Ok((StatusCode::OK, Json(v)).into_response())
}

/// Decides `id` for `op`: checks the approver may decide this call,
/// records the decision (durably, before it takes effect), stores it and
/// wakes the held call. Shared by the API and the web page.
pub(crate) async fn decide(
    gw: &Arc<Gateway>,
    op: &Operator,
    id: &str,
    approve: bool,
    body: DecideBody,
) -> Result<Value, ApiError> {
    let action_name = if approve {
        "approval/approve"
    } else {
        "approval/deny"
    };
    let control = gw.control();
    let found = match control.approval(id).await {
        Ok(a) => Ok(a),
        Err(ControlError::NotFound { .. }) => Err(control.intent_approval(id).await?),
        Err(e) => return Err(e.into()),
    };
    let current = match found {
        Ok(call) => call,
        Err(intent) => return decide_intent(gw, op, id, approve, body, &intent).await,
    };
    let detail = json!({
        "approval": id,
        "tool": current.request.tool,
        "class": current.request.class,
        "args_hash": body.args_hash,
        "comment": body.comment,
        "for_sub": current.request.sub,
        "for_act": current.request.act,
        "correlation_id": current.request.correlation_id,
    });
    let subject = op.subject();
    let refusal = if !op.may_approve(gw, &current.request.class) {
        Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not decide {} calls",
                op.name(),
                current.request.class
            ),
        ))
    } else if op.identity().sub == current.request.sub && !gw.config().approvals.allow_self_approval
    {
        Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} delegated this call and may not approve their own agent's call (approvals.allow_self_approval = false)",
                op.name()
            ),
        ))
    } else if current.status != ApprovalStatus::Pending {
        Some((
            StatusCode::CONFLICT,
            "conflict",
            format!("approval {id} is {}, not pending", current.status.as_str()),
        ))
    } else if current.request.args_hash != body.args_hash {
        Some((
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "approval {id} is for other arguments than the ones named (argument hash {})",
                current.request.args_hash
            ),
        ))
    } else {
        None
    };
    let reason = format!(
        "{} {} {} call {id}{}",
        op.name(),
        if approve { "approved" } else { "denied" },
        current.request.tool,
        body.comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default()
    );
    let by = op.name().to_owned();
    let decided_id = id.to_owned();
    let v = record_and_apply(
        gw,
        &subject,
        action_name,
        refusal,
        &reason,
        &detail,
        move |control| async move {
            control
                .decide_approval(
                    &decided_id,
                    approve,
                    &by,
                    body.comment.as_deref(),
                    &body.args_hash,
                )
                .await
        },
        |a| view(gw, a),
    )
    .await?;
    gw.wake_held(id);
    tracing::info!(approval = %id, approver = %op.name(), approve, "approval decided");
    Ok(v)
}

/// Decides the intent approval `id` (of `intent`) for `op`: only the
/// task's own user; recorded durably
/// before it takes effect; binds to the intent hash the person was shown.
/// The token exchange waiting for it sees the decision on its next read.
async fn decide_intent(
    gw: &Arc<Gateway>,
    op: &Operator,
    id: &str,
    approve: bool,
    body: DecideBody,
    intent: &TaskIntent,
) -> Result<Value, ApiError> {
    let action_name = if approve {
        "intent/approve"
    } else {
        "intent/deny"
    };
    let detail = json!({
        "approval": id,
        "task_id": intent.key.task_id,
        "for_iss": intent.key.iss,
        "for_sub": intent.key.sub,
        "intent_hash": body.args_hash,
        "grants": intent.pending().grants().iter().map(|g| g.identifier()).collect::<Vec<_>>(),
        "comment": body.comment,
    });
    let subject = op.subject();
    let refusal = if op.identity().sub != intent.key.sub {
        Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not decide {}'s task intent: only the task's own user declares what it may do",
                op.name(),
                intent.key.sub
            ),
        ))
    } else if intent.approval != Some(ApprovalStatus::Pending) {
        Some((
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "intent approval {id} is {}, not pending",
                intent
                    .approval
                    .map_or("not requested", ApprovalStatus::as_str)
            ),
        ))
    } else if intent.intent_hash != body.args_hash {
        Some((
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "intent approval {id} is for another intent than the one named (hash {})",
                intent.intent_hash
            ),
        ))
    } else {
        None
    };
    let reason = format!(
        "{} {} the intent of task {} ({id}){}",
        op.name(),
        if approve { "approved" } else { "refused" },
        intent.key.task_id,
        body.comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default()
    );
    let by = op.name().to_owned();
    let decided_id = id.to_owned();
    let v = record_and_apply(
        gw,
        &subject,
        action_name,
        refusal,
        &reason,
        &detail,
        move |control| async move {
            control
                .decide_intent(
                    &decided_id,
                    approve,
                    &by,
                    body.comment.as_deref(),
                    &body.args_hash,
                )
                .await
        },
        |t| intent_view(gw, t),
    )
    .await?;
    tracing::info!(approval = %id, approver = %op.name(), approve, task = %intent.key.task_id, "intent approval decided");
    Ok(v)
}

/// A person's decision, on the record before it takes effect: a `refusal`
/// is recorded as a denial and returned; otherwise the decision is recorded
/// as allowed, `apply`ed to the control store, and its outcome recorded.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per kind of approval; the parts are all distinct"
)]
async fn record_and_apply<T, F>(
    gw: &Arc<Gateway>,
    subject: &mandate_core::Subject,
    action: &str,
    refusal: Option<(StatusCode, &'static str, String)>,
    reason: &str,
    detail: &Value,
    apply: impl FnOnce(Arc<mandate_control::ControlStore>) -> F,
    show: impl FnOnce(&T) -> Value,
) -> Result<Value, ApiError>
where
    F: Future<Output = Result<T, ControlError>>,
{
    if let Some((status, code, why)) = refusal {
        record(gw, subject, action, None, &why, detail).await?;
        return Err(ApiError::new(status, code, why));
    }
    let rec = record(gw, subject, action, Some(Role::Approver), reason, detail).await?;
    let result = apply(gw.control().clone())
        .await
        .map_err(ApiError::from)
        .map(|t| show(&t));
    record_outcome(gw, &rec, result.as_ref()).await;
    result
}
