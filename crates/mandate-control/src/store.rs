//! The SQLite-backed control store.

use crate::approvals::{ApprovalRequest, ApprovalStatus, NewApproval};
use crate::changes::{Change, ChangeKind, ChangeStatus};
use crate::error::ControlError;
use crate::revocations::{Index, Revocation, RevocationKind};
use arc_swap::ArcSwap;
use mandate_core::{Caller, Clock, Scope};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Durable kill switches and change-gate state, with in-memory indexes
/// for the per-call checks.
pub struct ControlStore {
    conn: Mutex<Connection>,
    /// Where the store was opened, and the file it was then.
    path: PathBuf,
    file: FileId,
    revoked: ArcSwap<Index>,
    ceilings: ArcSwap<BTreeMap<String, Scope>>,
    /// Dates every row this store writes.
    clock: Clock,
}

/// The device and inode a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

impl FileId {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            Ok(Self(meta.dev(), meta.ino()))
        }
        #[cfg(not(unix))]
        {
            drop(meta);
            Ok(Self(0, 0))
        }
    }
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore")
            .field("active_revocations", &self.revoked.load().len())
            .field("ceilings", &self.ceilings.load().len())
            .finish()
    }
}

impl ControlStore {
    /// Opens (creating if needed) the store at `path` and loads the
    /// active revocations and ceilings.
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(crate::schema::CONTROL)?;
        conn.execute_batch(crate::schema::INTENTS)?;
        let file = FileId::of(path).map_err(|_| ControlError::Gone)?;
        let store = Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            file,
            revoked: ArcSwap::from_pointee(Index::default()),
            ceilings: ArcSwap::from_pointee(BTreeMap::new()),
            clock: Clock::system(),
        };
        store.refresh()?;
        Ok(store)
    }

    /// Dates rows (and judges approval deadlines) by `clock` instead of
    /// the system's.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock this store dates rows by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The connection, once the path still names the file it was opened
    /// on: SQLite keeps using a deleted or moved-away file through its open
    /// descriptors, and what it wrote there would be lost at the next start
    /// (a revocation among it). Such a store is unavailable until the same
    /// file is back.
    pub(crate) fn conn(&self) -> Result<MutexGuard<'_, Connection>, ControlError> {
        if FileId::of(&self.path).ok() != Some(self.file) {
            return Err(ControlError::Gone);
        }
        // A panic while holding the lock leaves SQLite consistent (every
        // write is one statement or one transaction).
        Ok(self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Re-reads the in-memory indexes from the database.
    pub(crate) fn refresh(&self) -> Result<(), ControlError> {
        let active = self.revocations(false)?;
        self.revoked.store(Arc::new(Index::build(active)));
        let mut ceilings = BTreeMap::new();
        for change in self.active_changes(ChangeKind::ScopeCeiling)? {
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
    pub fn check(&self, p: &Caller<'_>) -> Option<Revocation> {
        self.revoked.load().check(p).cloned()
    }

    /// Revokes `value` of `kind`. Revoking what is already revoked returns
    /// the existing revocation unchanged.
    pub fn revoke(
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
        let conn = self.conn()?;
        if let Some(existing) = conn
            .query_row(
                "SELECT * FROM revocations WHERE kind = ?1 AND value = ?2 AND lifted_ms IS NULL",
                params![kind.as_str(), value],
                revocation_row,
            )
            .optional()?
        {
            return existing;
        }
        conn.execute(
            "INSERT INTO revocations (kind, value, reason, revoked_by, revoked_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind.as_str(), value, reason, by, self.clock.now_ms()],
        )?;
        let id = conn.last_insert_rowid();
        let r = get_revocation(&conn, id)?;
        drop(conn);
        self.refresh()?;
        Ok(r)
    }

    /// Lifts revocation `id`.
    pub fn lift(&self, id: i64, by: &str) -> Result<Revocation, ControlError> {
        let conn = self.conn()?;
        let current = get_revocation(&conn, id)?;
        if !current.is_active() {
            return Err(ControlError::Conflict(format!(
                "revocation {id} was already lifted"
            )));
        }
        conn.execute(
            "UPDATE revocations SET lifted_by = ?1, lifted_ms = ?2 WHERE id = ?3",
            params![by, self.clock.now_ms(), id],
        )?;
        let r = get_revocation(&conn, id)?;
        drop(conn);
        self.refresh()?;
        Ok(r)
    }

    /// One revocation.
    pub fn revocation(&self, id: i64) -> Result<Revocation, ControlError> {
        get_revocation(&*self.conn()?, id)
    }

    /// Revocations, newest first; lifted ones only if `include_lifted`.
    pub fn revocations(&self, include_lifted: bool) -> Result<Vec<Revocation>, ControlError> {
        let conn = self.conn()?;
        let sql = if include_lifted {
            "SELECT * FROM revocations ORDER BY id DESC"
        } else {
            "SELECT * FROM revocations WHERE lifted_ms IS NULL ORDER BY id DESC"
        };
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], revocation_row)?;
        rows.map(|r| r.map_err(ControlError::from)?).collect()
    }

    // ----- change gate -------------------------------------------------------

    /// The scope ceiling in force for `agent`, if any.
    pub fn ceiling(&self, agent: &str) -> Option<Scope> {
        self.ceilings.load().get(agent).cloned()
    }

    /// Whether any agent has a ceiling (lets callers skip the lookup).
    pub fn has_ceilings(&self) -> bool {
        !self.ceilings.load().is_empty()
    }

    /// Records a proposal. Validation of the payload (policy set compiles,
    /// scope parses) is the caller's job.
    pub fn propose(
        &self,
        kind: ChangeKind,
        target: &str,
        payload: serde_json::Value,
        payload_hash: &str,
        summary: &str,
        by: &str,
    ) -> Result<Change, ControlError> {
        let id = format!("chg-{}", uuid::Uuid::now_v7());
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO changes (id, kind, target, payload, payload_hash, summary, status, proposed_by, proposed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'proposed', ?7, ?8)",
            params![
                id,
                kind.as_str(),
                target,
                payload.to_string(),
                payload_hash,
                summary,
                by,
                self.clock.now_ms()
            ],
        )?;
        get_change(&conn, &id)
    }

    /// Approves (or, with `approve = false`, rejects) a proposal. The
    /// reviewer must not be the proposer: that is the point of the gate.
    pub fn review(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
    ) -> Result<Change, ControlError> {
        let conn = self.conn()?;
        let change = get_change(&conn, id)?;
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
        conn.execute(
            "UPDATE changes SET status = ?1, reviewed_by = ?2, reviewed_ms = ?3, review_comment = ?4
             WHERE id = ?5 AND status = 'proposed'",
            params![status.as_str(), by, self.clock.now_ms(), comment, id],
        )?;
        get_change(&conn, id)
    }

    /// Puts an approved change in force. For a policy set, the caller
    /// must have installed and loaded the files first (and checked their
    /// hash equals [`Change::payload_hash`]); this records it as active.
    pub fn activate(&self, id: &str, by: &str) -> Result<Change, ControlError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let change = get_change(&tx, id)?;
        if change.status != ChangeStatus::Approved {
            return Err(ControlError::Conflict(format!(
                "change {id} is {}: only an approved change can be activated",
                change.status.as_str()
            )));
        }
        tx.execute(
            "UPDATE changes SET status = 'activated', activated_by = ?1, activated_ms = ?2 WHERE id = ?3",
            params![by, self.clock.now_ms(), id],
        )?;
        tx.execute(
            "INSERT INTO active (kind, target, change_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (kind, target) DO UPDATE SET change_id = excluded.change_id",
            params![change.kind.as_str(), change.target, id],
        )?;
        let out = get_change(&tx, id)?;
        tx.commit()?;
        drop(conn);
        self.refresh()?;
        Ok(out)
    }

    /// Records `payload` as the change in force for (`kind`, `target`)
    /// without review, only when nothing is in force for it yet: the
    /// first policy set of a new installation comes from its config.
    /// Returns `None` (and changes nothing) if something is already in force.
    pub fn bootstrap(
        &self,
        kind: ChangeKind,
        target: &str,
        payload: serde_json::Value,
        payload_hash: &str,
        summary: &str,
        by: &str,
    ) -> Result<Option<Change>, ControlError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT change_id FROM active WHERE kind = ?1 AND target = ?2",
                params![kind.as_str(), target],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Ok(None);
        }
        let id = format!("chg-{}", uuid::Uuid::now_v7());
        let now = self.clock.now_ms();
        tx.execute(
            "INSERT INTO changes (id, kind, target, payload, payload_hash, summary, status, proposed_by, proposed_ms, activated_by, activated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'activated', ?7, ?8, ?7, ?8)",
            params![id, kind.as_str(), target, payload.to_string(), payload_hash, summary, by, now],
        )?;
        tx.execute(
            "INSERT INTO active (kind, target, change_id) VALUES (?1, ?2, ?3)",
            params![kind.as_str(), target, id],
        )?;
        let out = get_change(&tx, &id)?;
        tx.commit()?;
        drop(conn);
        self.refresh()?;
        Ok(Some(out))
    }

    /// One change.
    pub fn change(&self, id: &str) -> Result<Change, ControlError> {
        get_change(&*self.conn()?, id)
    }

    /// Every change, newest first.
    pub fn changes(&self) -> Result<Vec<Change>, ControlError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT * FROM changes ORDER BY proposed_ms DESC, id DESC")?;
        let rows = stmt.query_map([], change_row)?;
        rows.map(|r| r.map_err(ControlError::from)?).collect()
    }

    /// The changes of `kind` currently in force (one per target).
    pub fn active_changes(&self, kind: ChangeKind) -> Result<Vec<Change>, ControlError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT c.* FROM active a JOIN changes c ON c.id = a.change_id WHERE a.kind = ?1 ORDER BY a.target",
        )?;
        let rows = stmt.query_map([kind.as_str()], change_row)?;
        rows.map(|r| r.map_err(ControlError::from)?).collect()
    }
}

