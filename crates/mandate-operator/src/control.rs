//! The control API under `/api`: operators pull kill switches and move
//! changes through the two-person gate.
//!
//! | method | path | role |
//! |---|---|---|
//! | GET  | `/api/revocations[?all=true]` | any operator |
//! | POST | `/api/revocations` `{kind, value, reason}` | admin |
//! | POST | `/api/revocations/{id}/lift` | admin |
//! | GET  | `/api/changes`, `/api/changes/{id}` | any operator |
//! | POST | `/api/changes` `{kind: "policy_set", files, summary}` or `{kind: "scope_ceiling", agent, scope, summary}` | admin |
//! | POST | `/api/changes/{id}/approve`, `/reject` `{comment}` | admin, not the proposer |
//! | POST | `/api/changes/{id}/activate` | admin |
//! | GET  | `/api/tools` | any operator: tool pins |
//! | POST | `/api/tools/{name}/approve` `{comment}` | admin |
//!
//! Operators authenticate with a bearer JWT from a configured issuer whose
//! `aud` is `<public_url>/api` and which carries no `act` claim: an agent
//! token never operates Mandate. Each mutating request is decided (role
//! check, state check), the decision is recorded durably in the audit log
//! BEFORE anything changes (if the log cannot write, nothing changes: 503),
//! and what happened is recorded after. Errors are JSON
//! `{"error", "error_description"}` (the RFC 6749 §5.2 shape).

use crate::error::ApiError;
use crate::operator::{Operator, record, record_outcome};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use mandate_control::{Change, ChangeKind, ChangeStatus, RevocationKind};
use mandate_gateway::{Gateway, Role};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most bytes of policy text one proposal may carry.
const MAX_POLICY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct ApiState {
    gw: Arc<Gateway>,
}

/// One policy-set installation at a time in this process (an activation
/// through the API, or one followed from another replica): each swaps the
/// policy directory.
static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How soon a replica that could not install the policy set in force tries
/// again.
const FOLLOW_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The `/api` control routes.
pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    let state = ApiState { gw };
    Router::new()
        .route("/api/revocations", get(list_revocations).post(revoke))
        .route("/api/revocations/{id}/lift", post(lift))
        .route("/api/changes", get(list_changes).post(propose))
        .route("/api/changes/{id}", get(show_change))
        .route("/api/changes/{id}/{action}", post(review_or_activate))
        .route("/api/tools", get(list_tool_pins))
        .route("/api/tools/{name}/approve", post(approve_tool))
        .with_state(state)
}

/// Runs blocking store work off the async threads.
pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

// ----- kill switches ---------------------------------------------------------

/// `?all=true`: closed entries too (revocations, tasks).
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub(crate) all: bool,
}

