//! MCP transport sessions (`Mcp-Session-Id`, 2025-era clients) as every
//! replica can find them: who a session is bound to and the client's
//! `initialize` parameters, so a session opened on one replica carries on
//! on another (or after a restart) without sticky routing.
//!
//! A row is written when a session opens and deleted when its client
//! closes it or its subject's cap evicts it; rows whose every token has
//! expired are pruned. Stored rows are bounded per subject (the newest
//! `max_per_subject` are kept) and in total ([`Store::prune_mcp_sessions`]).

use crate::db::{Record, args};
use crate::error::ControlError;
use crate::store::Store;

/// One stored transport session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSession {
    /// The `Mcp-Session-Id`.
    pub id: String,
    /// Whose session budget it counts against (issuer and `sub`).
    pub subject: String,
    /// The identity it is bound to, as the gateway spells it (compared for
    /// equality only).
    pub binding: String,
    /// The client's `initialize` parameters (JSON), replayed when another
    /// replica takes the session over.
    pub init_params: String,
    /// Latest expiry of any token seen on it (Unix seconds).
    pub exp: i64,
    /// When it opened (Unix milliseconds).
    pub created_ms: i64,
}

fn session_row(row: &Record) -> Result<McpSession, ControlError> {
    Ok(McpSession {
        id: row.get("id")?,
        subject: row.get("subject")?,
        binding: row.get("binding")?,
        init_params: row.get("init_params")?,
        exp: row.get("exp")?,
        created_ms: row.get("created_ms")?,
    })
}

impl Store {
    /// Stores session `s` (replacing a row of the same id) and forgets the
    /// subject's oldest stored sessions beyond `max_per_subject`.
    pub(crate) fn open_mcp_session(
        &self,
        s: &McpSession,
        max_per_subject: usize,
    ) -> Result<(), ControlError> {
        let keep = i64::try_from(max_per_subject.max(1)).unwrap_or(i64::MAX);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO mcp_sessions (id, subject, binding, init_params, exp, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET subject = excluded.subject,
                     binding = excluded.binding, init_params = excluded.init_params,
                     exp = excluded.exp, created_ms = excluded.created_ms",
                args![
                    &s.id,
                    &s.subject,
                    &s.binding,
                    &s.init_params,
                    s.exp,
                    s.created_ms
                ],
            )?;
            tx.execute(
                "DELETE FROM mcp_sessions WHERE subject = $1 AND id NOT IN (
                     SELECT id FROM mcp_sessions WHERE subject = $1
                     ORDER BY created_ms DESC, id DESC LIMIT $2)",
                args![&s.subject, keep],
            )
            .map(drop)
        })
    }

    /// Session `id`, if stored.
    pub(crate) fn mcp_session(&self, id: &str) -> Result<Option<McpSession>, ControlError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT id, subject, binding, init_params, exp, created_ms
                 FROM mcp_sessions WHERE id = $1",
                args![id],
            )?
            .as_ref()
            .map(session_row)
            .transpose()
        })
    }

    /// Raises session `id`'s expiry to `exp` (a later token was seen).
    pub(crate) fn touch_mcp_session(&self, id: &str, exp: i64) -> Result<(), ControlError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE mcp_sessions SET exp = $2 WHERE id = $1 AND exp < $2",
                args![id, exp],
            )
            .map(drop)
        })
    }

    /// Forgets session `id` (closed by its client, or evicted).
    pub(crate) fn close_mcp_session(&self, id: &str) -> Result<(), ControlError> {
        self.write(|tx| {
            tx.execute("DELETE FROM mcp_sessions WHERE id = $1", args![id])
                .map(drop)
        })
    }

    /// Forgets sessions whose every token expired before `before` (Unix
    /// seconds), then the oldest beyond `max_total`; how many went.
    pub(crate) fn prune_mcp_sessions(
        &self,
        before: i64,
        max_total: usize,
    ) -> Result<u64, ControlError> {
        let keep = i64::try_from(max_total.max(1)).unwrap_or(i64::MAX);
        self.write(|tx| {
            let expired = tx.execute("DELETE FROM mcp_sessions WHERE exp < $1", args![before])?;
            let over = tx.execute(
                "DELETE FROM mcp_sessions WHERE id NOT IN (
                     SELECT id FROM mcp_sessions ORDER BY created_ms DESC, id DESC LIMIT $1)",
                args![keep],
            )?;
            Ok(expired.saturating_add(over))
        })
    }
}
