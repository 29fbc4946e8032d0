//! A task's intent: the grants it was given, and their uses.
//!
//! The broker records the intent a task requested (`authorization_details`,
//! parsed by `mandate-intent`), each grant `granted` outright by policy,
//! `pending` the user's approval, or `refused`. All pending grants go to
//! the user as **one** intent approval (`approval_id`), decided as a whole:
//! approving grants every pending grant at once, refusing (or letting the
//! deadline pass) refuses them all. The gateway looks up the granted
//! intent and consumes one use of a grant per covered call, with one
//! conditional `UPDATE`: a count never goes below zero, and two callers
//! racing for the last use cannot both have it.
//!
//! Everything is keyed by [`IntentKey`] (issuer, user, task id): nothing
//! here reads or consumes a grant of another user's or another issuer's
//! task.

use crate::approvals::ApprovalStatus;
use crate::db::{Record, Sql, args};
use crate::error::ControlError;
use crate::signal::Topic;
use crate::store::Store;
use mandate_intent::Intent;
use serde::{Deserialize, Serialize};

/// Whose task: the token's issuer, user (`sub`) and task id. Every
/// operation names all three.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IntentKey {
    /// The issuer of the user's tokens (the broker's issuer).
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The task.
    pub task_id: String,
}

impl IntentKey {
    /// The key of `task_id` of `sub` at `iss`.
    pub fn new(iss: impl Into<String>, sub: impl Into<String>, task_id: impl Into<String>) -> Self {
        Self {
            iss: iss.into(),
            sub: sub.into(),
            task_id: task_id.into(),
        }
    }
}

/// Where one grant stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
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
pub enum GrantStatus {
    /// In force: calls it covers may use it.
    Granted,
    /// Waiting for the user's approval of the intent.
    Pending,
    /// Not given (by policy, by the user, or because nobody decided in
    /// time).
    Refused,
}

impl GrantStatus {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn unknown_status(s: &str) -> String {
    format!("unknown grant status {s:?} (granted, pending, refused)")
}

/// One grant of a task's intent, with its status and uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantState {
    /// The grant's identifier in the intent.
    pub identifier: String,
    /// Status.
    pub status: GrantStatus,
    /// The grant's count (`None`: no count).
    pub max_uses: Option<u32>,
    /// Uses left (`None`: no count).
    pub uses_left: Option<u32>,
    /// Uses consumed.
    pub used: u32,
    /// When it was last used (Unix milliseconds).
    pub last_used_ms: Option<i64>,
}

impl GrantState {
    /// Whether a call may use it now: granted, with a use left.
    pub fn is_usable(&self) -> bool {
        self.status == GrantStatus::Granted && self.uses_left != Some(0)
    }
}

/// A task's intent as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskIntent {
    /// Whose task.
    pub key: IntentKey,
    /// The intent as requested (every grant, whatever its status).
    pub intent: Intent,
    /// [`Intent::hash`] of it; an approval binds to it.
    pub intent_hash: String,
    /// Each grant's status and uses, in declared order.
    pub grants: Vec<GrantState>,
    /// Who asked (the agent, or the operator who started the task).
    pub requested_by: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// After this (Unix milliseconds), a pending approval can no longer be
    /// given.
    pub deadline_ms: i64,
    /// The one intent approval request, when any grant needed the user.
    pub approval_id: Option<String>,
    /// Its status (`None` when no grant needed the user).
    pub approval: Option<ApprovalStatus>,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// When (Unix milliseconds).
    pub decided_ms: Option<i64>,
    /// The decider's comment.
    pub comment: Option<String>,
}

impl TaskIntent {
    /// The grants in force, as an intent to cover calls with (uses are
    /// consumed through the store).
    pub fn granted(&self) -> Intent {
        self.with_status(GrantStatus::Granted)
    }

    /// The grants waiting for the user (what the approval page asks about).
    pub fn pending(&self) -> Intent {
        self.with_status(GrantStatus::Pending)
    }

