//! Server-side sessions of the approval page, and the CSRF defences.
//!
//! The browser holds only a random 256-bit session id in an `HttpOnly;
//! SameSite=Strict; Path=/approvals` cookie (`Secure` when the public URL is
//! https); the server keeps the session, keyed by the SHA-256 of that id.
//! A session starts anonymous (so the sign-in form has a CSRF token too)
//! and gets a new id and a new CSRF token when someone signs in (no
//! session fixation). It ends after `session_idle` without use or
//! `session_max` after sign-in, whichever comes first. Sessions are kept
//! in the control store, so every replica knows them and a restart signs
//! nobody out.
//!
//! Every state-changing request must carry the session's CSRF token AND
//! come from Mandate's own origin (`Origin`, or `Referer` when there is no
//! `Origin`); either check failing refuses the request.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use mandate_control::ephemeral::{Kind, OnFull};
use mandate_control::{ControlError, ControlStore};
use mandate_core::Clock;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The session cookie.
pub(crate) const COOKIE: &str = "mandate_approvals";
/// Anonymous sessions (before sign-in) end this soon.
const ANONYMOUS_IDLE: Duration = Duration::from_secs(15 * 60);
/// Most anonymous sessions kept; the one nearest its end is dropped
/// beyond it.
const MAX_ANONYMOUS: usize = 10_000;
/// Most signed-in sessions kept; sign-in is refused beyond it.
const MAX_SIGNED_IN: usize = 10_000;

/// How a person signed in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub(crate) enum Method {
    /// A local account from `[approvals.web]`.
    Local,
    /// The configured OpenID Connect provider.
    Oidc,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who a signed-in session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Person {
    pub(crate) sub: String,
    pub(crate) iss: String,
    pub(crate) method: Method,
}

/// A live session, as handlers see it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The key it is stored under (SHA-256 of the cookie value).
    pub(crate) key: Key,
    pub(crate) person: Option<Person>,
    pub(crate) csrf: String,
    /// Unix seconds at which it ends regardless of use.
    pub(crate) expires_unix: u64,
}

/// SHA-256 of a session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key([u8; 32]);

impl Key {
    fn of(id: &str) -> Self {
        Self(Sha256::digest(id.as_bytes()).into())
    }

