//! The approval page: where people decide held tool calls in a browser.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | `/approvals` | the page (static HTML; the script renders it) |
//! | GET  | `/approvals/assets/approvals.{css,js}` | its only style sheet and script |
//! | GET  | `/approvals/session` | who is signed in, the CSRF token, the sign-in options |
//! | GET  | `/approvals/requests` | pending requests and recent history (JSON) |
//! | GET  | `/approvals/events` | the same, live (server-sent events `snapshot`, `signed_out`) |
//! | POST | `/approvals/login` | local account sign-in `{csrf, account, password}` |
//! | POST | `/approvals/logout` | sign out `{csrf}` |
//! | POST | `/approvals/requests/{id}/approve` or `/deny` | `{csrf, args_hash, comment}` |
//! | GET  | `/approvals/oidc/login`, `/approvals/oidc/callback` | OpenID Connect sign-in |
//! | GET  | `/approvals/audit` | session replay page (`audit.js` renders it) |
//! | GET  | `/approvals/audit/sessions/{id}` | a session's audit timeline (JSON; the read is audited) |
//!
//! Everything shown comes from the control store (the durable approval
//! requests), never from the agent; a decision goes through the same
//! [`crate::approvals::decide`] as the API (class permission,
//! self-approval, argument hash, audit record first). Only a browser
//! session of a person who signed in (local account or OpenID Connect) and
//! matches an `[[operators]]` entry with the `approver` role can decide:
//! bearer tokens are not read here at all, so nothing from an agent's
//! channel reaches a decision. Every response carries a strict
//! Content-Security-Policy (no inline script or style), `X-Frame-Options:
//! DENY`, `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

mod oidc;
mod session;

use crate::approvals::{DecideBody, decide, intent_view, view};
use crate::config::WebConfig;
use crate::error::ApiError;
use crate::operator::{Identity, Operator, record};
use crate::password::{DEFAULT_ITERATIONS, LoginLimiter, PasswordHash};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use mandate_control::ApprovalStatus;
use mandate_core::html::escape;
use mandate_gateway::{Gateway, Role};
use oidc::{Callback, Oidc, OidcError};
use serde::Deserialize;
use serde_json::{Value, json};
use session::{CsrfRefusal, Method, Person, Session, Sessions};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The issuer (`iss`) of people signed in with a local account; an
/// `[[operators]]` entry may name it to match local accounts only.
pub const LOCAL_ISSUER: &str = "local";

