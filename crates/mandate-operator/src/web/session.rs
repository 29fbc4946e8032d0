//! Server-side sessions of the approval page, and the CSRF defences.
//!
//! The browser holds only a random 256-bit session id in an `HttpOnly;
//! SameSite=Strict; Path=/approvals` cookie (`Secure` when the public URL is
//! https); the server keeps the session, keyed by the SHA-256 of that id.
//! A session starts anonymous (so the sign-in form has a CSRF token too)
//! and gets a new id and a new CSRF token when someone signs in (no
//! session fixation). It ends after `session_idle` without use or
//! `session_max` after sign-in, whichever comes first.
//!
//! Every state-changing request must carry the session's CSRF token AND
//! come from Mandate's own origin (`Origin`, or `Referer` when there is no
//! `Origin`); either check failing refuses the request.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, header};
use mandate_core::Clock;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// The session cookie.
pub(crate) const COOKIE: &str = "mandate_approvals";
/// Anonymous sessions (before sign-in) end this soon.
const ANONYMOUS_IDLE: Duration = Duration::from_secs(15 * 60);
/// Most anonymous sessions kept; the oldest is dropped beyond it.
const MAX_ANONYMOUS: usize = 10_000;
/// Most signed-in sessions kept; sign-in is refused beyond it.
const MAX_SIGNED_IN: usize = 10_000;

/// How a person signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[strum(serialize_all = "snake_case")]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

struct Entry {
    person: Option<Person>,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("no randomness available")]
    Random,
    #[error("too many signed-in sessions")]
    Full,
}

/// The sessions of this process (in memory: a restart signs everyone out).
pub(crate) struct Sessions {
    map: DashMap<Key, Entry>,
    idle: Duration,
    max: Duration,
    secure: bool,
    /// Dates `expires_unix` (idleness and age use the monotonic clock).
    clock: Clock,
}

impl Sessions {
    pub(crate) fn new(idle: Duration, max: Duration, secure: bool, clock: Clock) -> Self {
        Self {
            map: DashMap::new(),
            idle,
            max,
            secure,
            clock,
        }
    }

    /// The live session named by the request's cookie, marked as used.
    pub(crate) fn current(&self, headers: &HeaderMap) -> Option<Session> {
        let key = Key::of(&cookie(headers, COOKIE)?);
        self.lookup(key, true)
    }

    /// Whether the session under `key` is still live (does not count as use).
    pub(crate) fn is_live(&self, key: Key) -> bool {
        self.lookup(key, false).is_some_and(|s| s.person.is_some())
    }

    fn lookup(&self, key: Key, touch: bool) -> Option<Session> {
        let now = Instant::now();
        let mut entry = self.map.get_mut(&key)?;
        let (idle, max) = if entry.person.is_some() {
            (self.idle, self.max)
        } else {
            (ANONYMOUS_IDLE, ANONYMOUS_IDLE)
        };
        if now.duration_since(entry.last_used) > idle || now.duration_since(entry.created) > max {
            drop(entry);
            self.map.remove(&key);
            return None;
        }
        if touch {
            entry.last_used = now;
        }
        let left = max.saturating_sub(now.duration_since(entry.created));
        Some(Session {
            key,
            person: entry.person.clone(),
            csrf: entry.csrf.clone(),
            expires_unix: self.unix_now().saturating_add(left.as_secs()),
        })
    }

    fn unix_now(&self) -> u64 {
        self.clock.now_unsigned_secs().unwrap_or(0)
    }

    /// Starts an anonymous session; returns it and its `Set-Cookie` value.
    pub(crate) fn start_anonymous(&self) -> Result<(Session, HeaderValue), SessionError> {
        let anonymous = self.map.iter().filter(|e| e.person.is_none()).count();
        if anonymous >= MAX_ANONYMOUS {
            self.purge();
            let oldest = self
                .map
                .iter()
                .filter(|e| e.person.is_none())
                .min_by_key(|e| e.last_used)
                .map(|e| *e.key());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.insert(None)
    }

    /// Signs `person` in: ends `previous` (if any) and starts a new session
    /// with a new id and CSRF token.
    pub(crate) fn sign_in(
        &self,
        previous: Option<Key>,
        person: Person,
    ) -> Result<(Session, HeaderValue), SessionError> {
        if let Some(k) = previous {
            self.map.remove(&k);
        }
        let signed_in = || self.map.iter().filter(|e| e.person.is_some()).count();
        if signed_in() >= MAX_SIGNED_IN {
            self.purge();
            if signed_in() >= MAX_SIGNED_IN {
                return Err(SessionError::Full);
            }
        }
        self.insert(Some(person))
    }

    /// Ends the session under `key`; returns the `Set-Cookie` that clears it.
    pub(crate) fn end(&self, key: Key) -> HeaderValue {
        self.map.remove(&key);
        self.clearing_cookie()
    }

    fn insert(&self, person: Option<Person>) -> Result<(Session, HeaderValue), SessionError> {
        let id = random_token().ok_or(SessionError::Random)?;
        let csrf = random_token().ok_or(SessionError::Random)?;
        let key = Key::of(&id);
        let now = Instant::now();
        let max = if person.is_some() {
            self.max
        } else {
            ANONYMOUS_IDLE
        };
        self.map.insert(
            key,
            Entry {
                person: person.clone(),
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        let cookie = HeaderValue::from_str(&format!(
            "{COOKIE}={id}; Path=/approvals; HttpOnly; SameSite=Strict{}",
            if self.secure { "; Secure" } else { "" }
        ))
        .map_err(|_| SessionError::Random)?;
        Ok((
            Session {
                key,
                person,
                csrf,
                expires_unix: self.unix_now().saturating_add(max.as_secs()),
            },
            cookie,
        ))
    }

    /// A `Set-Cookie` value that removes the session cookie.
    pub(crate) fn clearing_cookie(&self) -> HeaderValue {
        HeaderValue::from_static(
            "mandate_approvals=; Path=/approvals; HttpOnly; SameSite=Strict; Max-Age=0",
        )
    }

    /// Drops every expired session.
    fn purge(&self) {
        let now = Instant::now();
        self.map.retain(|_, e| {
            let (idle, max) = if e.person.is_some() {
                (self.idle, self.max)
            } else {
                (ANONYMOUS_IDLE, ANONYMOUS_IDLE)
            };
            now.duration_since(e.last_used) <= idle && now.duration_since(e.created) <= max
        });
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
