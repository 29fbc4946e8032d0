//! The control store's operations, written once over [`crate::db`]: the
//! blocking layer under the async [`crate::ControlStore`].

use crate::approvals::{ApprovalRequest, ApprovalStatus, NewApproval};
use crate::changes::{Change, ChangeKind, ChangeStatus};
use crate::db::{Db, Location, Record, Sql, args};
use crate::error::ControlError;
use crate::revocations::{Index, Revocation, RevocationKind};
use crate::signal::Topic;
use arc_swap::ArcSwap;
use mandate_core::{Caller, Clock, Scope};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Durable kill switches, change gate, approvals, pins, tasks and intents,
/// with in-memory indexes for the per-call checks.
pub(crate) struct Store {
    db: Db,
    revoked: ArcSwap<Index>,
    ceilings: ArcSwap<BTreeMap<String, Scope>>,
    /// Dates every row this store writes.
    pub(crate) clock: Clock,
}

impl Store {
    /// Opens (creating if needed) the store at `location` and loads the
    /// active revocations and ceilings.
    pub(crate) fn open_at(location: &Location) -> Result<Self, ControlError> {
        let store = Self {
            db: Db::open(location)?,
            revoked: ArcSwap::from_pointee(Index::default()),
            ceilings: ArcSwap::from_pointee(BTreeMap::new()),
            clock: Clock::system(),
        };
        store.refresh()?;
        Ok(store)
    }

    /// Opens the SQLite store at `path`.
    #[cfg(test)]
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, ControlError> {
        Self::open_at(&Location::Sqlite(path.to_owned()))
    }

    /// Dates rows (and judges approval deadlines) by `clock`.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock this store dates rows by.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Takes or renews lease `name` for `holder` until `ttl_ms` from now;
    /// whether `holder` holds it afterwards. Another holder's lease is
    /// taken only once it has expired.
    pub(crate) fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, ControlError> {
        let now = self.clock.now_ms();
        self.write(|tx| {
            let row = tx.query_opt(
                "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
                 WHERE leases.holder = excluded.holder OR leases.expires_ms < $4
                 RETURNING holder",
                args![name, holder, now + ttl_ms, now],
            )?;
            Ok(row.is_some())
        })
    }