const INDEX_HTML: &str = include_str!("assets/index.html");
const CSS: &str = include_str!("assets/approvals.css");
const JS: &str = include_str!("assets/approvals.js");
const AUDIT_HTML: &str = include_str!("assets/audit.html");
const AUDIT_JS: &str = include_str!("assets/audit.js");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How often the live feed re-reads the control store (so requests created
/// or closed by any replica appear within this time).
const FEED_EVERY: Duration = Duration::from_secs(1);
/// How often a live feed checks its session is still valid.
const SESSION_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Most pending requests on the page.
const MAX_PENDING: usize = 200;
/// Recent requests read for the history, and most shown.
const HISTORY_SCAN: usize = 300;
const MAX_HISTORY: usize = 100;
/// Longest comment accepted with a decision.
const MAX_COMMENT_CHARS: usize = 2000;
/// Longest account name accepted at sign-in.
const MAX_ACCOUNT_CHARS: usize = 256;

#[derive(Clone)]
struct Web {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Web {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

struct Inner {
    gw: Arc<Gateway>,
    /// Mandate's public origin (`scheme://host[:port]`), for CSRF checks.
    origin: String,
    sessions: Sessions,
    limiter: LoginLimiter,
    accounts: BTreeMap<String, PasswordHash>,
    /// Checked for unknown accounts, as costly as a real check.
    decoy: PasswordHash,
    oidc: Option<Oidc>,
    /// The latest snapshot of requests (JSON), for live pages.
    feed: watch::Sender<Arc<str>>,
    feeding: AtomicBool,
}

/// The `/approvals` routes.
pub(crate) fn routes(gw: Arc<Gateway>, web_cfg: &WebConfig) -> Router {
    let cfg = gw.config();
    let origin = url::Url::parse(&cfg.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| cfg.public_url.clone());
    let secure = cfg.public_url.starts_with("https://");
    let iterations = web_cfg
        .local_accounts
        .iter()
        .map(|a| a.password_hash.iterations())
        .max()
        .or(NonZeroU32::new(DEFAULT_ITERATIONS))
        .unwrap_or(NonZeroU32::MIN);
    let web = Web {
        inner: Arc::new(Inner {
            origin,
            sessions: Sessions::new(
                gw.control().clone(),
                web_cfg.session_idle,
                web_cfg.session_max,
                secure,
                gw.clock().clone(),
            ),
            limiter: LoginLimiter::new(gw.control().clone(), gw.clock().clone()),
            accounts: web_cfg
                .local_accounts
                .iter()
                .map(|a| (a.sub.clone(), a.password_hash.clone()))
                .collect(),
            decoy: PasswordHash::decoy(iterations),
            oidc: web_cfg
                .oidc
                .clone()
                .map(|o| Oidc::new(o, &cfg.public_url, gw.control().clone(), gw.clock().clone())),
            feed: watch::channel(Arc::from("{}")).0,
            feeding: AtomicBool::new(false),
            gw: gw.clone(),
        }),
    };
    Router::new()
        .route("/approvals", get(page))
        .route("/approvals/assets/approvals.css", get(css))
        .route("/approvals/assets/approvals.js", get(js))
        .route("/approvals/session", get(session_info))
        .route("/approvals/requests", get(requests))
        .route("/approvals/events", get(events))
        .route("/approvals/login", post(login))
        .route("/approvals/logout", post(logout))
        .route("/approvals/requests/{id}/{action}", post(decide_route))
        .route("/approvals/oidc/login", get(oidc_login))
        .route("/approvals/oidc/callback", get(oidc_callback))
        .route("/approvals/audit", get(audit_page))
        .route("/approvals/assets/audit.js", get(audit_js))
        .route("/approvals/audit/sessions/{id}", get(audit_session))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// Adds the page's security headers to every response under `/approvals`.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

// ----- errors ------------------------------------------------------------------

/// A refusal of a JSON endpoint: `{"error", "error_description"}`.
fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn signed_out() -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "sign in to the approval page first (your session may have ended)",
    )
}

fn unavailable() -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the approval page cannot start a session right now; try again shortly",
    )
}

// ----- the page ----------------------------------------------------------------

async fn page() -> Response {
    html(StatusCode::OK, INDEX_HTML.to_owned())
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

async fn audit_page() -> Response {
    html(StatusCode::OK, AUDIT_HTML.to_owned())
}

async fn audit_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        AUDIT_JS,
    )
        .into_response()
}

