//! The audit API under `/api/audit`: what an investigator reads.
//!
//! | method | path | role |
//! |---|---|---|
//! | GET  | `/api/audit/sessions/{id}` | any operator: the session's timeline |
//! | GET  | `/api/decisions/{id}` | any operator: one decision, as recorded (why a call was denied) |
//! | GET  | `/api/audit/checkpoints` | any operator: the signed checkpoints |
//! | POST | `/api/audit/checkpoint` | admin: sign a checkpoint now |
//!
//! Reading a session's or a decision's records is itself recorded (who
//! read which), before the records are returned.

use crate::error::ApiError;
use crate::operator::{Operator, record};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use mandate_gateway::{Gateway, Role};
use serde_json::{Value, json};
use std::sync::Arc;

/// Most records one timeline returns.
const MAX_RECORDS: usize = 10_000;

/// The `/api/audit` routes.
pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api/audit/sessions/{id}", get(session))
        .route("/api/audit/checkpoints", get(checkpoints))
        .route("/api/decisions/{id}", get(decision))
        .route("/api/audit/checkpoint", post(checkpoint))
        .with_state(gw)
}

fn store_error(e: &mandate_audit::AuditError) -> ApiError {
    tracing::error!(error = %e, "audit store read failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the audit store cannot be read right now",
    )
}

/// The timeline of session `id` (as JSON), for an operator.
pub(crate) async fn session_timeline(gw: &Gateway, id: &str) -> Result<Value, ApiError> {
    let store = gw.audit().store().clone();
    let session = id.to_owned();
    let records =
        tokio::task::spawn_blocking(move || mandate_audit::read_records(store, Some(&session)))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(|e| store_error(&e))?;
    let truncated = records.len() > MAX_RECORDS;
    let shown = records.get(..MAX_RECORDS).unwrap_or(&records);
    let timeline = mandate_audit::replay::timeline(shown);
    let calls = timeline
        .iter()
        .map(|e| e.correlation_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(json!({
        "session": id,
        "subject": timeline.first().map(|e| &e.subject),
        "records": timeline.len(),
        "calls": calls,
        "truncated": truncated,
        "timeline": timeline,
    }))
}

async fn session(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let op = Operator::authenticate(&gw, &headers, "control/audit.read_session").await?;
    record_read(&gw, &op, "session", &id).await?;
    Ok(Json(session_timeline(&gw, &id).await?))
}

/// Records that `op` read `what` `id` (`control/audit.read_<what>`), before
/// anything is returned: investigators are on the record too.
async fn record_read(gw: &Gateway, op: &Operator, what: &str, id: &str) -> Result<(), ApiError> {
    record(
        gw,
        &op.subject(),
        &format!("control/audit.read_{what}"),
        op.any_role(),
        &format!("{} read {what} {id}", op.name()),
        &json!({ what: id }),
    )
    .await
    .map(|_| ())
}

/// Decision `id` as the audit log holds it: the decision record (policies
/// that decided, their reasons, obligations, the reason code the agent was
/// given, where each argument's values came from, redacted as recorded),
/// the records that name it (its outcome), and whether the policy set that
/// decided is the one in force now.
async fn decision(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let op = Operator::authenticate(&gw, &headers, "control/audit.read_decision").await?;
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ApiError::bad_request("a decision id is like dec_01a2…"));
    }
    record_read(&gw, &op, "decision", &id).await?;
    let store = gw.audit().store().clone();
    let wanted = id.clone();
    let records =
        tokio::task::spawn_blocking(move || mandate_audit::read_by_decision(store, &wanted))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(|e| store_error(&e))?;
    let body = |r: &mandate_audit::StoredRecord| -> Value {
        let mut v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("seq".into(), json!(r.seq));
        }
        v
    };
    let Some(made) = records
        .iter()
        .find(|r| r.record.kind == mandate_core::RecordKind::Decision)
        .or_else(|| records.first())
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no decision with this id in the audit log",
        ));
    };
    let recorded_hash = made.record.decision.policy_hash.clone();
    let active_hash = gw.policy().policy_hash();
    Ok(Json(json!({
        "decision": body(made),
        "records": records.iter().map(body).collect::<Vec<_>>(),
        "policy_set": {
            "recorded": recorded_hash,
            "active": active_hash,
            "in_force": recorded_hash == active_hash,
        },
    })))
}

async fn checkpoints(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&gw, &headers, "control/audit.checkpoints").await?;
    let store = gw.audit().store().clone();
    let list = tokio::task::spawn_blocking(move || mandate_audit::read_checkpoints(store))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| store_error(&e))?;
    Ok(Json(json!({ "checkpoints": list })))
}

async fn checkpoint(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    Operator::require(&gw, &headers, Role::Admin, "control/audit.checkpoint").await?;
    let signed = gw.audit().checkpoint().await.map_err(|e| store_error(&e))?;
    Ok(Json(json!({ "checkpoint": signed })))
}