    /// Gives lease `name` up, if `holder` holds it.
    pub(crate) fn release_lease(&self, name: &str, holder: &str) -> Result<(), ControlError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                args![name, holder],
            )
            .map(drop)
        })
    }

    /// See [`Db::listen_target`].
    pub(crate) fn listen_target(&self) -> Option<(postgres::Config, String)> {
        self.db.listen_target()
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnMut(&mut dyn Sql) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        self.db.write(f)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnMut(&mut dyn Sql) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        self.db.read(f)
    }

    /// Re-reads the in-memory indexes from the database.
    pub(crate) fn refresh(&self) -> Result<(), ControlError> {
        let (active, ceiling_changes) = self.read(|tx| {
            Ok((
                revocations(tx, false)?,
                active_changes(tx, ChangeKind::ScopeCeiling)?,
            ))
        })?;
        self.revoked.store(Arc::new(Index::build(active)));
        let mut ceilings = BTreeMap::new();
        for change in ceiling_changes {
            let scope = change
                .payload
                .get("scope")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            ceilings.insert(change.target.clone(), Scope::parse(scope));
        }
        self.ceilings.store(Arc::new(ceilings));
        Ok(())
    }

    // ----- kill switches -------------------------------------------------

    /// The active revocation covering `p`, if any. In memory: no I/O.
    pub(crate) fn check(&self, p: &Caller<'_>) -> Option<Revocation> {
        self.revoked.load().check(p).cloned()
    }

    /// Revokes `value` of `kind`. Revoking what is already revoked returns
    /// the existing revocation unchanged.
    pub(crate) fn revoke(
        &self,
        kind: RevocationKind,
        value: &str,
        reason: &str,
        by: &str,
    ) -> Result<Revocation, ControlError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ControlError::Invalid(format!(
                "revoke {kind}: the value must not be empty"
            )));
        }
        let now = self.clock.now_ms();
        let r = self.write(|tx| {
            if let Some(existing) = tx.query_opt(
                "SELECT * FROM revocations WHERE kind = $1 AND value = $2 AND lifted_ms IS NULL",
                args![kind.as_str(), value],
            )? {
                return revocation_row(&existing);
            }
            tx.notify(Topic::Revocations)?;
            let row = tx
                .query_opt(
                    "INSERT INTO revocations (kind, value, reason, revoked_by, revoked_ms)
                     VALUES ($1, $2, $3, $4, $5) RETURNING *",
                    args![kind.as_str(), value, reason, by, now],
                )?
                .ok_or_else(|| ControlError::Storage("insert returned no row".into()))?;
            revocation_row(&row)
        })?;
        self.refresh()?;
        Ok(r)
    }

    /// Lifts revocation `id`.
    pub(crate) fn lift(&self, id: i64, by: &str) -> Result<Revocation, ControlError> {
        let now = self.clock.now_ms();
        let r = self.write(|tx| {
            let current = get_revocation(tx, id)?;
            if !current.is_active() {
                return Err(ControlError::Conflict(format!(
                    "revocation {id} was already lifted"
                )));
            }
            tx.execute(
                "UPDATE revocations SET lifted_by = $1, lifted_ms = $2 WHERE id = $3",
                args![by, now, id],
            )?;
            tx.notify(Topic::Revocations)?;
            get_revocation(tx, id)
        })?;
        self.refresh()?;
        Ok(r)
    }

    /// One revocation.
    pub(crate) fn revocation(&self, id: i64) -> Result<Revocation, ControlError> {
        self.read(|tx| get_revocation(tx, id))
    }

    /// Revocations, newest first; lifted ones only if `include_lifted`.
    pub(crate) fn revocations(
        &self,
        include_lifted: bool,
    ) -> Result<Vec<Revocation>, ControlError> {
        self.read(|tx| revocations(tx, include_lifted))
    }

    // ----- change gate -------------------------------------------------------

    /// The scope ceiling in force for `agent`, if any.
    pub(crate) fn ceiling(&self, agent: &str) -> Option<Scope> {
        self.ceilings.load().get(agent).cloned()
    }

    /// Whether any agent has a ceiling (lets callers skip the lookup).
    pub(crate) fn has_ceilings(&self) -> bool {
        !self.ceilings.load().is_empty()
    }

    /// Records a proposal. Validation of the payload (policy set compiles,
    /// scope parses) is the caller's job.
    pub(crate) fn propose(
        &self,
        kind: ChangeKind,
        target: &str,
        payload: &serde_json::Value,
        payload_hash: &str,
        summary: &str,
        by: &str,
    ) -> Result<Change, ControlError> {
        let id = format!("chg-{}", uuid::Uuid::now_v7());
        let payload = payload.to_string();
        let now = self.clock.now_ms();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO changes (id, kind, target, payload, payload_hash, summary, status, proposed_by, proposed_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, 'proposed', $7, $8)",
                args![&id, kind.as_str(), target, &payload, payload_hash, summary, by, now],
            )?;
            get_change(tx, &id)
        })
    }

    /// Approves (or, with `approve = false`, rejects) a proposal. The
    /// reviewer must not be the proposer: that is the point of the gate.
    pub(crate) fn review(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
    ) -> Result<Change, ControlError> {
        let now = self.clock.now_ms();
        self.write(|tx| {
            let change = get_change(tx, id)?;
            if change.status != ChangeStatus::Proposed {
                return Err(ControlError::Conflict(format!(
                    "change {id} is {}, not proposed",
                    change.status.as_str()
                )));
            }
            if change.proposed_by == by {
                return Err(ControlError::Conflict(format!(
                    "change {id} was proposed by {by}: a different operator must review it (two-person rule)"
                )));
            }
            let status = if approve {
                ChangeStatus::Approved
            } else {
                ChangeStatus::Rejected
            };
            tx.execute(
                "UPDATE changes SET status = $1, reviewed_by = $2, reviewed_ms = $3, review_comment = $4
                 WHERE id = $5 AND status = 'proposed'",
                args![status.as_str(), by, now, comment, id],
            )?;
            get_change(tx, id)
        })
    }

    /// Puts an approved change in force. For a policy set, the caller
    /// must have installed and loaded the files first (and checked their
    /// hash equals [`Change::payload_hash`]); this records it as active.
    pub(crate) fn activate(&self, id: &str, by: &str) -> Result<Change, ControlError> {
        let now = self.clock.now_ms();
        let out = self.write(|tx| {
            let change = get_change(tx, id)?;
            if change.status != ChangeStatus::Approved {
                return Err(ControlError::Conflict(format!(
                    "change {id} is {}: only an approved change can be activated",
                    change.status.as_str()
                )));
            }
            tx.execute(
                "UPDATE changes SET status = 'activated', activated_by = $1, activated_ms = $2 WHERE id = $3",
                args![by, now, id],
            )?;
            tx.execute(
                "INSERT INTO active (kind, target, change_id) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, target) DO UPDATE SET change_id = excluded.change_id",
                args![change.kind.as_str(), &change.target, id],
            )?;
            tx.notify(Topic::Changes)?;
            get_change(tx, id)
        })?;
        self.refresh()?;
        Ok(out)
    }

    /// Records `payload` as the change in force for (`kind`, `target`)
    /// without review, only when nothing is in force for it yet: the
    /// first policy set of a new installation comes from its config.
    /// Returns `None` (and changes nothing) if something is already in force.
    pub(crate) fn bootstrap(
        &self,
        kind: ChangeKind,
        target: &str,
        payload: &serde_json::Value,
        payload_hash: &str,
        summary: &str,
        by: &str,
    ) -> Result<Option<Change>, ControlError> {
        let id = format!("chg-{}", uuid::Uuid::now_v7());
        let payload = payload.to_string();
        let now = self.clock.now_ms();
        let out = self.write(|tx| {
            if tx
                .query_opt(
                    "SELECT change_id FROM active WHERE kind = $1 AND target = $2",
                    args![kind.as_str(), target],
                )?
                .is_some()
            {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO changes (id, kind, target, payload, payload_hash, summary, status, proposed_by, proposed_ms, activated_by, activated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, 'activated', $7, $8, $7, $8)",
                args![&id, kind.as_str(), target, &payload, payload_hash, summary, by, now],
            )?;
            tx.execute(
                "INSERT INTO active (kind, target, change_id) VALUES ($1, $2, $3)",
                args![kind.as_str(), target, &id],
            )?;
            tx.notify(Topic::Changes)?;
            get_change(tx, &id).map(Some)
        })?;
        self.refresh()?;
        Ok(out)
    }

    /// One change.
    pub(crate) fn change(&self, id: &str) -> Result<Change, ControlError> {
        self.read(|tx| get_change(tx, id))
    }

    /// Every change, newest first.
    pub(crate) fn changes(&self) -> Result<Vec<Change>, ControlError> {
        self.read(|tx| {
            tx.query(
                "SELECT * FROM changes ORDER BY proposed_ms DESC, id DESC",
                args![],
            )?
            .iter()
            .map(change_row)
            .collect()
        })
    }

    /// The changes of `kind` currently in force (one per target).
    pub(crate) fn active_changes(&self, kind: ChangeKind) -> Result<Vec<Change>, ControlError> {
        self.read(|tx| active_changes(tx, kind))
    }
}