/// One session's timeline for a signed-in operator; the read is recorded
/// in the audit log first.
async fn audit_session(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    const ACTION: &str = "control/audit.read_session";
    let Some((_, op)) = web.signed_in(&headers).await else {
        return signed_out();
    };
    if let Err(e) = record(
        &web.gw,
        &op.subject(),
        ACTION,
        Some(Role::Approver),
        &format!("{} read session {id}", op.name()),
        &json!({ "session": id }),
    )
    .await
    {
        return e.into_response();
    }
    match crate::audit_api::session_timeline(&web.gw, &id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A short server-rendered page (sign-in results). `body` is trusted HTML;
/// everything interpolated into it must pass [`escape`].
fn message_page(status: StatusCode, title: &str, body: &str, refresh_to: Option<&str>) -> Response {
    let refresh = refresh_to
        .map(|to| {
            format!(
                "<meta http-equiv=\"refresh\" content=\"0;url={}\">",
                escape(to)
            )
        })
        .unwrap_or_default();
    html(
        status,
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n{refresh}\n\
             <title>{title} · Mandate approvals</title>\n\
             <link rel=\"stylesheet\" href=\"/approvals/assets/approvals.css\">\n</head>\n<body>\n\
             <header class=\"top\"><div class=\"brand\">Mandate <span>Approvals</span></div></header>\n\
             <main><section class=\"panel message\"><h1>{title}</h1>\n{body}\n</section></main>\n</body>\n</html>\n",
            title = escape(title)
        ),
    )
}

/// A request id to land on after sign-in, or nothing.
fn clean_fragment(f: Option<&str>) -> String {
    f.map(|f| f.trim_start_matches('#'))
        .filter(|f| {
            f.len() <= 100
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or_default()
        .to_owned()
}

// ----- who is signed in -----------------------------------------------------------

/// A signed-in person as the author of their decisions (authenticated by
/// the sign-in; the session bounds how long).
fn person_principal(person: &Person) -> Identity {
    Identity {
        iss: person.iss.clone(),
        sub: person.sub.clone(),
    }
}

impl Web {
    /// The operator a signed-in person is, if an `[[operators]]` entry
    /// makes them an approver.
    fn approver(&self, person: &Person) -> Option<Operator> {
        Operator::approver(&self.gw, person_principal(person))
    }

    /// The request's session, if it belongs to a signed-in approver (a
    /// session store that cannot answer: none).
    async fn signed_in(&self, headers: &HeaderMap) -> Option<(Session, Operator)> {
        let session = self.current(headers).await.ok()??;
        let op = self.approver(session.person.as_ref()?)?;
        Some((session, op))
    }

    /// The request's live session; `Err` is the response to give when the
    /// session store cannot answer (503, never "signed out").
    async fn current(&self, headers: &HeaderMap) -> Result<Option<Session>, Response> {
        self.sessions.current(headers).await.map_err(|e| {
            tracing::error!(error = %e, "approval page: the session store is unavailable");
            unavailable()
        })
    }

    /// A live-feed receiver; starts the feed if it is not running.
    fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        let rx = self.feed.subscribe();
        if self
            .feeding
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tokio::spawn(run_feed(self.clone()));
        }
        rx
    }
}

async fn session_info(State(web): State<Web>, headers: HeaderMap) -> Response {
    let current = match web.current(&headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let (session, set_cookie) = match current {
        Some(s) => (s, None),
        None => match web.sessions.start_anonymous().await {
            Ok((s, c)) => (s, Some(c)),
            Err(_) => return unavailable(),
        },
    };
    let person = session
        .person
        .as_ref()
        .filter(|p| web.approver(p).is_some());
    let body = json!({
        "signed_in": person.is_some(),
        "sub": person.map(|p| &p.sub),
        "iss": person.map(|p| &p.iss),
        "method": person.map(|p| p.method.as_str()),
        "expires_unix": person.map(|_| session.expires_unix),
        "csrf": session.csrf,
        "login": {
            "local": !web.accounts.is_empty(),
            "oidc": web.oidc.as_ref().map(|o| json!({"issuer": o.issuer()})),
        },
    });
    let mut resp = Json(body).into_response();
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

// ----- the requests ------------------------------------------------------------

/// Pending requests (soonest deadline first) and recent history, as JSON.
async fn snapshot(gw: &Arc<Gateway>) -> Arc<str> {
    let control = gw.control();
    let read = async {
        let pending = control
            .approvals(Some(ApprovalStatus::Pending), MAX_PENDING + 1)
            .await?;
        let recent = control.approvals(None, HISTORY_SCAN).await?;
        let intents_pending = control
            .intent_approvals(Some(ApprovalStatus::Pending), MAX_PENDING + 1)
            .await?;
        let intents_recent = control.intent_approvals(None, HISTORY_SCAN).await?;
        Ok::<_, mandate_control::ControlError>((pending, recent, intents_pending, intents_recent))
    }
    .await;
    let v = match read {
        Ok((pending, recent, intents_pending, intents_recent)) => {
            // Calls and task intents together: (deadline or creation, view).
            let mut pending: Vec<(i64, Value)> = pending
                .iter()
                .map(|a| (a.request.deadline_ms, view(gw, a)))
                .chain(
                    intents_pending
                        .iter()
                        .map(|t| (t.deadline_ms, intent_view(gw, t))),
                )
                .collect();
            let truncated = pending.len() > MAX_PENDING;
            pending.sort_by_key(|(deadline, _)| *deadline);
            pending.truncate(MAX_PENDING);
            let mut history: Vec<(i64, Value)> = recent
                .iter()
                .filter(|a| a.status != ApprovalStatus::Pending)
                .map(|a| (a.created_ms, view(gw, a)))
                .chain(
                    intents_recent
                        .iter()
                        .filter(|t| t.approval != Some(ApprovalStatus::Pending))
                        .map(|t| (t.created_ms, intent_view(gw, t))),
                )
                .collect();
            history.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
            history.truncate(MAX_HISTORY);
            json!({
                "pending": pending.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                "history": history.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                "truncated": truncated,
                "unavailable": false,
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "approval page: control store unavailable");
            json!({"pending": [], "history": [], "truncated": false, "unavailable": true})
        }
    };
    Arc::from(v.to_string())
}

/// `{"now_ms": …, "snapshot": …}`: the server's clock travels with the
/// data so the page can count deadlines down correctly.
fn stamped(gw: &Gateway, snapshot: &str) -> String {
    format!(
        "{{\"now_ms\":{},\"snapshot\":{snapshot}}}",
        gw.clock().now_ms()
    )
}

async fn requests(State(web): State<Web>, headers: HeaderMap) -> Response {
    if web.signed_in(&headers).await.is_none() {
        return signed_out();
    }
    let snap = snapshot(&web.gw).await;
    (
        [(header::CONTENT_TYPE, "application/json")],
        stamped(&web.gw, &snap),
    )
        .into_response()
}

/// Re-reads the store every [`FEED_EVERY`] while anyone is watching and
/// publishes the snapshot when it changed; stops when nobody is.
async fn run_feed(web: Web) {
    let mut tick = tokio::time::interval(FEED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if web.feed.receiver_count() == 0 {
            web.feeding.store(false, Ordering::SeqCst);
            // A page may have subscribed in between and seen the feed running.
            if web.feed.receiver_count() > 0
                && web
                    .feeding
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                continue;
            }
            return;
        }
        let snap = snapshot(&web.gw).await;
        web.feed.send_if_modified(|current| {
            if **current == *snap {
                false
            } else {
                *current = snap;
                true
            }
        });
    }
}

struct Feed {
    first: Option<Arc<str>>,
    rx: watch::Receiver<Arc<str>>,
    web: Web,
    key: session::Key,
    check: tokio::time::Interval,
    done: bool,
}

async fn events(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((session, _)) = web.signed_in(&headers).await else {
        return signed_out();
    };
    let mut rx = web.subscribe();
    rx.borrow_and_update();
    let first = snapshot(&web.gw).await;
    let feed = Feed {
        first: Some(first),
        rx,
        key: session.key,
        check: tokio::time::interval_at(
            tokio::time::Instant::now() + SESSION_CHECK_EVERY,
            SESSION_CHECK_EVERY,
        ),
        web,
        done: false,
    };
    let stream = futures::stream::unfold(feed, |mut f| async move {
        if f.done {
            return None;
        }
        if let Some(first) = f.first.take() {
            let event = Event::default()
                .event("snapshot")
                .data(stamped(&f.web.gw, &first));
            return Some((Ok::<_, Infallible>(event), f));
        }
        loop {
            tokio::select! {
                changed = f.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let snap = f.rx.borrow_and_update().clone();
                    let event = Event::default().event("snapshot").data(stamped(&f.web.gw, &snap));
                    return Some((Ok(event), f));
                }
                _ = f.check.tick() => {
                    if !f.web.sessions.is_live(f.key).await {
                        f.done = true;
                        return Some((Ok(Event::default().event("signed_out").data("{}")), f));
                    }
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

// ----- decisions ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    args_hash: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

async fn decide_route(
    State(web): State<Web>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<DecideForm>, FormRejection>,
) -> Response {
    let approve = match action.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return refuse(StatusCode::NOT_FOUND, "not_found", "no such action"),
    };
    let action_name = if approve {
        "approval/approve"
    } else {
        "approval/deny"
    };
    let Some(session) = (match web.current(&headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    }) else {
        return signed_out();
    };
    let form = form.ok().map(|Form(f)| f);
    if let Err(why) = session::check_csrf(
        &headers,
        &web.origin,
        &session.csrf,
        form.as_ref().and_then(|f| f.csrf.as_deref()),
    ) {
        return csrf_refused(&web, &session, action_name, &id, why).await;
    }
    let Some(op) = session.person.as_ref().and_then(|p| web.approver(p)) else {
        return signed_out();
    };
    let Some(form) = form else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected a form with args_hash",
        );
    };
    let Some(args_hash) = form.args_hash.filter(|h| !h.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a decision must name the args_hash it was shown",
        );
    };
    let comment = form
        .comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the comment is longer than {MAX_COMMENT_CHARS} characters"),
        );
    }
    match decide(
        &web.gw,
        &op,
        &id,
        approve,
        DecideBody { args_hash, comment },
    )
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Refuses a state-changing request that failed the CSRF checks: nothing
/// changes; a signed-in person's refusal is recorded.
async fn csrf_refused(
    web: &Web,
    session: &Session,
    action: &str,
    target: &str,
    why: CsrfRefusal,
) -> Response {
    tracing::warn!(
        action,
        reason = why.describe(),
        "approval page: request refused (CSRF)"
    );
    if let Some(person) = &session.person {
        let subject = person_principal(person).subject();
        let detail = json!({"approval": target, "via": "web", "csrf": why.describe()});
        let reason = format!("refused: {}", why.describe());
        if let Err(e) = record(&web.gw, &subject, action, None, &reason, &detail).await {
            return e.into_response();
        }
    }
    refuse(
        StatusCode::FORBIDDEN,
        "csrf",
        format!("{}; reload the page and try again", why.describe()),
    )
}

// ----- local sign-in -----------------------------------------------------------

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    account: String,
    #[serde(default)]
    password: String,
}

const WRONG_CREDENTIALS: &str = "Wrong account or password.";

async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Some(session) = (match web.current(&headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    }) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "csrf",
            "this sign-in form has expired; reload the page",
        );
    };
    let form = form.ok().map(|Form(f)| f);
    if let Err(why) = session::check_csrf(
        &headers,
        &web.origin,
        &session.csrf,
        form.as_ref().and_then(|f| f.csrf.as_deref()),
    ) {
        return csrf_refused(&web, &session, "approval/web.login", "", why).await;
    }
    let Some(form) = form else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected a form with account and password",
        );
    };
    if web.accounts.is_empty() {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "local accounts are not configured",
        );
    }
    let account = form.account.trim().to_owned();
    if account.is_empty() || account.chars().count() > MAX_ACCOUNT_CHARS {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            WRONG_CREDENTIALS,
        );
    }
    // The same answer, in the same time, whether or not the account exists.
    if !web.limiter.allows(&account).await {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "Too many failed sign-ins for this account. Try again later.",
        );
    }
    let known = web.accounts.get(&account).cloned();
    let hash = known.clone().unwrap_or_else(|| web.decoy.clone());
    let password = form.password;
    let matched = tokio::task::spawn_blocking(move || hash.verify(&password))
        .await
        .unwrap_or(false)
        && known.is_some();
    if !matched {
        web.limiter.failed(&account).await;
        tracing::info!("approval page: a local sign-in failed");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            WRONG_CREDENTIALS,
        );
    }
    web.limiter.succeeded(&account).await;
    let person = Person {
        sub: account,
        iss: LOCAL_ISSUER.to_owned(),
        method: Method::Local,
    };
    match sign_in(&web, Some(session.key), person).await {
        Ok((_, cookie)) => {
            let mut resp = Json(json!({"ok": true})).into_response();
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            resp
        }
        Err(SignInRefused::NotApprover(why)) => {
            refuse(StatusCode::FORBIDDEN, "not_an_approver", why)
        }
        Err(SignInRefused::Other(resp)) => resp,
    }
}