    /// How the control store names it.
    fn stored(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// A session as the control store keeps it (shared by every replica).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    person: Option<Person>,
    csrf: String,
    created_ms: i64,
    last_used_ms: i64,
}

/// Why a session could not be made or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("no randomness available")]
    Random,
    #[error("too many signed-in sessions")]
    Full,
    #[error("the session store is unavailable: {0}")]
    Store(#[from] ControlError),
    #[error("a stored session is unreadable")]
    Corrupt,
}

/// A session's use is written back at most this often (each page load
/// would otherwise be a write).
const TOUCH_EVERY_MS: i64 = 1_000;

/// The approval page's sessions, in the control store: every replica
/// knows them and a restart keeps them.
pub(crate) struct Sessions {
    control: Arc<ControlStore>,
    idle: Duration,
    max: Duration,
    secure: bool,
    /// Dates sessions (creation, use, expiry).
    clock: Clock,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sessions {
    pub(crate) fn new(
        control: Arc<ControlStore>,
        idle: Duration,
        max: Duration,
        secure: bool,
        clock: Clock,
    ) -> Self {
        Self {
            control,
            idle,
            max,
            secure,
            clock,
        }
    }

    /// The live session named by the request's cookie, marked as used.
    pub(crate) async fn current(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Session>, SessionError> {
        let Some(id) = cookie(headers, COOKIE) else {
            return Ok(None);
        };
        self.lookup(Key::of(&id), true).await
    }

    /// Whether the session under `key` is still live and signed in (does
    /// not count as use). A store that cannot answer says no.
    pub(crate) async fn is_live(&self, key: Key) -> bool {
        matches!(self.lookup(key, false).await, Ok(Some(s)) if s.person.is_some())
    }

    /// (idle, max) in ms for a signed-in or anonymous session.
    fn limits(&self, signed_in: bool) -> (i64, i64) {
        if signed_in {
            (ms(self.idle), ms(self.max))
        } else {
            (ms(ANONYMOUS_IDLE), ms(ANONYMOUS_IDLE))
        }
    }

    fn expiry(&self, s: &Stored) -> i64 {
        let (idle, max) = self.limits(s.person.is_some());
        s.created_ms
            .saturating_add(max)
            .min(s.last_used_ms.saturating_add(idle))
    }

    async fn lookup(&self, key: Key, touch: bool) -> Result<Option<Session>, SessionError> {
        let stored_key = key.stored();
        let mut found = None;
        for kind in [Kind::PageSignedIn, Kind::PageAnonymous] {
            if let Some(e) = self.control.ephemeral(kind, &stored_key).await? {
                found = Some((kind, e));
                break;
            }
        }
        let Some((kind, entry)) = found else {
            return Ok(None);
        };
        let mut stored: Stored =
            serde_json::from_str(&entry.value).map_err(|_| SessionError::Corrupt)?;
        let now = self.clock.now_ms();
        if touch && now.saturating_sub(stored.last_used_ms) >= TOUCH_EVERY_MS {
            stored.last_used_ms = now;
            let value = serde_json::to_string(&stored).map_err(|_| SessionError::Corrupt)?;
            let expires = self.expiry(&stored);
            if !self
                .control
                .update_ephemeral(kind, &stored_key, value, expires)
                .await?
            {
                // Ended (perhaps on another replica) since it was read.
                return Ok(None);
            }
        }
        let (_, max) = self.limits(stored.person.is_some());
        Ok(Some(self.session(
            key,
            stored.person,
            stored.csrf,
            stored.created_ms.saturating_add(max),
        )))
    }

    fn session(&self, key: Key, person: Option<Person>, csrf: String, ends_ms: i64) -> Session {
        Session {
            key,
            person,
            csrf,
            expires_unix: u64::try_from(ends_ms / 1000).unwrap_or(0),
        }
    }

    /// Starts an anonymous session; returns it and its `Set-Cookie` value.
    /// At the bound, the anonymous session nearest its end makes room.
    pub(crate) async fn start_anonymous(&self) -> Result<(Session, HeaderValue), SessionError> {
        self.insert(None, MAX_ANONYMOUS, OnFull::EvictSoonest).await
    }

    /// Signs `person` in: ends `previous` (if any) and starts a new session
    /// with a new id and CSRF token.
    pub(crate) async fn sign_in(
        &self,
        previous: Option<Key>,
        person: Person,
    ) -> Result<(Session, HeaderValue), SessionError> {
        if let Some(k) = previous {
            self.forget(k).await?;
        }
        self.insert(Some(person), MAX_SIGNED_IN, OnFull::Refuse)
            .await
    }

    /// Ends the session under `key`; returns the `Set-Cookie` that clears it.
    pub(crate) async fn end(&self, key: Key) -> Result<HeaderValue, SessionError> {
        self.forget(key).await?;
        Ok(self.clearing_cookie())
    }

    async fn forget(&self, key: Key) -> Result<(), SessionError> {
        let k = key.stored();
        self.control.drop_ephemeral(Kind::PageSignedIn, &k).await?;
        self.control.drop_ephemeral(Kind::PageAnonymous, &k).await?;
        Ok(())
    }

    async fn insert(
        &self,
        person: Option<Person>,
        bound: usize,
        on_full: OnFull,
    ) -> Result<(Session, HeaderValue), SessionError> {
        let id = random_token().ok_or(SessionError::Random)?;
        let csrf = random_token().ok_or(SessionError::Random)?;
        let key = Key::of(&id);
        let now = self.clock.now_ms();
        let kind = if person.is_some() {
            Kind::PageSignedIn
        } else {
            Kind::PageAnonymous
        };
        let stored = Stored {
            person,
            csrf,
            created_ms: now,
            last_used_ms: now,
        };
        let value = serde_json::to_string(&stored).map_err(|_| SessionError::Corrupt)?;
        if !self
            .control
            .put_ephemeral(
                kind,
                &key.stored(),
                value,
                self.expiry(&stored),
                bound,
                on_full,
            )
            .await?
        {
            return Err(SessionError::Full);
        }
        let cookie = HeaderValue::from_str(&format!(
            "{COOKIE}={id}; Path=/approvals; HttpOnly; SameSite=Strict{}",
            if self.secure { "; Secure" } else { "" }
        ))
        .map_err(|_| SessionError::Random)?;
        let (_, max) = self.limits(stored.person.is_some());
        Ok((
            self.session(key, stored.person, stored.csrf, now.saturating_add(max)),
            cookie,
        ))
    }

    /// A `Set-Cookie` value that removes the session cookie.
    pub(crate) fn clearing_cookie(&self) -> HeaderValue {
        HeaderValue::from_static(
            "mandate_approvals=; Path=/approvals; HttpOnly; SameSite=Strict; Max-Age=0",
        )
    }
}

/// 256 random bits, base64url.
pub(crate) fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// The value of cookie `name` in the request, if present once (two of
/// one name: trust neither) and of a plausible length.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    mandate_authn::oidc::cookie(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        name,
    )
    .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Why a state-changing request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrfRefusal {
    /// No `Origin` and no `Referer`.
    NoOrigin,
    /// From another origin (or `Origin: null`).
    ForeignOrigin,
    /// No CSRF token in the form or the `X-CSRF-Token` header.
    NoToken,
    /// A token that is not this session's.
    WrongToken,
}

impl CsrfRefusal {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::NoOrigin => "the request names no origin (Origin or Referer)",
            Self::ForeignOrigin => "the request comes from another origin",
            Self::NoToken => "the request carries no CSRF token",
            Self::WrongToken => "the request carries a CSRF token that is not this session's",
        }
    }
}

/// The request header that may carry the CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Checks a state-changing request: it comes from `origin` (Mandate's
/// public origin, e.g. `https://mandate.example`) and carries `expected`
/// (the session's CSRF token) in `form_token` or the `X-CSRF-Token`
/// header. Both must hold.
pub(crate) fn check_csrf(
    headers: &HeaderMap,
    origin: &str,
    expected: &str,
    form_token: Option<&str>,
) -> Result<(), CsrfRefusal> {
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        Some(Ok(o)) if o == origin => {}
        Some(_) => return Err(CsrfRefusal::ForeignOrigin),
        None => match headers.get(header::REFERER).map(HeaderValue::to_str) {
            Some(Ok(r))
                if r.strip_prefix(origin)
                    .is_some_and(|rest| rest.starts_with('/')) => {}
            Some(_) => return Err(CsrfRefusal::ForeignOrigin),
            None => return Err(CsrfRefusal::NoOrigin),
        },
    }
    let header_token = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty());
    let given = form_token
        .filter(|t| !t.is_empty())
        .or(header_token)
        .ok_or(CsrfRefusal::NoToken)?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected.as_bytes())
        .is_ok()
    {
        Ok(())
    } else {
        Err(CsrfRefusal::WrongToken)
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
