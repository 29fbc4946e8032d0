//! MCP transport sessions (`Mcp-Session-Id`, 2025-era clients): who each
//! belongs to, and how many there may be.
//!
//! A transport session is bound to the issuer, subject pair and `sid` of
//! the token that opened it; any other subject using it is refused (F-04).
//! Sessions are bounded per subject (issuer and `sub`: the least recently
//! used one is closed to admit a new one, so a client that leaks sessions
//! only ever loses its own) and in total (past the cap new sessions are
//! refused). rmcp closes sessions idle past the configured timeout; this
//! registry forgets them on its next sweep.

use mandate_authn::Principal;
use rmcp::transport::streamable_http_server::session::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The identity a transport session is bound to.
pub(crate) type Binding = (String, String, Vec<String>, Option<String>);

#[derive(Debug)]
struct Entry {
    binding: Binding,
    subject: String,
    /// Latest expiry of any token seen on the session (Unix seconds).
    exp: u64,
    /// Monotonic use counter value at the last request (for LRU).
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    /// Open and reserved (being created) sessions per subject.
    per_subject: HashMap<String, usize>,
    /// Sessions being created now (admitted, not yet answered).
    reserved: usize,
}

impl Inner {
    fn count(&self, subject: &str) -> usize {
        self.per_subject.get(subject).copied().unwrap_or(0)
    }

    fn release(&mut self, subject: &str) {
        if let Some(n) = self.per_subject.get_mut(subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_subject.remove(subject);
            }
        }
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.sessions.remove(id) {
            Some(e) => {
                self.release(&e.subject);
                true
            }
            None => false,
        }
    }
}

/// What became of a request to open a session.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A slot is reserved: call [`Sessions::opened`] or [`Sessions::abandoned`].
    Admitted(Reservation),
    /// Every slot is taken.
    Refused,
}

/// A reserved session slot.
#[derive(Debug)]
pub(crate) struct Reservation {
    subject: String,
}

/// The result of checking a request's session id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The session belongs to this subject.
    Bound,
    /// It belongs to another subject.
    Foreign,
    /// No such session (closed, evicted or never opened).
    Unknown,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Transport sessions open now.
    pub open: AtomicU64,
    /// Closed because their subject opened one past its cap.
    pub evicted: AtomicU64,
    /// Refused because the total cap was reached.
    pub refused: AtomicU64,
}

/// The transport sessions of this process.
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
    manager: Arc<LocalSessionManager>,
    clock: AtomicU64,
    max_total: usize,
    max_per_subject: usize,
    pub(crate) stats: Arc<SessionStats>,
}

impl Sessions {
    pub(crate) fn new(
        manager: Arc<LocalSessionManager>,
        max_total: usize,
        max_per_subject: usize,
        stats: Arc<SessionStats>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            manager,
            clock: AtomicU64::new(0),
            max_total,
            max_per_subject: max_per_subject.max(1),
            stats,
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks that session `id` belongs to `principal`, and marks it used.
    pub(crate) fn check(&self, id: &str, principal: &Principal) -> Check {
        let now = self.tick();
        let Ok(mut inner) = self.inner.lock() else {
            return Check::Unknown;
        };
        match inner.sessions.get_mut(id) {
            Some(e) if e.binding == principal.binding() => {
                e.exp = e.exp.max(principal.exp());
                e.last_used = now;
                Check::Bound
            }
            Some(_) => Check::Foreign,
            None => Check::Unknown,
        }
    }

    /// Reserves a slot for a new session of `principal`'s subject: past the
    /// subject's cap its least recently used session is closed first; past
    /// the total cap the request is refused.
    pub(crate) async fn admit(&self, principal: &Principal) -> Admission {
        let subject = principal.subject_key();
        // Sessions rmcp closed on its own (idle) still count until swept;
        // sweep before refusing anyone.
        let full = self.inner.lock().map_or(true, |i| {
            i.count(&subject) >= self.max_per_subject
                || i.sessions.len().saturating_add(i.reserved) >= self.max_total
        });
        if full {
            self.sweep_closed().await;
        }
        let evict = {
            let Ok(mut inner) = self.inner.lock() else {
                return Admission::Refused;
            };
            let evict = if inner.count(&subject) >= self.max_per_subject {
                let oldest = inner
                    .sessions
                    .iter()
                    .filter(|(_, e)| e.subject == subject)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(id, _)| id.clone());
                if let Some(id) = &oldest {
                    inner.remove(id);
                }
                oldest
            } else {
                None
            };
            if evict.is_none()
                && inner.sessions.len().saturating_add(inner.reserved) >= self.max_total
            {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Admission::Refused;
            }
            inner.reserved = inner.reserved.saturating_add(1);
            *inner.per_subject.entry(subject.clone()).or_default() += 1;
            evict
        };
        if let Some(id) = evict {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(session = %id, "subject at its session cap: least recently used session closed");
            if let Err(e) = self.manager.close_session(&Arc::from(id.as_str())).await {
                tracing::warn!(error = %e, "could not close an evicted session");
            }
        }
        Admission::Admitted(Reservation { subject })
    }

    /// The reserved slot became session `id`, bound to `principal`.
    pub(crate) fn opened(&self, reservation: Reservation, id: &str, principal: &Principal) {
        let now = self.tick();
        if let Ok(mut inner) = self.inner.lock() {
            inner.reserved = inner.reserved.saturating_sub(1);
            inner.sessions.insert(
                id.to_owned(),
                Entry {
                    binding: principal.binding(),
                    subject: reservation.subject,
                    exp: principal.exp(),
                    last_used: now,
                },
            );
            self.stats.open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The reserved slot was not used (the request opened no session).
    pub(crate) fn abandoned(&self, reservation: Reservation) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.reserved = inner.reserved.saturating_sub(1);
            inner.release(&reservation.subject);
        }
    }

    /// Session `id` was deleted by its client.
    pub(crate) fn closed(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.remove(id)
        {
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets sessions rmcp has closed (idle timeout) and sessions whose
    /// every token expired more than `grace_secs` before `now_unix`.
    pub(crate) async fn sweep(&self, now_unix: u64, grace_secs: u64) {
        self.sweep_closed().await;
        let cutoff = now_unix.saturating_sub(grace_secs);
        let expired: Vec<String> = match self.inner.lock() {
            Ok(inner) => inner
                .sessions
                .iter()
                .filter(|(_, e)| e.exp <= cutoff)
                .map(|(id, _)| id.clone())
                .collect(),
            Err(_) => return,
        };
        for id in expired {
            self.closed(&id);
            let _ = self.manager.close_session(&Arc::from(id.as_str())).await;
        }
    }

    async fn sweep_closed(&self) {
        let ids: Vec<String> = match self.inner.lock() {
            Ok(inner) => inner.sessions.keys().cloned().collect(),
            Err(_) => return,
        };
        let live = self.manager.sessions.read().await;
        let dead: Vec<String> = ids
            .into_iter()
            .filter(|id| !live.contains_key(id.as_str()))
            .collect();
        drop(live);
        for id in dead {
            self.closed(&id);
        }
    }
}