fn revocations(tx: &mut dyn Sql, include_lifted: bool) -> Result<Vec<Revocation>, ControlError> {
    let sql = if include_lifted {
        "SELECT * FROM revocations ORDER BY id DESC"
    } else {
        "SELECT * FROM revocations WHERE lifted_ms IS NULL ORDER BY id DESC"
    };
    tx.query(sql, args![])?.iter().map(revocation_row).collect()
}

fn active_changes(tx: &mut dyn Sql, kind: ChangeKind) -> Result<Vec<Change>, ControlError> {
    tx.query(
        "SELECT c.* FROM active a JOIN changes c ON c.id = a.change_id WHERE a.kind = $1 ORDER BY a.target",
        args![kind.as_str()],
    )?
    .iter()
    .map(change_row)
    .collect()
}

impl Store {
    /// Records a held call as a pending approval request (durable).
    pub(crate) fn create_approval(
        &self,
        new: &NewApproval,
    ) -> Result<ApprovalRequest, ControlError> {
        let id = format!("apr-{}", uuid::Uuid::now_v7());
        let body = serde_json::to_string(new).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let now = self.clock.now_ms();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO approvals (id, created_ms, status, request, args_hash, sub, deadline_ms)
                 VALUES ($1, $2, 'pending', $3, $4, $5, $6)",
                args![&id, now, &body, &new.args_hash, &new.sub, new.deadline_ms],
            )?;
            get_approval(tx, &id)
        })
    }

    /// One approval request.
    pub(crate) fn approval(&self, id: &str) -> Result<ApprovalRequest, ControlError> {
        self.read(|tx| get_approval(tx, id))
    }

    /// Approval requests, newest first, optionally of one status.
    pub(crate) fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        limit: usize,
    ) -> Result<Vec<ApprovalRequest>, ControlError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            tx.query(
                "SELECT * FROM approvals WHERE (CAST($1 AS TEXT) IS NULL OR status = $1)
                 ORDER BY created_ms DESC, id DESC LIMIT $2",
                args![status.map(ApprovalStatus::as_str), limit],
            )?
            .iter()
            .map(approval_row)
            .collect()
        })
    }

    /// A person's decision. It binds to the argument hash the person was
    /// shown (`seen_args_hash`): if the request's differs, nothing is
    /// decided. Only a pending request before its deadline can be decided.
    pub(crate) fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
        seen_args_hash: &str,
    ) -> Result<ApprovalRequest, ControlError> {
        let now = self.clock.now_ms();
        // The inner result is the answer; an expiry is written even though
        // the answer is a refusal.
        self.write(|tx| {
            tx.notify(Topic::Approvals)?;
            let current = get_approval(tx, id)?;
            if current.status != ApprovalStatus::Pending {
                return Ok(Err(ControlError::Conflict(format!(
                    "approval {id} is {}, not pending",
                    current.status.as_str()
                ))));
            }
            if current.request.args_hash != seen_args_hash {
                return Ok(Err(ControlError::Conflict(format!(
                    "approval {id} is for other arguments (argument hash {}, not {seen_args_hash})",
                    current.request.args_hash
                ))));
            }
            if now > current.request.deadline_ms {
                tx.execute(
                    "UPDATE approvals SET status = 'expired' WHERE id = $1 AND status = 'pending'",
                    args![id],
                )?;
                return Ok(Err(ControlError::Conflict(format!(
                    "approval {id} passed its deadline; the call was denied"
                ))));
            }
            let status = if approve {
                ApprovalStatus::Approved
            } else {
                ApprovalStatus::Denied
            };
            let changed = tx.execute(
                "UPDATE approvals SET status = $1, decided_by = $2, decided_ms = $3, comment = $4
                 WHERE id = $5 AND status = 'pending' AND args_hash = $6",
                args![status.as_str(), by, now, comment, id, seen_args_hash],
            )?;
            if changed != 1 {
                return Ok(Err(ControlError::Conflict(format!(
                    "approval {id} was decided concurrently"
                ))));
            }
            get_approval(tx, id).map(Ok)
        })?
    }

    /// Ends a pending request without a person's decision (`Expired`,
    /// `Withdrawn`). Returns whether it was still pending.
    pub(crate) fn close_approval(
        &self,
        id: &str,
        status: ApprovalStatus,
    ) -> Result<bool, ControlError> {
        if matches!(status, ApprovalStatus::Pending | ApprovalStatus::Approved) {
            return Err(ControlError::Invalid(format!(
                "close_approval cannot set {}",
                status.as_str()
            )));
        }
        let now = self.clock.now_ms();
        let changed = self.write(|tx| {
            tx.notify(Topic::Approvals)?;
            tx.execute(
                "UPDATE approvals SET status = $1, decided_ms = $2 WHERE id = $3 AND status = 'pending'",
                args![status.as_str(), now, id],
            )
        })?;
        Ok(changed == 1)
    }

    /// Uses an approval to release the held call with `args_hash`: only
    /// an approved request, only for its own arguments, only once.
    pub(crate) fn release_approval(
        &self,
        id: &str,
        args_hash: &str,
    ) -> Result<ApprovalRequest, ControlError> {
        let now = self.clock.now_ms();
        self.write(|tx| {
            tx.notify(Topic::Approvals)?;
            let changed = tx.execute(
                "UPDATE approvals SET released_ms = $1
                 WHERE id = $2 AND status = 'approved' AND released_ms IS NULL AND args_hash = $3",
                args![now, id, args_hash],
            )?;
            if changed != 1 {
                let current = get_approval(tx, id)?;
                return Err(ControlError::Conflict(if current.released_ms.is_some() {
                    format!("approval {id} was already used")
                } else if current.request.args_hash != args_hash {
                    format!("approval {id} is for other arguments")
                } else {
                    format!("approval {id} is {}, not approved", current.status.as_str())
                }));
            }
            get_approval(tx, id)
        })
    }
}

