//! Short-lived keyed state that every replica must see and a restart must
//! not forget: approval-page sessions and their sign-in attempts, sign-in
//! throttles, the MCP sign-in flow (registered clients, sign-ins in
//! progress, authorization codes), MCP task handles and the marks of
//! calls held for approval.
//!
//! One table, `ephemeral`, keyed by ([`Kind`], key). Each row carries an
//! opaque value (JSON the owning plane defines) and the moment it expires;
//! expired rows are never returned and are deleted whenever a row of the
//! same kind is written. Each kind is bounded by the caller's `max`: when
//! it is reached a new key is refused ([`OnFull::Refuse`]) or the row that
//! expires soonest makes room ([`OnFull::EvictSoonest`]). Writes run as
//! serializable transactions, so the bound holds across replicas.

use crate::db::{Record, args};
use crate::error::ControlError;
use crate::store::Store;

/// What a row holds; each kind is bounded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// An approval-page session before sign-in (CSRF token only).
    PageAnonymous,
    /// A signed-in approval-page session.
    PageSignedIn,
    /// An OpenID Connect sign-in to the approval page in progress.
    PageOidcAttempt,
    /// Failed password sign-ins of one account name.
    PageSignInFailures,
    /// A client registered for MCP sign-in (RFC 7591).
    McpClient,
    /// An MCP sign-in in progress (authorization request to consent).
    McpSignIn,
    /// An unredeemed MCP authorization code (by hash).
    McpCode,
    /// An MCP task handle of a held call.
    McpTask,
    /// A call held for approval, by approval request id: renewed while a
    /// process waits on it, so a request whose holder died can be told
    /// from one still held.
    HeldCall,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::PageAnonymous,
        Self::PageSignedIn,
        Self::PageOidcAttempt,
        Self::PageSignInFailures,
        Self::McpClient,
        Self::McpSignIn,
        Self::McpCode,
        Self::McpTask,
        Self::HeldCall,
    ];

    /// The kind's name in the table.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a write does when its kind is at its bound and the key is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Refuse the write (`Ok(false)`).
    Refuse,
    /// Delete the row that expires soonest, then write.
    EvictSoonest,
}

/// One live row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value as written.
    pub value: String,
    /// When it expires (Unix milliseconds).
    pub expires_ms: i64,
}

fn entry(row: &Record) -> Result<Entry, ControlError> {
    Ok(Entry {
        value: row.get("value")?,
        expires_ms: row.get("expires_ms")?,
    })
}

/// How many rows of `kind` there are (expired ones already deleted).
fn rows_of(tx: &mut dyn crate::db::Sql, kind: Kind) -> Result<i64, ControlError> {
    Ok(tx
        .query_opt(
            "SELECT COUNT(*) AS n FROM ephemeral WHERE kind = $1",
            args![kind.as_str()],
        )?
        .map(|r| r.get("n"))
        .transpose()?
        .unwrap_or(0))
}

/// Deletes the expired rows of `kind` (before a write counts the live ones).
fn purge_expired(tx: &mut dyn crate::db::Sql, kind: Kind, now: i64) -> Result<(), ControlError> {
    tx.execute(
        "DELETE FROM ephemeral WHERE kind = $1 AND expires_ms <= $2",
        args![kind.as_str(), now],
    )
    .map(drop)
}