impl ControlStore {
    /// Records a held call as a pending approval request (durable).
    pub fn create_approval(&self, new: NewApproval) -> Result<ApprovalRequest, ControlError> {
        let id = format!("apr-{}", uuid::Uuid::now_v7());
        let body = serde_json::to_string(&new).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO approvals (id, created_ms, status, request, args_hash, sub, deadline_ms)
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6)",
            params![
                id,
                self.clock.now_ms(),
                body,
                new.args_hash,
                new.sub,
                new.deadline_ms
            ],
        )?;
        get_approval(&conn, &id)
    }

    /// One approval request.
    pub fn approval(&self, id: &str) -> Result<ApprovalRequest, ControlError> {
        get_approval(&*self.conn()?, id)
    }

    /// Approval requests, newest first, optionally of one status.
    pub fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        limit: usize,
    ) -> Result<Vec<ApprovalRequest>, ControlError> {
        let conn = self.conn()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = conn.prepare(
            "SELECT * FROM approvals WHERE (?1 IS NULL OR status = ?1) ORDER BY created_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![status.map(ApprovalStatus::as_str), limit],
            approval_row,
        )?;
        rows.map(|r| r.map_err(ControlError::from)?).collect()
    }

    /// A person's decision. It binds to the argument hash the person was
    /// shown (`seen_args_hash`): if the request's differs, nothing is
    /// decided. Only a pending request before its deadline can be decided.
    pub fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        comment: Option<&str>,
        seen_args_hash: &str,
    ) -> Result<ApprovalRequest, ControlError> {
        let conn = self.conn()?;
        let current = get_approval(&conn, id)?;
        if current.status != ApprovalStatus::Pending {
            return Err(ControlError::Conflict(format!(
                "approval {id} is {}, not pending",
                current.status.as_str()
            )));
        }
        if current.request.args_hash != seen_args_hash {
            return Err(ControlError::Conflict(format!(
                "approval {id} is for other arguments (argument hash {}, not {seen_args_hash})",
                current.request.args_hash
            )));
        }
        let now = self.clock.now_ms();
        if now > current.request.deadline_ms {
            conn.execute(
                "UPDATE approvals SET status = 'expired' WHERE id = ?1 AND status = 'pending'",
                [id],
            )?;
            return Err(ControlError::Conflict(format!(
                "approval {id} passed its deadline; the call was denied"
            )));
        }
        let status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        let changed = conn.execute(
            "UPDATE approvals SET status = ?1, decided_by = ?2, decided_ms = ?3, comment = ?4
             WHERE id = ?5 AND status = 'pending' AND args_hash = ?6",
            params![status.as_str(), by, now, comment, id, seen_args_hash],
        )?;
        if changed != 1 {
            return Err(ControlError::Conflict(format!(
                "approval {id} was decided concurrently"
            )));
        }
        get_approval(&conn, id)
    }

    /// Ends a pending request without a person's decision (`Expired`,
    /// `Withdrawn`). Returns whether it was still pending.
    pub fn close_approval(&self, id: &str, status: ApprovalStatus) -> Result<bool, ControlError> {
        if matches!(status, ApprovalStatus::Pending | ApprovalStatus::Approved) {
            return Err(ControlError::Invalid(format!(
                "close_approval cannot set {}",
                status.as_str()
            )));
        }
        let changed = self.conn()?.execute(
            "UPDATE approvals SET status = ?1, decided_ms = ?2 WHERE id = ?3 AND status = 'pending'",
            params![status.as_str(), self.clock.now_ms(), id],
        )?;
        Ok(changed == 1)
    }

    /// Uses an approval to release the held call with `args_hash`: only
    /// an approved request, only for its own arguments, only once.
    pub fn release_approval(
        &self,
        id: &str,
        args_hash: &str,
    ) -> Result<ApprovalRequest, ControlError> {
        let conn = self.conn()?;
        let changed = conn.execute(
            "UPDATE approvals SET released_ms = ?1
             WHERE id = ?2 AND status = 'approved' AND released_ms IS NULL AND args_hash = ?3",
            params![self.clock.now_ms(), id, args_hash],
        )?;
        if changed != 1 {
            let current = get_approval(&conn, id)?;
            return Err(ControlError::Conflict(if current.released_ms.is_some() {
                format!("approval {id} was already used")
            } else if current.request.args_hash != args_hash {
                format!("approval {id} is for other arguments")
            } else {
                format!("approval {id} is {}, not approved", current.status.as_str())
            }));
        }
        get_approval(&conn, id)
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

impl ControlStore {
    /// The pin of `tool`, if any.
    pub fn tool_pin(&self, tool: &str) -> Result<Option<ToolPin>, ControlError> {
        Ok(self
            .conn()?
            .query_row("SELECT * FROM tool_pins WHERE tool = ?1", [tool], pin_row)
            .optional()?)
    }

    /// Every pin, by name.
    pub fn tool_pins(&self) -> Result<Vec<ToolPin>, ControlError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT * FROM tool_pins ORDER BY tool")?;
        let rows = stmt.query_map([], pin_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Records `tool` as approved (pinned to `fingerprint`) or quarantined.
    pub fn set_tool_pin(
        &self,
        tool: &str,
        fingerprint: &str,
        description: &str,
        approved: bool,
        reason: &str,
        by: &str,
    ) -> Result<ToolPin, ControlError> {
        let status = if approved { "approved" } else { "quarantined" };
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO tool_pins (tool, fingerprint, description, status, reason, decided_by, decided_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tool) DO UPDATE SET fingerprint = excluded.fingerprint,
               description = excluded.description, status = excluded.status,
               reason = excluded.reason, decided_by = excluded.decided_by, decided_ms = excluded.decided_ms",
            params![tool, fingerprint, description, status, reason, by, self.clock.now_ms()],
        )?;
        conn.query_row("SELECT * FROM tool_pins WHERE tool = ?1", [tool], pin_row)
            .map_err(ControlError::from)
    }
}

fn pin_row(row: &Row<'_>) -> rusqlite::Result<ToolPin> {
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

fn get_approval(conn: &Connection, id: &str) -> Result<ApprovalRequest, ControlError> {
    get_one(conn, "approvals", "approval", id, approval_row)
}

/// The row of `table` with primary key `id`, decoded by `decode`.
fn get_one<K: rusqlite::ToSql + ToString, T>(
    conn: &Connection,
    table: &str,
    what: &'static str,
    id: K,
    decode: impl FnOnce(&Row<'_>) -> rusqlite::Result<Result<T, ControlError>>,
) -> Result<T, ControlError> {
    conn.query_row(
        &format!("SELECT * FROM {table} WHERE id = ?1"),
        [&id],
        decode,
    )
    .optional()?
    .ok_or_else(|| ControlError::NotFound {
        what,
        id: id.to_string(),
    })?
}

fn approval_row(row: &Row<'_>) -> rusqlite::Result<Result<ApprovalRequest, ControlError>> {
    let id: String = row.get("id")?;
    let status: String = row.get("status")?;
    let body: String = row.get("request")?;
    let corrupt = |reason: String| ControlError::Corrupt {
        id: id.clone(),
        reason,
    };
    let status = match status.parse::<ApprovalStatus>() {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(e))),
    };
    let request: NewApproval = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return Ok(Err(corrupt(format!("request: {e}")))),
    };
    Ok(Ok(ApprovalRequest {
        id: id.clone(),
        created_ms: row.get("created_ms")?,
        status,
        request,
        decided_by: row.get("decided_by")?,
        decided_ms: row.get("decided_ms")?,
        comment: row.get("comment")?,
        released_ms: row.get("released_ms")?,
    }))
}