/// A pinned upstream tool: the name, description and input schema an
/// operator (or first use) accepted, by fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolPin {
    /// Exposed name (`upstream.tool`).
    pub tool: String,
    /// SHA-256 of the canonical {name, description, inputSchema}.
    pub fingerprint: String,
    /// The description as pinned (or as found, when quarantined).
    pub description: String,
    /// `approved` or `quarantined`.
    pub status: String,
    /// Why (first use, approval comment, what changed, what was found).
    pub reason: String,
    /// Who decided (`mandate` for automatic pins and quarantines).
    pub decided_by: String,
    /// Unix milliseconds.
    pub decided_ms: i64,
}

impl Store {
    /// The pin of `tool`, if any.
    pub(crate) fn tool_pin(&self, tool: &str) -> Result<Option<ToolPin>, ControlError> {
        self.read(|tx| {
            tx.query_opt("SELECT * FROM tool_pins WHERE tool = $1", args![tool])?
                .as_ref()
                .map(pin_row)
                .transpose()
        })
    }

    /// Every pin, by name.
    pub(crate) fn tool_pins(&self) -> Result<Vec<ToolPin>, ControlError> {
        self.read(|tx| {
            tx.query("SELECT * FROM tool_pins ORDER BY tool", args![])?
                .iter()
                .map(pin_row)
                .collect()
        })
    }

