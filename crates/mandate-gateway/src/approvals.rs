//! Human approval of high-impact calls: the hold, and the approvers' API.
//!
//! When the decision carries the `approval` obligation, the pipeline makes
//! the call an approval request (durable in the control store), records
//! the decision, notifies the webhook, and holds the agent's `tools/call`
//! open until a person decides, the deadline passes, or the client goes
//! away. The upstream sees nothing until then. A decision is only ever
//! taken from an authenticated approver on `/api/approvals` (or the web
//! page), never from anything arriving on the agent's own channel; it binds
//! to the argument hash the approver was shown and releases the held call
//! once.
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

use crate::Gateway;
use crate::config::Role;
use crate::control::{ApiError, Operator, authenticate_operator, record, record_outcome};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use mandate_control::{ApprovalRequest, ApprovalStatus, ControlError, NewApproval, TaskIntent};
use serde::Deserialize;
use serde_json::{Value, json};
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
    /// The control store failed (fail closed).
    Unavailable(String),
}

/// Interval of progress notifications to a client that asked for them.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Held calls waiting in this process: approval id → wake-up.
#[derive(Default)]
pub(crate) struct Waiters {
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
    pub(crate) fn is_waiting(&self, id: &str) -> bool {
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
            tokio::task::spawn_blocking(move || {
                if let Ok(true) = control.close_approval(&id, ApprovalStatus::Withdrawn) {
                    tracing::info!(approval = %id, "held call abandoned by its client: withdrawn");
                }
            });
        }
    }
}

/// The page where a person decides `id`.
pub(crate) fn approval_url(gw: &Gateway, id: &str) -> String {
    format!("{}/approvals#{id}", gw.config().public_url)
}

impl Gateway {
    /// Creates the durable approval request for a held call.
    pub(crate) async fn create_approval(
        &self,
        new: NewApproval,
    ) -> Result<ApprovalRequest, String> {
        let control = self.control().clone();
        let created = tokio::task::spawn_blocking(move || control.create_approval(new))
            .await
            .map_err(|_| "internal error".to_owned())?
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
        let mut rx = self.waiters.register(&id);
        // The request was visible to approvers before this waiter existed: a
        // decision made in between woke nobody. Look at the store once first.
        rx.mark_changed();
        let mut guard = HoldGuard {
            waiters: &self.waiters,
            control: self.control().clone(),
            id: id.clone(),
            armed: true,
        };
        let remaining_ms = approval.request.deadline_ms - self.clock().now_ms();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0));
        let url = approval_url(self, &id);
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
        let mut step = 0.0;
        let outcome = loop {
            tokio::select! {
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
                    let control = self.control().clone();
                    let closed = id.clone();
                    let _ = tokio::task::spawn_blocking(move || control.close_approval(&closed, ApprovalStatus::Expired)).await;
                    // A decision may have landed in the same instant.
                    break self.settle(&id, &approval.request.args_hash).await.unwrap_or(HoldOutcome::Expired);
                }
                () = cancel.cancelled() => {
                    break HoldOutcome::Withdrawn;
                }
                _ = ticker.tick() => {
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
        if outcome == HoldOutcome::Withdrawn {
            let control = self.control().clone();
            let closed = id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                control.close_approval(&closed, ApprovalStatus::Withdrawn)
            })
            .await;
        }
        guard.armed = false;
        outcome
    }

    /// Reads the request after a wake-up; `None` if still pending.
    async fn settle(&self, id: &str, args_hash: &str) -> Option<HoldOutcome> {
        let control = self.control().clone();
        let id = id.to_owned();
        let hash = args_hash.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let current = control.approval(&id)?;
            match current.status {
                // Use it now: single use, bound to this call's arguments.
                ApprovalStatus::Approved => control
                    .release_approval(&id, &hash)
                    .map(|released| HoldOutcome::Approved(Approved(released))),
                ApprovalStatus::Denied => Ok(HoldOutcome::Denied(current)),
                ApprovalStatus::Expired => Ok(HoldOutcome::Expired),
                ApprovalStatus::Withdrawn => Ok(HoldOutcome::Withdrawn),
                ApprovalStatus::Pending => Err(ControlError::Conflict("pending".into())),
            }
        })
        .await;
        match result {
            Ok(Ok(outcome)) => Some(outcome),
            Ok(Err(ControlError::Conflict(m))) if m == "pending" => None,
            Ok(Err(e)) => Some(HoldOutcome::Unavailable(e.to_string())),
            Err(_) => Some(HoldOutcome::Unavailable("internal error".into())),
        }
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
            "url": approval_url(self, &a.id),
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
        let http = self.webhook_client.clone();
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