    fn with_status(&self, status: GrantStatus) -> Intent {
        self.intent.retain(|g| {
            self.state(g.identifier())
                .is_some_and(|s| s.status == status)
        })
    }

    /// The state of grant `identifier`.
    pub fn state(&self, identifier: &str) -> Option<&GrantState> {
        self.grants.iter().find(|g| g.identifier == identifier)
    }

    /// Whether grant `identifier` is granted with a use left (a snapshot:
    /// only [`ControlStore::consume_grant`] takes a use).
    pub fn has_use_left(&self, identifier: &str) -> bool {
        self.state(identifier).is_some_and(GrantState::is_usable)
    }
}

/// One use taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consumed {
    /// The grant used (the audit record names it).
    pub identifier: String,
    /// Uses left after this one (`None`: no count).
    pub uses_left: Option<u32>,
    /// Uses consumed, this one included.
    pub used: u32,
}

impl Store {
    /// Records the intent `key`'s task requested, with each grant's status
    /// as policy decided it (`statuses`, in the intent's order). When any
    /// grant is `pending`, one intent approval request is opened for all
    /// of them (`approval_id`, `approval = pending`) that can be decided
    /// until `deadline_ms`.
    ///
    /// A task has one intent: recording the same intent again returns the
    /// record unchanged; a different one is a conflict (a later token may
    /// only narrow the recorded intent, which the broker checks).
    pub(crate) fn record_intent(
        &self,
        key: &IntentKey,
        intent: &Intent,
        statuses: &[GrantStatus],
        requested_by: &str,
        deadline_ms: i64,
    ) -> Result<TaskIntent, ControlError> {
        if key.iss.is_empty() || key.sub.is_empty() || key.task_id.is_empty() {
            return Err(ControlError::Invalid(
                "an intent belongs to a task of a user at an issuer: none may be empty".into(),
            ));
        }
        if statuses.len() != intent.len() {
            return Err(ControlError::Invalid(format!(
                "{} statuses for {} grants",
                statuses.len(),
                intent.len()
            )));
        }
        let hash = intent.hash();
        let canonical = intent.canonical();
        let now = self.clock().now_ms();
        let pending = statuses.contains(&GrantStatus::Pending);
        let approval_id = pending.then(|| format!("apr-{}", uuid::Uuid::now_v7()));
        let approval = pending.then_some(ApprovalStatus::Pending.as_str());
        self.write(|tx| {
            if let Some(existing) = load(tx, key)? {
                if existing.intent_hash == hash {
                    return Ok(existing);
                }
                return Err(ControlError::Conflict(format!(
                    "task {} already has an intent; a later request may only narrow it",
                    key.task_id
                )));
            }
            tx.execute(
                "INSERT INTO intents (iss, sub, task_id, intent_hash, intent, requested_by, created_ms,
                                      deadline_ms, approval_id, approval)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                args![
                    &key.iss,
                    &key.sub,
                    &key.task_id,
                    &hash,
                    &canonical,
                    requested_by,
                    now,
                    deadline_ms,
                    approval_id.as_deref(),
                    approval
                ],
            )?;
            for (position, (grant, status)) in intent.grants().iter().zip(statuses).enumerate() {
                let uses = grant.max_uses().map(i64::from);
                let body = grant.to_json().to_string();
                tx.execute(
                    "INSERT INTO intent_grants (iss, sub, task_id, identifier, position, body, status,
                                                max_uses, uses_left)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                    args![
                        &key.iss,
                        &key.sub,
                        &key.task_id,
                        grant.identifier(),
                        i64::try_from(position).unwrap_or(i64::MAX),
                        &body,
                        status.as_str(),
                        uses
                    ],
                )?;
            }
            load(tx, key)?.ok_or_else(|| not_found(&key.task_id))
        })
    }

    /// The intent of `key`'s task, if one was recorded.
    pub(crate) fn intent(&self, key: &IntentKey) -> Result<Option<TaskIntent>, ControlError> {
        self.read(|tx| load(tx, key))
    }

    /// The intent whose approval request is `approval_id`.
    pub(crate) fn intent_approval(&self, approval_id: &str) -> Result<TaskIntent, ControlError> {
        self.read(|tx| {
            let key = key_of_approval(tx, approval_id)?;
            load(tx, &key)?.ok_or_else(|| not_found(approval_id))
        })
    }

    /// Intents with an approval request, newest first, optionally of one
    /// approval status (the approval page lists the pending ones).
    pub(crate) fn intent_approvals(
        &self,
        status: Option<ApprovalStatus>,
        limit: usize,
    ) -> Result<Vec<TaskIntent>, ControlError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            let keys = tx
                .query(
                    "SELECT iss, sub, task_id FROM intents
                     WHERE approval IS NOT NULL AND (CAST($1 AS TEXT) IS NULL OR approval = $1)
                     ORDER BY created_ms DESC, approval_id DESC LIMIT $2",
                    args![status.map(ApprovalStatus::as_str), limit],
                )?
                .iter()
                .map(key_row)
                .collect::<Result<Vec<_>, _>>()?;
            keys.iter()
                .filter_map(|k| load(tx, k).transpose())
                .collect()
        })
    }

    /// The user's decision on the intent approval `approval_id`: approving
    /// grants every pending grant, refusing refuses them, together. It
    /// binds to the intent the user was shown (`seen_hash`, its
    /// [`Intent::hash`]); only a pending request before its deadline can
    /// be decided (past it, the request expires and its grants are
    /// refused).
    pub(crate) fn decide_intent(
        &self,
        approval_id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
        seen_hash: &str,
    ) -> Result<TaskIntent, ControlError> {
        let now = self.clock().now_ms();
        // The inner result is the answer; an expiry is written even though
        // the answer is a refusal.
        self.write(|tx| {
            let key = key_of_approval(tx, approval_id)?;
            let current = load(tx, &key)?.ok_or_else(|| not_found(approval_id))?;
            if current.approval != Some(ApprovalStatus::Pending) {
                return Ok(Err(ControlError::Conflict(format!(
                    "intent approval {approval_id} is {}, not pending",
                    current
                        .approval
                        .map_or("not requested", ApprovalStatus::as_str)
                ))));
            }
            if current.intent_hash != seen_hash {
                return Ok(Err(ControlError::Conflict(format!(
                    "intent approval {approval_id} is for another intent (hash {}, not {seen_hash})",
                    current.intent_hash
                ))));
            }
            if now > current.deadline_ms {
                close(tx, &key, ApprovalStatus::Expired, None, None, now)?;
                return Ok(Err(ControlError::Conflict(format!(
                    "intent approval {approval_id} passed its deadline; its grants were refused"
                ))));
            }
            let status = if approve {
                ApprovalStatus::Approved
            } else {
                ApprovalStatus::Denied
            };
            close(tx, &key, status, Some(by), comment, now)?;
            load(tx, &key)?.ok_or_else(|| not_found(approval_id)).map(Ok)
        })?
    }

    /// Ends a pending intent approval without a decision (`Expired`,
    /// `Withdrawn`): its grants are refused. Returns whether it was still
    /// pending.
    pub(crate) fn close_intent_approval(
        &self,
        approval_id: &str,
        status: ApprovalStatus,
    ) -> Result<bool, ControlError> {
        if !matches!(status, ApprovalStatus::Expired | ApprovalStatus::Withdrawn) {
            return Err(ControlError::Invalid(format!(
                "close_intent_approval cannot set {}",
                status.as_str()
            )));
        }
        let now = self.clock().now_ms();
        self.write(|tx| {
            let key = key_of_approval(tx, approval_id)?;
            close(tx, &key, status, None, None, now)
        })
    }

    /// Takes one use of grant `identifier` of `key`'s task: only a
    /// granted grant, only while a use is left. One conditional `UPDATE`,
    /// so concurrent callers (threads, processes, replicas) cannot both
    /// take the last use. `None`: no use was taken (unknown, not granted,
    /// or used up).
    pub(crate) fn consume_grant(
        &self,
        key: &IntentKey,
        identifier: &str,
    ) -> Result<Option<Consumed>, ControlError> {
        let now = self.clock().now_ms();
        self.write(|tx| consume(tx, key, identifier, now))
    }

    /// Takes one use of the first of `identifiers` (in order: a call's
    /// covering grants, [`mandate_intent::Coverage::identifiers`]) that
    /// has one.
    pub(crate) fn consume_first(
        &self,
        key: &IntentKey,
        identifiers: &[&str],
    ) -> Result<Option<Consumed>, ControlError> {
        let now = self.clock().now_ms();
        self.write(|tx| {
            for id in identifiers {
                if let Some(used) = consume(tx, key, id, now)? {
                    return Ok(Some(used));
                }
            }
            Ok(None)
        })
    }

    /// Gives back one use of grant `identifier` taken for a call that was
    /// then not let through (denied by another rule, or never released):
    /// a use counts calls the grant permitted. Never above `max_uses`;
    /// whether a use was given back.
    pub(crate) fn refund_grant(
        &self,
        key: &IntentKey,
        identifier: &str,
    ) -> Result<bool, ControlError> {
        let changed = self.write(|tx| {
            tx.execute(
                "UPDATE intent_grants
                    SET uses_left = uses_left + 1, used = used - 1
                  WHERE iss = $1 AND sub = $2 AND task_id = $3 AND identifier = $4
                    AND uses_left IS NOT NULL AND uses_left < max_uses AND used > 0",
                args![&key.iss, &key.sub, &key.task_id, identifier],
            )
        })?;
        Ok(changed == 1)
    }
}

