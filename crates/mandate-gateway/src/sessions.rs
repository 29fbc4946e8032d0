//! MCP transport sessions (`Mcp-Session-Id`, 2025-era clients): who each
//! belongs to, and how many there may be.
//!
//! A transport session is bound to the issuer, subject pair, actor chain
//! and `sid` of the token that opened it; any other subject using it is
//! refused (F-04). Sessions are bounded per subject (issuer and `sub`: the
//! least recently used one is closed to admit a new one, so a client that
//! leaks sessions only ever loses its own) and in total (past the cap new
//! sessions are refused). rmcp closes sessions idle past the configured
//! timeout; this registry forgets them on its next sweep.
//!
//! **No sticky routing.** Every session is also written to the control
//! store (binding and the client's `initialize` parameters) when it opens.
//! A request for a session this process does not hold (opened on another
//! replica, or before a restart) is looked up there: with the same binding
//! it is admitted under this process's caps and rmcp replays the
//! handshake ([`Sessions`] is rmcp's `SessionStore`); with another binding
//! it is refused as foreign; if the store cannot answer, the request is
//! refused (503), never served unbound.

use mandate_authn::Principal;
use mandate_control::{ControlStore, McpSession};
use rmcp::transport::streamable_http_server::session::SessionManager as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::{
    SessionState, SessionStore, SessionStoreError,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The identity a transport session is bound to.
pub(crate) type Binding = (String, String, Vec<String>, Option<String>);

/// How many sessions the control store keeps per session this process may
/// hold (other replicas' sessions are stored too).
const STORED_PER_LOCAL: usize = 4;

/// The binding as stored (compared for equality only).
fn stored_binding(principal: &Principal) -> String {
    serde_json::to_string(&principal.binding()).unwrap_or_default()
}

#[derive(Debug)]
struct Entry {
    binding: Binding,
    subject: String,
    /// Latest expiry of any token seen on the session (Unix seconds).
    exp: u64,
    /// The expiry the control store has for it.
    stored_exp: u64,
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
    /// The session belongs to this subject (held here, or taken over from
    /// the control store).
    Bound,
    /// It belongs to another subject.
    Foreign,
    /// No such session (closed, evicted or never opened).
    Unknown,
    /// Stored, but this process is at its session cap.
    Refused,
    /// Not held here, and the control store cannot say whose it is.
    Unavailable,
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
    /// Opened elsewhere (another replica, or before a restart) and carried
    /// on here.
    pub taken_over: AtomicU64,
    /// Reads or writes of the control store's session table that failed.
    pub store_errors: AtomicU64,
}

/// The transport sessions of this process, and rmcp's external store.
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
    manager: Arc<LocalSessionManager>,
    control: Arc<ControlStore>,
    /// `initialize` parameters rmcp handed over for sessions being opened,
    /// until [`Sessions::opened`] stores them (bounded by the total cap).
    fresh: Mutex<HashMap<String, String>>,
    /// Parameters of stored sessions being taken over, until rmcp loads
    /// them for its handshake replay (bounded likewise).
    recalled: Mutex<HashMap<String, String>>,
    clock: AtomicU64,
    max_total: usize,
    max_per_subject: usize,
    pub(crate) stats: Arc<SessionStats>,
}

/// Puts `v` under `k`; at `max` entries an arbitrary one is dropped first
/// (its session then simply cannot move between replicas).
fn stash(map: &Mutex<HashMap<String, String>>, k: &str, v: String, max: usize) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= max.max(1)
            && let Some(other) = m.keys().next().cloned()
        {
            m.remove(&other);
        }
        m.insert(k.to_owned(), v);
    }
}

fn unstash(map: &Mutex<HashMap<String, String>>, k: &str) -> Option<String> {
    map.lock().ok().and_then(|mut m| m.remove(k))
}