    /// Records `tool` as approved (pinned to `fingerprint`) or quarantined.
    pub(crate) fn set_tool_pin(
        &self,
        tool: &str,
        fingerprint: &str,
        description: &str,
        approved: bool,
        reason: &str,
        by: &str,
    ) -> Result<ToolPin, ControlError> {
        let status = if approved { "approved" } else { "quarantined" };
        let now = self.clock.now_ms();
        self.write(|tx| {
            let row = tx.query_opt(
                "INSERT INTO tool_pins (tool, fingerprint, description, status, reason, decided_by, decided_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (tool) DO UPDATE SET fingerprint = excluded.fingerprint,
                   description = excluded.description, status = excluded.status,
                   reason = excluded.reason, decided_by = excluded.decided_by, decided_ms = excluded.decided_ms
                 RETURNING *",
                args![tool, fingerprint, description, status, reason, by, now],
            )?;
            pin_row(&row.ok_or_else(|| ControlError::Storage("upsert returned no row".into()))?)
        })
    }
}

fn pin_row(row: &Record) -> Result<ToolPin, ControlError> {
    Ok(ToolPin {
        tool: row.get("tool")?,
        fingerprint: row.get("fingerprint")?,
        description: row.get("description")?,
        status: row.get("status")?,
        reason: row.get("reason")?,
        decided_by: row.get("decided_by")?,
        decided_ms: row.get("decided_ms")?,
    })
}