fn get_revocation(conn: &Connection, id: i64) -> Result<Revocation, ControlError> {
    get_one(conn, "revocations", "revocation", id, revocation_row)
}

fn get_change(conn: &Connection, id: &str) -> Result<Change, ControlError> {
    get_one(conn, "changes", "change", id, change_row)
}

/// Decodes a row; the outer `Result` is SQLite's, the inner one ours.
fn revocation_row(row: &Row<'_>) -> rusqlite::Result<Result<Revocation, ControlError>> {
    let id: i64 = row.get("id")?;
    let kind: String = row.get("kind")?;
    Ok(match kind.parse::<RevocationKind>() {
        Err(reason) => Err(ControlError::Corrupt {
            id: id.to_string(),
            reason,
        }),
        Ok(kind) => Ok(Revocation {
            id,
            kind,
            value: row.get("value")?,
            reason: row.get("reason")?,
            revoked_by: row.get("revoked_by")?,
            revoked_ms: row.get("revoked_ms")?,
            lifted_by: row.get("lifted_by")?,
            lifted_ms: row.get("lifted_ms")?,
        }),
    })
}

fn change_row(row: &Row<'_>) -> rusqlite::Result<Result<Change, ControlError>> {
    let id: String = row.get("id")?;
    let kind: String = row.get("kind")?;
    let status: String = row.get("status")?;
    let payload: String = row.get("payload")?;
    let corrupt = |reason: String| ControlError::Corrupt {
        id: id.clone(),
        reason,
    };
    let kind = match kind.parse::<ChangeKind>() {
        Ok(k) => k,
        Err(e) => return Ok(Err(corrupt(e))),
    };
    let status = match status.parse::<ChangeStatus>() {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(e))),
    };
    let payload = match serde_json::from_str(&payload) {
        Ok(p) => p,
        Err(e) => return Ok(Err(corrupt(format!("payload: {e}")))),
    };
    Ok(Ok(Change {
        id: id.clone(),
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
    }))
}