enum SignInRefused {
    /// Authenticated, but not an approver.
    NotApprover(String),
    /// The audit log or the session store failed.
    Other(Response),
}

/// Signs an authenticated person in, if they are an approver; either way
/// the outcome is recorded in the audit log (if it cannot be, no session).
async fn sign_in(
    web: &Web,
    previous: Option<session::Key>,
    person: Person,
) -> Result<(Session, HeaderValue), SignInRefused> {
    const ACTION: &str = "approval/web.login";
    let detail = json!({"via": "web", "method": person.method.as_str(), "iss": person.iss});
    let Some(op) = web.approver(&person) else {
        let why = format!(
            "{} (issuer {}) is not an approver of this Mandate: no [[operators]] entry with the approver role matches",
            person.sub, person.iss
        );
        let subject = person_principal(&person).subject();
        return match record(&web.gw, &subject, ACTION, None, &why, &detail).await {
            Ok(_) => Err(SignInRefused::NotApprover(why)),
            Err(e) => Err(SignInRefused::Other(e.into_response())),
        };
    };
    let reason = format!(
        "{} signed in to the approval page ({})",
        person.sub,
        person.method.as_str()
    );
    if let Err(e) = record(
        &web.gw,
        &op.subject(),
        ACTION,
        Some(Role::Approver),
        &reason,
        &detail,
    )
    .await
    {
        return Err(SignInRefused::Other(e.into_response()));
    }
    tracing::info!(sub = %person.sub, method = person.method.as_str(), "approval page: signed in");
    web.sessions.sign_in(previous, person).await.map_err(|e| {
        tracing::error!(error = %e, "approval page: no session could be started");
        SignInRefused::Other(unavailable())
    })
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
}