fn bound(max: usize) -> i64 {
    i64::try_from(max.max(1)).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes `value` under (`kind`, `key`) until `expires_ms`, replacing
    /// a live row of that key. `Ok(false)` if the key is new, `max` rows of
    /// the kind are live and `on_full` is [`OnFull::Refuse`].
    pub(crate) fn put_ephemeral(
        &self,
        kind: Kind,
        key: &str,
        value: &str,
        expires_ms: i64,
        max: usize,
        on_full: OnFull,
    ) -> Result<bool, ControlError> {
        let now = self.clock().now_ms();
        let max = bound(max);
        self.write(|tx| {
            purge_expired(tx, kind, now)?;
            let exists = tx
                .query_opt(
                    "SELECT 1 AS one FROM ephemeral WHERE kind = $1 AND key = $2",
                    args![kind.as_str(), key],
                )?
                .is_some();
            if !exists {
                let live = rows_of(tx, kind)?;
                if live >= max {
                    if on_full == OnFull::Refuse {
                        return Ok(false);
                    }
                    tx.execute(
                        "DELETE FROM ephemeral WHERE kind = $1 AND key IN (
                             SELECT key FROM ephemeral WHERE kind = $1
                             ORDER BY expires_ms, key LIMIT $2)",
                        args![kind.as_str(), live - max + 1],
                    )?;
                }
            }
            tx.execute(
                "INSERT INTO ephemeral (kind, key, value, expires_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value,
                     expires_ms = excluded.expires_ms",
                args![kind.as_str(), key, value, expires_ms],
            )?;
            Ok(true)
        })
    }

    /// Counts one more under (`kind`, `key`) (a counter row whose value
    /// is a number): a new row starts at 1 and lives until `expires_ms`; a
    /// live one keeps its expiry. The new count, or `None` if the key is
    /// new and `max` rows of the kind are live. Atomic across replicas.
    pub(crate) fn count_up_ephemeral(
        &self,
        kind: Kind,
        key: &str,
        expires_ms: i64,
        max: usize,
    ) -> Result<Option<i64>, ControlError> {
        let now = self.clock().now_ms();
        let max = bound(max);
        self.write(|tx| {
            purge_expired(tx, kind, now)?;
            let current = tx
                .query_opt(
                    "SELECT value FROM ephemeral WHERE kind = $1 AND key = $2",
                    args![kind.as_str(), key],
                )?
                .map(|r| r.get::<String>("value"))
                .transpose()?;
            let count = match current {
                Some(v) => v.parse::<i64>().unwrap_or(i64::MAX).saturating_add(1),
                None => {
                    if rows_of(tx, kind)? >= max {
                        return Ok(None);
                    }
                    tx.execute(
                        "INSERT INTO ephemeral (kind, key, value, expires_ms)
                         VALUES ($1, $2, '0', $3)",
                        args![kind.as_str(), key, expires_ms],
                    )?;
                    1
                }
            };
            tx.execute(
                "UPDATE ephemeral SET value = $3 WHERE kind = $1 AND key = $2",
                args![kind.as_str(), key, count.to_string().as_str()],
            )?;
            Ok(Some(count))
        })
    }

    /// Replaces the value and expiry of a live row; `false` if there is
    /// none (it expired, or was taken or dropped, perhaps by another
    /// replica: a row is never brought back).
    pub(crate) fn update_ephemeral(
        &self,
        kind: Kind,
        key: &str,
        value: &str,
        expires_ms: i64,
    ) -> Result<bool, ControlError> {
        let now = self.clock().now_ms();
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE ephemeral SET value = $3, expires_ms = $4
                 WHERE kind = $1 AND key = $2 AND expires_ms > $5",
                args![kind.as_str(), key, value, expires_ms, now],
            )? > 0)
        })
    }

    /// The live row under (`kind`, `key`).
    pub(crate) fn ephemeral(&self, kind: Kind, key: &str) -> Result<Option<Entry>, ControlError> {
        let now = self.clock().now_ms();
        self.read(|tx| {
            tx.query_opt(
                "SELECT value, expires_ms FROM ephemeral
                 WHERE kind = $1 AND key = $2 AND expires_ms > $3",
                args![kind.as_str(), key, now],
            )?
            .as_ref()
            .map(entry)
            .transpose()
        })
    }

    /// Removes the row under (`kind`, `key`) and returns it if it was
    /// live: of several replicas taking the same key, one gets it.
    pub(crate) fn take_ephemeral(
        &self,
        kind: Kind,
        key: &str,
    ) -> Result<Option<Entry>, ControlError> {
        let now = self.clock().now_ms();
        self.write(|tx| {
            let row = tx
                .query_opt(
                    "DELETE FROM ephemeral WHERE kind = $1 AND key = $2
                     RETURNING value, expires_ms",
                    args![kind.as_str(), key],
                )?
                .as_ref()
                .map(entry)
                .transpose()?;
            Ok(row.filter(|e| e.expires_ms > now))
        })
    }

    /// Removes the row under (`kind`, `key`), if any.
    pub(crate) fn drop_ephemeral(&self, kind: Kind, key: &str) -> Result<(), ControlError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM ephemeral WHERE kind = $1 AND key = $2",
                args![kind.as_str(), key],
            )
            .map(drop)
        })
    }

    /// How many rows of `kind` are live.
    pub(crate) fn count_ephemeral(&self, kind: Kind) -> Result<u64, ControlError> {
        let now = self.clock().now_ms();
        self.read(|tx| {
            let n: i64 = tx
                .query_opt(
                    "SELECT COUNT(*) AS n FROM ephemeral WHERE kind = $1 AND expires_ms > $2",
                    args![kind.as_str(), now],
                )?
                .map(|r| r.get("n"))
                .transpose()?
                .unwrap_or(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;
    use strum::VariantArray as _;

    #[test]
    fn kind_names_are_distinct_and_all_are_listed() {
        let names: std::collections::HashSet<_> =
            Kind::VARIANTS.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), Kind::VARIANTS.len());
        assert_eq!(Kind::ALL.len(), Kind::VARIANTS.len());
        assert!(Kind::VARIANTS.iter().all(|k| Kind::ALL.contains(k)));
    }
}