/// The token verifier narrows every principal to these (activated through
/// the change gate; swapped atomically, read without I/O).
impl mandate_core::ScopeCeilings for ControlStore {
    fn any(&self) -> bool {
        self.has_ceilings()
    }

    fn ceiling(&self, agent: &str) -> Option<Scope> {
        ControlStore::ceiling(self, agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_core::CallerData;
    use mandate_core::ManualClock;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn open() -> TestResult<(tempfile::TempDir, ControlStore)> {
        let dir = tempfile::tempdir()?;
        let store = ControlStore::open(&dir.path().join("control.sqlite"))?;
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
        assert_eq!(ControlStore::open(&path)?.revocations(false)?.len(), 1);
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
        let store = ControlStore::open(&dir.path().join("control.sqlite"))?;
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
            payload,
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
        let a = store.create_approval(held("hash-a", store.clock().now_ms()))?;
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
        let store =
            ControlStore::open(&dir.path().join("control.sqlite"))?.with_clock(clock.clock());
        let a = store.create_approval(held("h", clock.clock().now_ms()))?;
        assert!(store.close_approval(&a.id, ApprovalStatus::Withdrawn)?);
        assert!(!store.close_approval(&a.id, ApprovalStatus::Expired)?);
        assert!(
            store
                .decide_approval(&a.id, true, "carol", None, "h")
                .is_err()
        );
        // A minute and a second later, the request's deadline has passed.
        let b = store.create_approval(held("h", clock.clock().now_ms()))?;
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
            serde_json::json!({"scope": "*"}),
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