async fn list_revocations(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&s.gw, &headers, "control/revocations.list").await?;
    let control = s.gw.control().clone();
    let list = control.revocations(q.all).await.map_err(ApiError::from)?;
    Ok(Json(json!({ "revocations": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    kind: String,
    value: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn revoke(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<RevokeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "control/revoke";
    let op = Operator::require(&s.gw, &headers, Role::Admin, ACTION).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind: RevocationKind = body.kind.parse().map_err(ApiError::bad_request)?;
    if body.value.trim().is_empty() {
        return Err(ApiError::bad_request("value must not be empty"));
    }
    let reason = body
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| format!("revoked by {}", op.name()));
    let detail = json!({"kind": kind, "value": body.value, "reason": reason});
    let rec = record(
        &s.gw,
        &op.subject(),
        ACTION,
        Some(Role::Admin),
        &format!("revoke {kind} {}", body.value),
        &detail,
    )
    .await?;
    let control = s.gw.control().clone();
    let by = op.name().to_owned();
    let result = control
        .revoke(kind, &body.value, &reason, &by)
        .await
        .map_err(ApiError::from);
    let result = result.map(|r| to_value(&r));
    record_outcome(&s.gw, &rec, result.as_ref()).await;
    let v = result?;
    tracing::warn!(revocation = %v, operator = %op.name(), "kill switch pulled");
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn lift(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    const ACTION: &str = "control/lift";
    let op = Operator::require(&s.gw, &headers, Role::Admin, ACTION).await?;
    let control = s.gw.control().clone();
    let current = control.revocation(id).await.map_err(ApiError::from)?;
    let rec = record(
        &s.gw,
        &op.subject(),
        ACTION,
        Some(Role::Admin),
        &format!("lift revocation {id} ({} {})", current.kind, current.value),
        &to_value(&current),
    )
    .await?;
    let control = s.gw.control().clone();
    let by = op.name().to_owned();
    let result = control
        .lift(id, &by)
        .await
        .map_err(ApiError::from)
        .map(|r| to_value(&r));
    record_outcome(&s.gw, &rec, result.as_ref()).await;
    Ok(Json(result?))
}

// ----- change gate ---------------------------------------------------------

async fn list_changes(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&s.gw, &headers, "control/changes.list").await?;
    let control = s.gw.control().clone();
    let list = control.changes().await.map_err(ApiError::from)?;
    // Listings omit policy file contents (see /api/changes/{id}).
    let list: Vec<Value> = list.iter().map(change_summary).collect();
    Ok(Json(
        json!({ "changes": list, "change_gate": s.gw.config().change_gate }),
    ))
}

async fn show_change(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&s.gw, &headers, "control/changes.show").await?;
    let control = s.gw.control().clone();
    let change = control.change(&id).await.map_err(ApiError::from)?;
    Ok(Json(to_value(&change)))
}

/// A change without its payload when that is a whole policy set.
fn change_summary(c: &Change) -> Value {
    let mut v = to_value(c);
    if c.kind == ChangeKind::PolicySet
        && let Some(obj) = v.as_object_mut()
    {
        let files: Vec<String> = c
            .payload
            .get("files")
            .and_then(Value::as_object)
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        obj.insert("payload".into(), json!({ "files": files }));
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeBody {
    kind: String,
    #[serde(default)]
    summary: String,
    /// policy_set: file name → text.
    #[serde(default)]
    files: Option<BTreeMap<String, String>>,
    /// scope_ceiling: the agent.
    #[serde(default)]
    agent: Option<String>,
    /// scope_ceiling: the ceiling.
    #[serde(default)]
    scope: Option<String>,
}

async fn propose(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ProposeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    const ACTION: &str = "control/change.propose";
    let op = Operator::require(&s.gw, &headers, Role::Admin, ACTION).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind: ChangeKind = body.kind.parse().map_err(ApiError::bad_request)?;
    let (target, payload, hash, detail) = match kind {
        ChangeKind::PolicySet => {
            if !s.gw.config().change_gate {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the change gate is off (policy.change_gate = false): policies load from the policy directory",
                ));
            }
            let files = body
                .files
                .ok_or_else(|| ApiError::bad_request("a policy_set change needs `files`"))?;
            let hash = validate_policy_files(&files)?;
            let names: Vec<&String> = files.keys().collect();
            let detail =
                json!({"kind": kind, "files": names, "policy_hash": hash, "summary": body.summary});
            (String::new(), json!({ "files": files }), hash, detail)
        }
        ChangeKind::ScopeCeiling => {
            let agent = body
                .agent
                .filter(|a| !a.trim().is_empty())
                .ok_or_else(|| ApiError::bad_request("a scope_ceiling change needs `agent`"))?;
            let scope = mandate_core::Scope::parse(body.scope.as_deref().unwrap_or_default());
            let payload = json!({ "scope": scope.to_oauth_string() });
            let hash = match &payload {
                Value::Object(m) => mandate_core::canonical_args_hash(m),
                _ => String::new(),
            };
            let detail = json!({"kind": kind, "agent": agent, "scope": scope.to_oauth_string(), "summary": body.summary});
            (agent, payload, hash, detail)
        }
    };
    let rec = record(
        &s.gw,
        &op.subject(),
        ACTION,
        Some(Role::Admin),
        &format!("propose {} change {}", kind.as_str(), body.summary),
        &detail,
    )
    .await?;
    let control = s.gw.control().clone();
    let by = op.name().to_owned();
    let summary = body.summary;
    let result = control
        .propose(kind, &target, payload, &hash, &summary, &by)
        .await
        .map_err(ApiError::from)
        .map(|c| change_summary(&c));
    record_outcome(&s.gw, &rec, result.as_ref()).await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    #[serde(default)]
    comment: Option<String>,
}

async fn review_or_activate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<ReviewBody>>,
) -> Result<Json<Value>, ApiError> {
    let action_name = match action.as_str() {
        "approve" => "control/change.approve",
        "reject" => "control/change.reject",
        "activate" => "control/change.activate",
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such action",
            ));
        }
    };
    let op = Operator::require(&s.gw, &headers, Role::Admin, action_name).await?;
    let comment = body.and_then(|Json(b)| b.comment);
    let control = s.gw.control().clone();
    let lookup = id.clone();
    let change = control.change(&lookup).await.map_err(ApiError::from)?;
    let detail = json!({"change": id, "kind": change.kind, "target": change.target, "payload_hash": change.payload_hash, "comment": comment});

    // Decide first (recorded either way), then act.
    let refusal = match action.as_str() {
        "activate" if change.status != ChangeStatus::Approved => Some(format!(
            "change {id} is {}: only an approved change can be activated",
            change.status.as_str()
        )),
        "approve" | "reject" if change.status != ChangeStatus::Proposed => Some(format!(
            "change {id} is {}, not proposed",
            change.status.as_str()
        )),
        "approve" | "reject" if change.proposed_by == op.name() => Some(format!(
            "change {id} was proposed by {}: a different operator must review it (two-person rule)",
            op.name()
        )),
        _ => None,
    };
    if let Some(why) = refusal {
        record(&s.gw, &op.subject(), action_name, None, &why, &detail).await?;
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", why));
    }
    let rec = record(
        &s.gw,
        &op.subject(),
        action_name,
        Some(Role::Admin),
        &format!("{action} {} change {id}", change.kind.as_str()),
        &detail,
    )
    .await?;
    let result = match action.as_str() {
        "activate" => activate(&s, &change, op.name()).await,
        _ => {
            let control = s.gw.control().clone();
            let by = op.name().to_owned();
            let approve = action == "approve";
            control
                .review(&id, approve, &by, comment.as_deref())
                .await
                .map_err(ApiError::from)
        }
    }
    .map(|c| change_summary(&c));
    record_outcome(&s.gw, &rec, result.as_ref()).await;
    Ok(Json(result?))
}