fn get_approval(tx: &mut dyn Sql, id: &str) -> Result<ApprovalRequest, ControlError> {
    let row = tx.query_opt("SELECT * FROM approvals WHERE id = $1", args![id])?;
    approval_row(&row.ok_or_else(|| not_found("approval", id))?)
}

pub(crate) fn not_found(what: &'static str, id: impl ToString) -> ControlError {
    ControlError::NotFound {
        what,
        id: id.to_string(),
    }
}

fn approval_row(row: &Record) -> Result<ApprovalRequest, ControlError> {
    let id: String = row.get("id")?;
    let corrupt = |reason: String| ControlError::Corrupt {
        id: id.clone(),
        reason,
    };
    let status = row
        .get::<String>("status")?
        .parse::<ApprovalStatus>()
        .map_err(corrupt)?;
    let request: NewApproval = serde_json::from_str(&row.get::<String>("request")?)
        .map_err(|e| corrupt(format!("request: {e}")))?;
    Ok(ApprovalRequest {
        created_ms: row.get("created_ms")?,
        status,
        request,
        decided_by: row.get("decided_by")?,
        decided_ms: row.get("decided_ms")?,
        comment: row.get("comment")?,
        released_ms: row.get("released_ms")?,
        id,
    })
}

fn get_revocation(tx: &mut dyn Sql, id: i64) -> Result<Revocation, ControlError> {
    let row = tx.query_opt("SELECT * FROM revocations WHERE id = $1", args![id])?;
    revocation_row(&row.ok_or_else(|| not_found("revocation", id))?)
}

fn get_change(tx: &mut dyn Sql, id: &str) -> Result<Change, ControlError> {
    let row = tx.query_opt("SELECT * FROM changes WHERE id = $1", args![id])?;
    change_row(&row.ok_or_else(|| not_found("change", id))?)
}

fn revocation_row(row: &Record) -> Result<Revocation, ControlError> {
    let id: i64 = row.get("id")?;
    let kind = row
        .get::<String>("kind")?
        .parse::<RevocationKind>()
        .map_err(|reason| ControlError::Corrupt {
            id: id.to_string(),
            reason,
        })?;
    Ok(Revocation {
        id,
        kind,
        value: row.get("value")?,
        reason: row.get("reason")?,
        revoked_by: row.get("revoked_by")?,
        revoked_ms: row.get("revoked_ms")?,
        lifted_by: row.get("lifted_by")?,
        lifted_ms: row.get("lifted_ms")?,
    })
}