// INVARIANT: a use is taken only by this statement. Its WHERE clause is
// the whole check (granted, a use left); SQLite runs it under the write
// lock and PostgreSQL under the row lock (in a serializable transaction),
// so the count never goes below zero (and the CHECK on the table would
// refuse it if it did).
fn consume(
    tx: &mut dyn Sql,
    key: &IntentKey,
    identifier: &str,
    now_ms: i64,
) -> Result<Option<Consumed>, ControlError> {
    let row = tx.query_opt(
        "UPDATE intent_grants
            SET uses_left = uses_left - 1, used = used + 1, last_used_ms = $5
          WHERE iss = $1 AND sub = $2 AND task_id = $3 AND identifier = $4
            AND status = 'granted' AND (uses_left IS NULL OR uses_left > 0)
      RETURNING uses_left, used",
        args![&key.iss, &key.sub, &key.task_id, identifier, now_ms],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let left: Option<i64> = row.get(0)?;
    let used: i64 = row.get(1)?;
    Ok(Some(Consumed {
        identifier: identifier.to_owned(),
        uses_left: left.map(|n| count(n, identifier)).transpose()?,
        used: count(used, identifier)?,
    }))
}

/// Moves a pending intent approval to `status` and its pending grants to
/// granted (approved) or refused (anything else). Whether it was pending.
fn close(
    tx: &mut dyn Sql,
    key: &IntentKey,
    status: ApprovalStatus,
    by: Option<&str>,
    comment: Option<&str>,
    now_ms: i64,
) -> Result<bool, ControlError> {
    tx.notify(Topic::Approvals)?;
    let changed = tx.execute(
        "UPDATE intents SET approval = $4, decided_by = $5, decided_ms = $6, comment = $7
          WHERE iss = $1 AND sub = $2 AND task_id = $3 AND approval = 'pending'",
        args![
            &key.iss,
            &key.sub,
            &key.task_id,
            status.as_str(),
            by,
            now_ms,
            comment
        ],
    )?;
    if changed != 1 {
        return Ok(false);
    }
    let grants = if status == ApprovalStatus::Approved {
        GrantStatus::Granted
    } else {
        GrantStatus::Refused
    };
    tx.execute(
        "UPDATE intent_grants SET status = $4
          WHERE iss = $1 AND sub = $2 AND task_id = $3 AND status = 'pending'",
        args![&key.iss, &key.sub, &key.task_id, grants.as_str()],
    )?;
    Ok(true)
}

fn not_found(id: &str) -> ControlError {
    crate::store::not_found("intent", id)
}

fn key_row(r: &Record) -> Result<IntentKey, ControlError> {
    Ok(IntentKey {
        iss: r.get(0)?,
        sub: r.get(1)?,
        task_id: r.get(2)?,
    })
}

fn key_of_approval(tx: &mut dyn Sql, approval_id: &str) -> Result<IntentKey, ControlError> {
    tx.query_opt(
        "SELECT iss, sub, task_id FROM intents WHERE approval_id = $1",
        args![approval_id],
    )?
    .as_ref()
    .map(key_row)
    .transpose()?
    .ok_or_else(|| not_found(approval_id))
}

fn count(n: i64, id: &str) -> Result<u32, ControlError> {
    u32::try_from(n).map_err(|_| ControlError::Corrupt {
        id: id.to_owned(),
        reason: format!("count {n} out of range"),
    })
}

/// The intent of `key` with its grants, checked against its hash.
fn load(tx: &mut dyn Sql, key: &IntentKey) -> Result<Option<TaskIntent>, ControlError> {
    let Some(r) = tx.query_opt(
        "SELECT * FROM intents WHERE iss = $1 AND sub = $2 AND task_id = $3",
        args![&key.iss, &key.sub, &key.task_id],
    )?
    else {
        return Ok(None);
    };
    let text: String = r.get("intent")?;
    let intent_hash: String = r.get("intent_hash")?;
    let approval: Option<String> = r.get("approval")?;
    let corrupt = |reason: String| ControlError::Corrupt {
        id: format!("intent of task {}", key.task_id),
        reason,
    };
    let intent = Intent::parse_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if intent.hash() != intent_hash {
        return Err(corrupt("the stored intent does not match its hash".into()));
    }
    let approval = approval
        .map(|a| a.parse::<ApprovalStatus>())
        .transpose()
        .map_err(corrupt)?;
    let rows = tx.query(
        "SELECT identifier, status, max_uses, uses_left, used, last_used_ms FROM intent_grants
          WHERE iss = $1 AND sub = $2 AND task_id = $3 ORDER BY position",
        args![&key.iss, &key.sub, &key.task_id],
    )?;
    let mut grants = Vec::with_capacity(rows.len());
    for g in &rows {
        let identifier: String = g.get(0)?;
        grants.push(GrantState {
            status: g.get::<String>(1)?.parse().map_err(corrupt)?,
            max_uses: g
                .get::<Option<i64>>(2)?
                .map(|n| count(n, &identifier))
                .transpose()?,
            uses_left: g
                .get::<Option<i64>>(3)?
                .map(|n| count(n, &identifier))
                .transpose()?,
            used: count(g.get(4)?, &identifier)?,
            last_used_ms: g.get(5)?,
            identifier,
        });
    }
    let ids: Vec<&str> = grants.iter().map(|g| g.identifier.as_str()).collect();
    let declared: Vec<&str> = intent.grants().iter().map(|g| g.identifier()).collect();
    if ids != declared {
        return Err(corrupt("the grant rows do not match the intent".into()));
    }
    Ok(Some(TaskIntent {
        key: key.clone(),
        intent,
        intent_hash,
        grants,
        requested_by: r.get("requested_by")?,
        created_ms: r.get("created_ms")?,
        deadline_ms: r.get("deadline_ms")?,
        approval_id: r.get("approval_id")?,
        approval,
        decided_by: r.get("decided_by")?,
        decided_ms: r.get("decided_ms")?,
        comment: r.get("comment")?,
    }))
}

#[cfg(test)]
#[path = "intents_tests.rs"]
mod tests;