async fn activate(s: &ApiState, change: &Change, by: &str) -> Result<Change, ApiError> {
    let _one_at_a_time = INSTALLING.lock().await;
    if change.kind == ChangeKind::PolicySet {
        let files = policy_files_of(change)?;
        let dir = s.gw.policy().dir().to_path_buf();
        let expected = change.payload_hash.clone();
        let gw = s.gw.clone();
        tokio::task::spawn_blocking(move || install_policy_set(&gw, &dir, &files, &expected))
            .await
            .map_err(|_| ApiError::internal())??;
    }
    let control = s.gw.control().clone();
    let id = change.id.clone();
    let by = by.to_owned();
    control.activate(&id, &by).await.map_err(ApiError::from)
}

/// With the change gate on and a control store shared with other
/// replicas: installs the policy set another replica put in force, as its
/// notification arrives (and every poll, should one be lost), so every
/// replica decides with the set in force. `None` when there is nothing to
/// follow. Fail closed: from the moment this replica learns of a set it
/// has not installed (and from start until it first compares), every call
/// is denied and `/readyz` answers 503 with `"policies": "behind"`; a set
/// that does not load here is retried every second and logged at error
/// level, never served around.
pub fn spawn_policy_follower(gw: Arc<Gateway>) -> Option<tokio::task::JoinHandle<()>> {
    let every = gw.control().poll_every()?;
    if !gw.config().change_gate {
        return None;
    }
    let mut changes = gw.control().signal(mandate_control::Topic::Changes);
    // Until the set in force among replicas has been compared with the
    // one loaded here, calls are denied and /readyz says "behind".
    gw.set_policy_behind(Some("not yet compared with the other replicas".to_owned()));
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = changes.changed() => if changed.is_err() { break },
                // Behind (calls denied): try again soon, not at the next poll.
                () = tokio::time::sleep(FOLLOW_RETRY.min(every)), if failing => {}
            }
            failing = match follow_policy_set(&gw).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!(error = %e, "could not install the policy set another replica activated; calls are denied here until it is");
                    true
                }
            };
        }
    }))
}

/// Installs the policy set in force in the control store, unless it is
/// the one loaded here already.
async fn follow_policy_set(gw: &Arc<Gateway>) -> Result<(), String> {
    let _one_at_a_time = INSTALLING.lock().await;
    let active = gw
        .control()
        .active_changes(ChangeKind::PolicySet)
        .await
        .map_err(|e| e.to_string())?;
    let Some(change) = active.into_iter().next() else {
        gw.set_policy_behind(None);
        return Ok(());
    };
    if change.payload_hash == gw.policy().policy_hash() {
        gw.set_policy_behind(None);
        return Ok(());
    }
    // Fail closed until it is installed: the loaded set may permit what
    // the set in force forbids.
    gw.set_policy_behind(Some(format!(
        "policy set {} (change {}) is not installed yet",
        change.payload_hash, change.id
    )));
    let files = policy_files_of(&change).map_err(|e| e.message)?;
    let dir = gw.policy().dir().to_path_buf();
    let worker = gw.clone();
    let expected = change.payload_hash.clone();
    tokio::task::spawn_blocking(move || install_policy_set(&worker, &dir, &files, &expected))
        .await
        .map_err(|_| "the installing worker stopped".to_owned())?
        .map_err(|e| e.message)?;
    gw.set_policy_behind(None);
    tracing::warn!(change = %change.id, policy_hash = %change.payload_hash, "policy set activated on another replica installed here");
    Ok(())
}