fn change_row(row: &Record) -> Result<Change, ControlError> {
    let id: String = row.get("id")?;
    let corrupt = |reason: String| ControlError::Corrupt {
        id: id.clone(),
        reason,
    };
    let kind = row
        .get::<String>("kind")?
        .parse::<ChangeKind>()
        .map_err(corrupt)?;
    let status = row
        .get::<String>("status")?
        .parse::<ChangeStatus>()
        .map_err(corrupt)?;
    let payload = serde_json::from_str(&row.get::<String>("payload")?)
        .map_err(|e| corrupt(format!("payload: {e}")))?;
    Ok(Change {
        kind,
        target: row.get("target")?,
        payload,
        payload_hash: row.get("payload_hash")?,
        summary: row.get("summary")?,
        status,
        proposed_by: row.get("proposed_by")?,
        proposed_ms: row.get("proposed_ms")?,
        reviewed_by: row.get("reviewed_by")?,
        reviewed_ms: row.get("reviewed_ms")?,
        review_comment: row.get("review_comment")?,
        activated_by: row.get("activated_by")?,
        activated_ms: row.get("activated_ms")?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_core::CallerData;
    use mandate_core::ManualClock;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn open() -> TestResult<(tempfile::TempDir, Store)> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("control.sqlite"))?;
        Ok((dir, store))
    }

    fn alice() -> CallerData {
        CallerData {
            iss: "i".into(),
            sub: "alice".into(),
            act: vec!["assistant".into()],
            scope: Scope::parse("docs.*"),
            task_id: None,
            build: None,
            sid: Some("s1".into()),
            jti: None,
        }
    }

    #[test]
    fn a_moved_away_file_is_gone_until_it_is_back() -> TestResult {
        let (dir, store) = open()?;
        let path = dir.path().join("control.sqlite");
        let away = dir.path().join("away.sqlite");
        std::fs::rename(&path, &away)?;
        // A revocation written now would be lost at the next start.
        assert!(matches!(
            store.revoke(RevocationKind::Agent, "assistant", "r", "ops"),
            Err(ControlError::Gone)
        ));
        assert!(matches!(store.tool_pin("u.t"), Err(ControlError::Gone)));
        std::fs::rename(&away, &path)?;
        store.revoke(RevocationKind::Agent, "assistant", "r", "ops")?;
        assert_eq!(Store::open(&path)?.revocations(false)?.len(), 1);
        Ok(())
    }

    #[test]
    fn revocation_is_durable_and_liftable() -> TestResult {
        let (dir, store) = open()?;
        let r = store.revoke(RevocationKind::Agent, "assistant", "leaked prompt", "ops")?;
        assert!(store.check(&alice().caller()).is_some());
        // Idempotent.
        let again = store.revoke(RevocationKind::Agent, "assistant", "other", "ops2")?;
        assert_eq!(again.id, r.id);
        drop(store);
        let store = Store::open(&dir.path().join("control.sqlite"))?;
        assert_eq!(
            store.check(&alice().caller()).map(|r| r.reason),
            Some("leaked prompt".into())
        );
        store.lift(r.id, "ops")?;
        assert!(store.check(&alice().caller()).is_none());
        assert!(matches!(
            store.lift(r.id, "ops"),
            Err(ControlError::Conflict(_))
        ));
        assert_eq!(store.revocations(true)?.len(), 1);
        assert!(store.revocations(false)?.is_empty());
        Ok(())
    }

    #[test]
    fn empty_values_are_refused() -> TestResult {
        let (_dir, store) = open()?;
        assert!(matches!(
            store.revoke(RevocationKind::User, "  ", "r", "ops"),
            Err(ControlError::Invalid(_))
        ));
        Ok(())
    }

    #[test]
    fn a_change_needs_a_second_operator_before_activation() -> TestResult {
        let (_dir, store) = open()?;
        let payload = serde_json::json!({"scope": "docs.search"});
        let c = store.propose(
            ChangeKind::ScopeCeiling,
            "assistant",
            &payload,
            "h",
            "narrow",
            "ann",
        )?;
        // Not in force before activation; cannot activate unapproved.
        assert!(store.ceiling("assistant").is_none());
        assert!(matches!(
            store.activate(&c.id, "ann"),
            Err(ControlError::Conflict(_))
        ));
        // The proposer cannot approve.
        assert!(matches!(
            store.review(&c.id, true, "ann", None),
            Err(ControlError::Conflict(_))
        ));
        let c = store.review(&c.id, true, "bob", Some("ok"))?;
        assert_eq!(c.status, ChangeStatus::Approved);
        // Reviewed once only.
        assert!(store.review(&c.id, false, "carol", None).is_err());
        let c = store.activate(&c.id, "ann")?;
        assert_eq!(c.status, ChangeStatus::Activated);
        assert!(
            store
                .ceiling("assistant")
                .is_some_and(|s| s.covers("docs.search"))
        );
        assert!(
            store
                .ceiling("assistant")
                .is_some_and(|s| !s.covers("docs.send_mail"))
        );
        // Activated once only.
        assert!(store.activate(&c.id, "ann").is_err());
        Ok(())
    }

    fn held(args_hash: &str, now_ms: i64) -> NewApproval {
        NewApproval {
            sub: "alice".into(),
            act: vec!["assistant".into()],
            build: None,
            task_id: Some("t".into()),
            session: "sid:s".into(),
            tool: "bank.transfer".into(),
            class: "financial".into(),
            args: serde_json::json!({"amount": 250, "to": "bob"}),
            args_hash: args_hash.into(),
            policies: vec!["high-impact-needs-approval".into()],
            reasons: vec!["high impact".into()],
            taint: Vec::new(),
            untrusted_sources: Vec::new(),
            decision_id: "d".into(),
            correlation_id: "c".into(),
            deadline_ms: now_ms + 60_000,
            holder: "gw-1".into(),
        }
    }

    #[test]
    fn an_approval_binds_to_its_arguments_and_releases_once() -> TestResult {
        let (_dir, store) = open()?;
        let a = store.create_approval(&held("hash-a", store.clock().now_ms()))?;
        assert_eq!(store.approvals(Some(ApprovalStatus::Pending), 10)?.len(), 1);
        // Not releasable before a decision.
        assert!(store.release_approval(&a.id, "hash-a").is_err());
        // A decision for other arguments than those shown changes nothing.
        assert!(matches!(
            store.decide_approval(&a.id, true, "carol", None, "hash-b"),
            Err(ControlError::Conflict(_))
        ));
        let a = store.decide_approval(&a.id, true, "carol", Some("ok"), "hash-a")?;
        assert_eq!(a.status, ApprovalStatus::Approved);
        // Decided once.
        assert!(
            store
                .decide_approval(&a.id, false, "dave", None, "hash-a")
                .is_err()
        );
        // Releases only its own arguments, and only once.
        assert!(store.release_approval(&a.id, "hash-b").is_err());
        store.release_approval(&a.id, "hash-a")?;
        assert!(store.release_approval(&a.id, "hash-a").is_err());
        Ok(())
    }

    #[test]
    fn closed_and_late_requests_cannot_be_approved() -> TestResult {
        let (dir, _) = open()?;
        let clock = ManualClock::at_ms(1_800_000_000_000);
        let store = Store::open(&dir.path().join("control.sqlite"))?.with_clock(clock.clock());
        let a = store.create_approval(&held("h", clock.clock().now_ms()))?;
        assert!(store.close_approval(&a.id, ApprovalStatus::Withdrawn)?);
        assert!(!store.close_approval(&a.id, ApprovalStatus::Expired)?);
        assert!(
            store
                .decide_approval(&a.id, true, "carol", None, "h")
                .is_err()
        );
        // A minute and a second later, the request's deadline has passed.
        let b = store.create_approval(&held("h", clock.clock().now_ms()))?;
        clock.advance(std::time::Duration::from_secs(61));
        assert!(
            store
                .decide_approval(&b.id, true, "carol", None, "h")
                .is_err()
        );
        assert_eq!(store.approval(&b.id)?.status, ApprovalStatus::Expired);
        Ok(())
    }

    #[test]
    fn a_rejected_change_never_activates() -> TestResult {
        let (_dir, store) = open()?;
        let c = store.propose(
            ChangeKind::ScopeCeiling,
            "assistant",
            &serde_json::json!({"scope": "*"}),
            "h",
            "widen",
            "ann",
        )?;
        store.review(&c.id, false, "bob", Some("too wide"))?;
        assert!(store.activate(&c.id, "ann").is_err());
        assert!(store.ceiling("assistant").is_none());
        Ok(())
    }
}