async fn logout(
    State(web): State<Web>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let Some(session) = (match web.current(&headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    }) else {
        return Json(json!({"ok": true})).into_response();
    };
    let form = form.ok().map(|Form(f)| f);
    if let Err(why) = session::check_csrf(
        &headers,
        &web.origin,
        &session.csrf,
        form.as_ref().and_then(|f| f.csrf.as_deref()),
    ) {
        return csrf_refused(&web, &session, "approval/web.logout", "", why).await;
    }
    let cleared = match web.sessions.end(session.key).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "approval page: sign-out not stored");
            return unavailable();
        }
    };
    let mut resp = Json(json!({"ok": true})).into_response();
    resp.headers_mut().append(header::SET_COOKIE, cleared);
    resp
}

// ----- OpenID Connect sign-in ----------------------------------------------------

#[derive(Debug, Deserialize)]
struct OidcLoginQuery {
    #[serde(default)]
    fragment: Option<String>,
}

async fn oidc_login(State(web): State<Web>, Query(q): Query<OidcLoginQuery>) -> Response {
    let Some(oidc) = &web.oidc else {
        return message_page(
            StatusCode::NOT_FOUND,
            "Not configured",
            "<p>Sign-in through an identity provider is not configured for this Mandate.</p>",
            None,
        );
    };
    match oidc.start(&clean_fragment(q.fragment.as_deref())).await {
        Ok(started) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            if let Ok(loc) = HeaderValue::from_str(&started.location) {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            resp.headers_mut()
                .append(header::SET_COOKIE, started.cookie);
            resp
        }
        Err(e) => oidc_failed(&e),
    }
}