/// The files of a policy-set change.
pub fn policy_files_of(change: &Change) -> Result<BTreeMap<String, String>, ApiError> {
    serde_json::from_value(change.payload.get("files").cloned().unwrap_or(Value::Null))
        .map_err(|e| ApiError::server(format!("change {} has no readable files: {e}", change.id)))
}

/// Whether `name` may be a file of a policy set: a plain file name ending
/// in `.cedar` or `.cedarschema` (no directories, no hidden files).
fn valid_policy_file_name(name: &str) -> bool {
    !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && (name
            .strip_suffix(mandate_policy::POLICY_EXTENSION)
            .is_some_and(|s| s.ends_with('.'))
            || name
                .strip_suffix(mandate_policy::SCHEMA_EXTENSION)
                .is_some_and(|s| s.ends_with('.')))
}

/// Checks a proposed policy set compiles (strict validation against its
/// schema) and returns its policy hash.
fn validate_policy_files(files: &BTreeMap<String, String>) -> Result<String, ApiError> {
    if let Some(bad) = files.keys().find(|n| !valid_policy_file_name(n)) {
        return Err(ApiError::bad_request(format!(
            "file name {bad:?} is not allowed: plain names ending in .cedar or .cedarschema"
        )));
    }
    if files.values().map(String::len).sum::<usize>() > MAX_POLICY_BYTES {
        return Err(ApiError::bad_request("the policy set exceeds 1 MiB"));
    }
    mandate_policy::PolicyEngine::check_sources(files)
        .map_err(|e| ApiError::bad_request(format!("the proposed policy set is invalid: {e}")))
}

/// Replaces the policy files in `dir` with `files` and reloads the engine;
/// the new set must load and hash to `expected`, otherwise the previous
/// files are restored and reloaded (the last good set keeps serving).
fn install_policy_set(
    gw: &Gateway,
    dir: &std::path::Path,
    files: &BTreeMap<String, String>,
    expected: &str,
) -> Result<(), ApiError> {
    let previous = read_policy_files(dir)
        .map_err(|e| ApiError::server(format!("reading {}: {e}", dir.display())))?;
    let fail = ApiError::server;
    replace_policy_files(dir, files)
        .map_err(|e| fail(format!("writing {}: {e}", dir.display())))?;
    let loaded = gw.policy().reload().map_err(|e| e.to_string());
    let hash = gw.policy().policy_hash();
    if loaded.is_ok() && hash == expected {
        tracing::warn!(policy_hash = %hash, "policy set replaced through the change gate");
        return Ok(());
    }
    // Put the previous set back.
    let restored = replace_policy_files(dir, &previous).is_ok() && gw.policy().reload().is_ok();
    let previous = if restored {
        "restored"
    } else {
        "could NOT be restored"
    };
    Err(ApiError::server_saying(
        format!(
            "the approved policy set did not load as approved; previous set {previous} (the audit record and the log say why)"
        ),
        format!(
            "the approved policy set did not load as approved ({}); previous set {previous}",
            loaded
                .err()
                .unwrap_or_else(|| format!("hash {hash} != {expected}")),
        ),
    ))
}

/// The `*.cedar` and `*.cedarschema` files of `dir`.
pub fn read_policy_files(dir: &std::path::Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_file() && valid_policy_file_name(&name) {
            out.insert(name, std::fs::read_to_string(entry.path())?);
        }
    }
    Ok(out)
}

/// Makes `dir` hold exactly `files` (among policy files): writes each via
/// a temporary file and rename, then removes policy files not in `files`.
pub fn replace_policy_files(
    dir: &std::path::Path,
    files: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    for existing in read_policy_files(dir)?.keys() {
        if !files.contains_key(existing) {
            std::fs::remove_file(dir.join(existing))?;
        }
    }
    Ok(())
}

// ----- tool pins ---------------------------------------------------------------

async fn list_tool_pins(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    Operator::authenticate(&s.gw, &headers, "control/tools.list").await?;
    let control = s.gw.control().clone();
    let pins = control.tool_pins().await.map_err(ApiError::from)?;
    Ok(Json(json!({ "tools": pins })))
}

async fn approve_tool(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<ReviewBody>>,
) -> Result<Json<Value>, ApiError> {
    const ACTION: &str = "control/tool.approve";
    let op = Operator::require(&s.gw, &headers, Role::Admin, ACTION).await?;
    let comment = body.and_then(|Json(b)| b.comment);
    let pin =
        s.gw.approve_tool(&name, op.name(), comment.as_deref())
            .await
            .map_err(|e| ApiError::unavailable("the tool pin store is unavailable", e))?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no tool {name} in the upstreams' current catalogues"),
                )
            })?;
    Ok(Json(to_value(&pin)))
}