impl Sessions {
    pub(crate) fn new(
        manager: Arc<LocalSessionManager>,
        control: Arc<ControlStore>,
        max_total: usize,
        max_per_subject: usize,
        stats: Arc<SessionStats>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            manager,
            control,
            fresh: Mutex::new(HashMap::new()),
            recalled: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            max_total,
            max_per_subject: max_per_subject.max(1),
            stats,
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn store_failed(&self, what: &str, e: &mandate_control::ControlError) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "MCP session store: cannot {what}");
    }

    /// Checks that session `id` belongs to `principal`, and marks it used.
    /// A session this process does not hold is looked up in the control
    /// store and, when it is `principal`'s, taken over.
    pub(crate) async fn check(&self, id: &str, principal: &Principal) -> Check {
        let now = self.tick();
        let (check, touch) = {
            let Ok(mut inner) = self.inner.lock() else {
                return Check::Unavailable;
            };
            match inner.sessions.get_mut(id) {
                Some(e) if e.binding == principal.binding() => {
                    e.exp = e.exp.max(principal.exp());
                    e.last_used = now;
                    // A later token: let other replicas know the session
                    // lives on (once per token, not per call).
                    let touch = (e.exp > e.stored_exp).then(|| {
                        e.stored_exp = e.exp;
                        e.exp
                    });
                    (Check::Bound, touch)
                }
                Some(_) => (Check::Foreign, None),
                None => (Check::Unknown, None),
            }
        };
        if let Some(exp) = touch
            && let Err(e) = self
                .control
                .touch_mcp_session(id, i64::try_from(exp).unwrap_or(i64::MAX))
                .await
        {
            self.store_failed("extend a session", &e);
        }
        match check {
            Check::Unknown => self.take_over(id, principal).await,
            other => other,
        }
    }

    /// Session `id` is not held here: if the control store has it bound to
    /// `principal`, admit it under this process's caps.
    async fn take_over(&self, id: &str, principal: &Principal) -> Check {
        let stored = match self.control.mcp_session(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return Check::Unknown,
            Err(e) => {
                self.store_failed("look a session up", &e);
                return Check::Unavailable;
            }
        };
        if stored.binding != stored_binding(principal) {
            return Check::Foreign;
        }
        let reservation = match self.admit(principal).await {
            Admission::Admitted(r) => r,
            Admission::Refused => return Check::Refused,
        };
        stash(&self.recalled, id, stored.init_params, self.max_total);
        let stored_exp = u64::try_from(stored.exp).unwrap_or(0);
        self.register(reservation, id, principal, stored_exp);
        self.stats.taken_over.fetch_add(1, Ordering::Relaxed);
        tracing::info!(session = %id, "MCP session opened elsewhere carried on here");
        Check::Bound
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
            // Closed for every replica, not only here.
            if let Err(e) = self.control.close_mcp_session(&id).await {
                self.store_failed("forget an evicted session", &e);
            }
        }
        Admission::Admitted(Reservation { subject })
    }

    fn register(&self, reservation: Reservation, id: &str, principal: &Principal, stored_exp: u64) {
        let now = self.tick();
        if let Ok(mut inner) = self.inner.lock() {
            inner.reserved = inner.reserved.saturating_sub(1);
            inner.sessions.insert(
                id.to_owned(),
                Entry {
                    binding: principal.binding(),
                    subject: reservation.subject,
                    exp: principal.exp(),
                    stored_exp,
                    last_used: now,
                },
            );
            self.stats.open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The reserved slot became session `id`, bound to `principal`; stored
    /// for every replica before the client learns the id.
    pub(crate) async fn opened(&self, reservation: Reservation, id: &str, principal: &Principal) {
        let subject = reservation.subject.clone();
        self.register(reservation, id, principal, principal.exp());
        let Some(init_params) = unstash(&self.fresh, id) else {
            return;
        };
        let session = McpSession {
            id: id.to_owned(),
            subject,
            binding: stored_binding(principal),
            init_params,
            exp: i64::try_from(principal.exp()).unwrap_or(i64::MAX),
            created_ms: self.control.clock().now_ms(),
        };
        if let Err(e) = self
            .control
            .open_mcp_session(session, self.max_per_subject)
            .await
        {
            // It still works here; it just cannot move to another replica.
            self.store_failed("store a new session", &e);
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
    /// every token expired more than `grace_secs` before `now_unix`, here
    /// and in the control store.
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
        let before = i64::try_from(cutoff).unwrap_or(i64::MAX);
        let max_stored = self.max_total.saturating_mul(STORED_PER_LOCAL);
        if let Err(e) = self.control.prune_mcp_sessions(before, max_stored).await {
            self.store_failed("prune sessions", &e);
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

/// rmcp's external session store: what it persists after a handshake is
/// stored with the session's binding by [`Sessions::opened`]; what it
/// loads to replay a handshake is what [`Sessions::check`] found.
#[async_trait::async_trait]
impl SessionStore for Sessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        // Only a session `check` found bound to the caller is ever
        // restored: anything else was refused before rmcp saw the request.
        // Taken over just now, or held here but closed by rmcp while idle.
        let params = match unstash(&self.recalled, session_id) {
            Some(p) => p,
            None => match self.control.mcp_session(session_id).await {
                Ok(Some(s)) => s.init_params,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.store_failed("look a session up", &e);
                    return Err(Box::new(e));
                }
            },
        };
        let params = serde_json::from_str(&params)?;
        Ok(Some(SessionState::new(params)))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let params = serde_json::to_string(&state.initialize_params)?;
        stash(&self.fresh, session_id, params, self.max_total);
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.control
            .close_mcp_session(session_id)
            .await
            .map_err(|e| Box::new(e) as SessionStoreError)
    }
}