fn oidc_failed(e: &OidcError) -> Response {
    tracing::warn!(error = %e, "approval page: OpenID Connect sign-in failed");
    let status = match e {
        OidcError::Rp(mandate_authn::oidc::OidcError::Provider(_)) => StatusCode::BAD_GATEWAY,
        OidcError::Busy
        | OidcError::Store
        | OidcError::Rp(mandate_authn::oidc::OidcError::Random) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = message_page(
        status,
        "Sign-in failed",
        &format!(
            "<p>{}</p>\n<p><a href=\"/approvals\">Back to the approval page</a></p>",
            escape(&e.to_string())
        ),
        None,
    );
    resp.headers_mut()
        .append(header::SET_COOKIE, Oidc::clearing_cookie());
    resp
}

async fn oidc_callback(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Response {
    let Some(oidc) = &web.oidc else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let binding = session::cookie(&headers, oidc::FLOW_COOKIE);
    let (principal, fragment) = match oidc.finish(binding.as_deref(), cb).await {
        Ok(done) => done,
        Err(e) => return oidc_failed(&e),
    };
    let person = Person {
        sub: principal.sub().to_owned(),
        iss: principal.iss().to_owned(),
        method: Method::Oidc,
    };
    // The session cookie is SameSite=Strict: it was not sent with this
    // cross-site redirect, so any earlier session simply expires.
    let mut resp = match sign_in(&web, None, person).await {
        Ok((_, cookie)) => {
            let to = if fragment.is_empty() {
                "/approvals".to_owned()
            } else {
                format!("/approvals#{fragment}")
            };
            // A same-site navigation from here, so the new Strict cookie is
            // sent with it (a redirect would still count as cross-site).
            let mut resp = message_page(
                StatusCode::OK,
                "Signed in",
                &format!(
                    "<p>You are signed in. <a href=\"{}\">Continue to the approval page</a>.</p>",
                    escape(&to)
                ),
                Some(&to),
            );
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            resp
        }
        Err(SignInRefused::NotApprover(why)) => message_page(
            StatusCode::FORBIDDEN,
            "Not an approver",
            &format!(
                "<p>{}.</p>\n<p>Only people listed as approvers in Mandate's configuration can use this page. \
                 Ask a Mandate administrator to add you, or sign in with another account.</p>\n\
                 <p><a href=\"/approvals\">Back to the sign-in page</a></p>",
                escape(&why)
            ),
            None,
        ),
        Err(SignInRefused::Other(resp)) => resp,
    };
    resp.headers_mut()
        .append(header::SET_COOKIE, Oidc::clearing_cookie());
    resp
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