// ----- the approvers' API ------------------------------------------------------

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
        obj.insert("waiting".into(), gw.waiters.is_waiting(&a.id).into());
        obj.insert("url".into(), approval_url(gw, &a.id).into());
    }
    v
}

async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    authenticate_operator(&s.gw, &headers, "approval/list").await?;
    let status = match q.status.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(
            s.parse::<ApprovalStatus>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e))?,
        ),
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let control = s.gw.control().clone();
    let list = tokio::task::spawn_blocking(move || control.approvals(status, limit))
        .await
        .map_err(|_| ApiError::internal())??;
    let control = s.gw.control().clone();
    let intents = tokio::task::spawn_blocking(move || control.intent_approvals(status, limit))
        .await
        .map_err(|_| ApiError::internal())??;
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
        "url": approval_url(gw, &id),
    })
}

async fn show(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate_operator(&s.gw, &headers, "approval/show").await?;
    let control = s.gw.control().clone();
    let found = tokio::task::spawn_blocking(move || match control.approval(&id) {
        Ok(a) => Ok(Err(a)),
        Err(ControlError::NotFound { .. }) => control.intent_approval(&id).map(Ok),
        Err(e) => Err(e),
    })
    .await
    .map_err(|_| ApiError::internal())??;
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
    let op = authenticate_operator(&s.gw, &headers, action_name).await?;
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
    let control = gw.control().clone();
    let lookup = id.to_owned();
    let found = tokio::task::spawn_blocking(move || match control.approval(&lookup) {
        Ok(a) => Ok(Ok(a)),
        Err(ControlError::NotFound { .. }) => control.intent_approval(&lookup).map(Err),
        Err(e) => Err(e),
    })
    .await
    .map_err(|_| ApiError::internal())??;
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
    let subject = crate::control::operator_subject(&op.principal);
    let refusal = if !crate::control::operator_entries(gw, &op.principal)
        .any(|o| o.may_approve(&current.request.class))
    {
        Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not decide {} calls",
                op.name(),
                current.request.class
            ),
        ))
    } else if op.principal.sub == current.request.sub && !gw.config().approvals.allow_self_approval
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
    if let Some((status, code, why)) = refusal {
        record(gw, &subject, action_name, None, &why, &detail).await?;
        return Err(ApiError::new(status, code, why));
    }
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
    let rec = record(
        gw,
        &subject,
        action_name,
        Some(Role::Approver),
        &reason,
        &detail,
    )
    .await?;
    let control = gw.control().clone();
    let by = op.name().to_owned();
    let decided_id = id.to_owned();
    let result = tokio::task::spawn_blocking(move || {
        control.decide_approval(
            &decided_id,
            approve,
            &by,
            body.comment.as_deref(),
            &body.args_hash,
        )
    })
    .await
    .map_err(|_| ApiError::internal())
    .and_then(|r| r.map_err(ApiError::from))
    .map(|a| view(gw, &a));
    record_outcome(gw, &rec, result.as_ref()).await;
    let v = result?;
    gw.waiters.wake(id);
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
    let subject = crate::control::operator_subject(&op.principal);
    let refusal = if op.principal.sub != intent.key.sub {
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
    if let Some((status, code, why)) = refusal {
        record(gw, &subject, action_name, None, &why, &detail).await?;
        return Err(ApiError::new(status, code, why));
    }
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
    let rec = record(
        gw,
        &subject,
        action_name,
        Some(Role::Approver),
        &reason,
        &detail,
    )
    .await?;
    let control = gw.control().clone();
    let by = op.name().to_owned();
    let decided_id = id.to_owned();
    let result = tokio::task::spawn_blocking(move || {
        control.decide_intent(
            &decided_id,
            approve,
            &by,
            body.comment.as_deref(),
            &body.args_hash,
        )
    })
    .await
    .map_err(|_| ApiError::internal())
    .and_then(|r| r.map_err(ApiError::from))
    .map(|t| intent_view(gw, &t));
    record_outcome(gw, &rec, result.as_ref()).await;
    let v = result?;
    tracing::info!(approval = %id, approver = %op.name(), approve, task = %intent.key.task_id, "intent approval decided");
    Ok(v)
}
