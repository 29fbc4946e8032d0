//! Connections to upstream MCP servers, as an MCP client (`rmcp`).
//!
//! Each upstream is one shared client connection, opened lazily and reopened
//! after a crash. Its tool catalogue is cached and refreshed when the server
//! says `notifications/tools/list_changed`. Progress notifications the
//! upstream sends for a forwarded call are routed back to the client that made
//! that call (the gateway rewrites progress tokens so two clients can never
//! see each other's progress).

use crate::config::{Isolation, Transport, UpstreamConfig};
use crate::error::UpstreamError;
use crate::permit::Permitted;
use dashmap::DashMap;
use http::{HeaderName, HeaderValue};
use mandate_core::ToolCall;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig,
    ClientJsonRpcMessage, ClientRequest, Implementation, JsonRpcMessage, ProgressNotificationParam,
    ProgressToken, ServerResult, Tool,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::{ClientHandler, ErrorData, Peer, RoleClient, RoleServer, ServiceExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, RwLock};
use upstream_limits::{BoundedLines, Oversized};

#[path = "upstream_limits.rs"]
mod upstream_limits;

/// Audit metadata key carrying the correlation id in `params._meta` (to the
/// upstream) and in the result's `_meta` (to the client).
pub const META_CORRELATION: &str = "io.mandate/correlation_id";

/// Where a rewritten progress token leads back to.
struct ProgressRoute {
    peer: Peer<RoleServer>,
    token: ProgressToken,
}

/// Shared state between the gateway and every upstream's client handler.
#[derive(Default)]
pub struct Events {
    progress: DashMap<String, ProgressRoute>,
    /// Called (with the upstream's name) when an upstream's tool list changed.
    list_changed: std::sync::OnceLock<Arc<dyn Fn(String) + Send + Sync>>,
}

impl Events {
    /// Registers what to do when an upstream's tool list changes.
    pub fn on_list_changed(&self, f: Arc<dyn Fn(String) + Send + Sync>) {
        let _ = self.list_changed.set(f);
    }
}

/// The client of the Mandate session a session-isolated connection serves:
/// the peer of its latest call, so elicitations reach that client.
type SessionClient = Arc<std::sync::Mutex<Option<Peer<RoleServer>>>>;

/// The gateway's MCP client handler for one upstream connection.
#[derive(Clone)]
struct UpstreamHandler {
    upstream: String,
    /// Unique per connection: progress tokens are only unique per connection.
    conn_id: u64,
    events: Arc<Events>,
    /// `Some` only on a connection dedicated to one Mandate session.
    client: Option<SessionClient>,
    /// Requests of this connection whose answer was over `max_result_bytes`.
    oversized: Arc<Oversized>,
}

impl UpstreamHandler {
    fn session_client(&self) -> Option<Peer<RoleServer>> {
        self.client.as_ref()?.lock().ok()?.clone()
    }
}

impl ClientHandler for UpstreamHandler {
    fn get_info(&self) -> ClientConfig {
        // Only a connection dedicated to one Mandate session can relay
        // elicitations, because only there is it certain whose they are.
        let mut caps = ClientCapabilities::default();
        if self.client.is_some() {
            caps.elicitation = Some(Default::default());
        }
        ClientConfig::new(
            caps,
            Implementation::new("mandate-gateway", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _ctx: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, ErrorData> {
        let declined = rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Decline);
        let Some(peer) = self.session_client() else {
            return Ok(declined);
        };
        let supports = peer
            .peer_info()
            .is_some_and(|info| info.capabilities.elicitation.is_some());
        if !supports || peer.is_transport_closed() {
            return Ok(declined);
        }
        match peer.create_elicitation(request).await {
            Ok(result) => Ok(result),
            Err(e) => {
                tracing::info!(upstream = %self.upstream, error = %e, "client did not answer elicitation");
                Ok(declined)
            }
        }
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        let key = route_key(self.conn_id, &params.progress_token);
        // The route is registered right after the request is queued; a very
        // fast upstream can answer with progress first, so look twice.
        if !self.events.progress.contains_key(&key) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let Some(route) = self.events.progress.get(&key) else {
            return;
        };
        let mut params = params;
        params.progress_token = route.token.clone();
        let peer = route.peer.clone();
        drop(route);
        // This runs inside the upstream connection's service loop: a client
        // that does not take the notification (gone, or its stream stalled)
        // must not stall the connection every other call uses.
        match tokio::time::timeout(PROGRESS_RELAY_LIMIT, peer.notify_progress(params)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not relay progress to client"),
            Err(_) => {
                tracing::debug!("client did not take a progress notification in time; dropped")
            }
        }
    }

    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        if let Some(f) = self.events.list_changed.get() {
            f(self.upstream.clone());
        }
    }
}

/// Longest a progress notification may wait for its client before it is
/// dropped (the upstream connection's loop waits meanwhile).
const PROGRESS_RELAY_LIMIT: std::time::Duration = std::time::Duration::from_millis(250);

static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Key of a progress route: the connection and the token rmcp sent on it.
fn route_key(conn_id: u64, token: &ProgressToken) -> String {
    format!(
        "{conn_id}/{}",
        serde_json::to_string(token).unwrap_or_default()
    )
}

type Connection = RunningService<RoleClient, UpstreamHandler>;

/// A live connection and, if dedicated to one session, that session's client.
struct Slot {
    conn: Arc<Connection>,
    client: Option<SessionClient>,
    last_used: std::time::Instant,
}

/// Most session-dedicated connections one upstream may hold at once; past
/// it, new sessions are refused (fail closed) rather than exhausting the host.
const MAX_SESSION_CONNECTIONS: usize = 256;
/// A session-dedicated connection unused for this long is closed.
const SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// One upstream server: its connections and tool catalogue.
///
/// With [`Isolation::Session`] every Mandate session gets its own
/// connection (its own child process, for stdio), so no per-user state in
/// the server can cross sessions (F-04) and elicitations can be relayed to
/// the right client. The tool catalogue is read on a separate connection
/// that never carries a call.
pub struct Upstream {
    cfg: UpstreamConfig,
    events: Arc<Events>,
    /// Key `""` is the shared (or catalogue) connection; others are session
    /// keys. Each key has its own lock, so opening one session's connection
    /// (spawning a process, up to the timeout) never holds up the others.
    conns: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<Slot>>>>>,
    tools: RwLock<Option<Arc<[Tool]>>>,
}

impl Upstream {
    /// An upstream that connects on first use.
    pub fn new(cfg: UpstreamConfig, events: Arc<Events>) -> Self {
        Self {
            cfg,
            events,
            conns: std::sync::Mutex::new(HashMap::new()),
            tools: RwLock::new(None),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: self.cfg.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// The connection for a Mandate session (`None`: the shared/catalogue
    /// one), opened if needed. `client` is recorded as the session's client.
    /// The connection key of a Mandate session (`""`: the shared one).
    fn key(&self, session: Option<&str>) -> String {
        match (self.cfg.isolation, session) {
            (Isolation::Session, Some(s)) => s.to_owned(),
            _ => String::new(),
        }
    }

    /// The connection for a Mandate session (`None`: the shared/catalogue
    /// one), opened if needed. `client` is recorded as the session's client.
    async fn connection(
        &self,
        session: Option<&str>,
        client: Option<Peer<RoleServer>>,
    ) -> Result<Arc<Connection>, UpstreamError> {
        let key = self.key(session);
        let now = std::time::Instant::now();
        let cell = {
            let mut conns = self
                .conns
                .lock()
                .map_err(|_| self.unavailable("connection table poisoned"))?;
            // Close idle session connections (never one in use right now).
            conns.retain(|k, cell| {
                k.is_empty()
                    || cell.try_lock().map_or(true, |slot| {
                        slot.as_ref()
                            .is_none_or(|s| now.duration_since(s.last_used) < SESSION_IDLE)
                    })
            });
            if !conns.contains_key(&key) && !key.is_empty() && conns.len() > MAX_SESSION_CONNECTIONS
            {
                return Err(self.unavailable("too many concurrent sessions for this upstream"));
            }
            conns.entry(key.clone()).or_default().clone()
        };
        let mut slot = cell.lock().await;
        if let Some(s) = slot.as_mut()
            && !s.conn.is_closed()
            && !s.conn.peer().is_transport_closed()
        {
            s.last_used = now;
            if let (Some(route), Some(peer)) = (&s.client, client)
                && let Ok(mut r) = route.lock()
            {
                *r = Some(peer);
            }
            return Ok(s.conn.clone());
        }
        // On a session-isolated upstream every connection declares the
        // elicitation capability, the catalogue one included: servers may
        // offer some tools only to clients that can elicit, and the catalogue
        // must list what the session connections will serve. The catalogue
        // connection carries no call, so it has no client and would decline.
        let route: Option<SessionClient> = (self.cfg.isolation == Isolation::Session)
            .then(|| Arc::new(std::sync::Mutex::new(client)));
        let handler = UpstreamHandler {
            upstream: self.cfg.name.clone(),
            conn_id: NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            events: self.events.clone(),
            client: route.clone(),
            oversized: Arc::default(),
        };
        let conn = Arc::new(self.open(handler).await?);
        *slot = Some(Slot {
            conn: conn.clone(),
            client: route,
            last_used: now,
        });
        Ok(conn)
    }

    /// Drops the connection used by `session` (after a timeout or failure),
    /// so the next call starts afresh.
    fn discard(&self, session: Option<&str>) {
        let key = self.key(session);
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&key);
        }
    }

    async fn open(&self, handler: UpstreamHandler) -> Result<Connection, UpstreamError> {
        // rmcp runs a connection under the span current when it opens it
        // (and hyper its HTTP connections); the connection outlives the call
        // that opened it, so it is opened on a task of its own, outside any
        // call's span (which it would otherwise keep open).
        let cfg = self.cfg.clone();
        let fail = {
            let upstream = self.cfg.name.clone();
            move |detail: &dyn std::fmt::Display| UpstreamError::Unavailable {
                upstream: upstream.clone(),
                detail: detail.to_string(),
            }
        };
        let connect = async move {
            match &cfg.transport {
                Transport::Stdio { command, args, env } => {
                    let mut cmd = tokio::process::Command::new(command);
                    cmd.args(args).env_clear();
                    for key in ["PATH", "HOME", "LANG", "TMPDIR"] {
                        if let Ok(v) = std::env::var(key) {
                            cmd.env(key, v);
                        }
                    }
                    cmd.envs(env);
                    let transport =
                        ChildTransport::spawn(cmd, cfg.max_result_bytes, handler.oversized.clone())
                            .map_err(|e| fail(&format!("cannot start {command:?}: {e}")))?;
                    handler.serve(transport).await.map_err(|e| fail(&e))
                }
                Transport::Http { url, headers } => {
                    let mut custom = HashMap::new();
                    for (k, v) in headers {
                        let name = HeaderName::try_from(k.as_str())
                            .map_err(|e| fail(&format!("header {k:?}: {e}")))?;
                        let value = HeaderValue::try_from(v.as_str())
                            .map_err(|e| fail(&format!("header {k:?}: {e}")))?;
                        custom.insert(name, value);
                    }
                    let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                        .custom_headers(custom);
                    let client = TraceHttpClient::new(reqwest::Client::new())
                        .bounded(cfg.max_result_bytes, handler.oversized.clone());
                    let transport = StreamableHttpClientTransport::with_client(client, config);
                    handler.serve(transport).await.map_err(|e| fail(&e))
                }
            }
        };
        let opened = tokio::spawn(tokio::time::timeout(self.cfg.timeout, connect));
        match opened.await {
            Ok(Ok(connected)) => connected,
            Ok(Err(_)) => Err(self.unavailable("timed out while connecting")),
            Err(e) => Err(self.unavailable(format!("the connecting task failed: {e}"))),
        }
    }

    /// The upstream's tools (cached until it reports a change).
    pub async fn tools(&self) -> Result<Arc<[Tool]>, UpstreamError> {
        if let Some(t) = self.tools.read().await.as_ref() {
            return Ok(t.clone());
        }
        let conn = self.connection(None, None).await?;
        let list = tokio::time::timeout(self.cfg.timeout, conn.peer().list_all_tools())
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream: self.cfg.name.clone(),
                secs: self.cfg.timeout.as_secs(),
            })?
            .map_err(|e| self.unavailable(e))?;
        let list: Arc<[Tool]> = list.into();
        *self.tools.write().await = Some(list.clone());
        Ok(list)
    }

    /// Forgets the cached catalogue (after `tools/list_changed`).
    pub async fn invalidate_tools(&self) {
        *self.tools.write().await = None;
    }

    /// Forwards one call for a Mandate `session`. `client` is the calling
    /// client: the upstream's progress notifications for this call (if it
    /// asked with `progress`) and, on a session-isolated upstream, its
    /// elicitations are relayed to it and to no one else. `trace` holds the
    /// W3C trace fields for the upstream ([`crate::trace::outgoing`]).
    pub(crate) async fn call(
        &self,
        permitted: &Permitted<ToolCall>,
        client: Option<Peer<RoleServer>>,
        progress: Option<ProgressToken>,
        trace: Vec<(String, String)>,
    ) -> Result<CallToolResponse, UpstreamError> {
        // Exactly what was permitted: the tool's own name and the arguments
        // that were hashed, shown to any approver and recorded; the
        // correlation id in `_meta` and the W3C trace context (`traceparent`,
        // `tracestate`, `baggage`). Nothing else the client sent goes along
        // (no token, no other `_meta`), except the answers to the upstream's
        // own questions (MRTR).
        let call = permitted.call();
        // The connection of the caller's Mandate session (isolation).
        let session_key = permitted.principal().state_key();
        let session = session_key.as_str();
        tracing::debug!(
            upstream = %self.cfg.name,
            decision_seq = permitted.receipt().seq(),
            "forwarding a permitted call"
        );
        let mut params =
            CallToolRequestParams::new(call.name.tool.clone()).with_arguments(call.args.clone());
        let relay = permitted.relay();
        params.input_responses.clone_from(&relay.input_responses);
        params.request_state.clone_from(&relay.request_state);
        let mut meta = rmcp::model::RequestMetaObject::default();
        meta.0.0.insert(
            META_CORRELATION.into(),
            permitted.correlation().as_str().into(),
        );
        for (key, value) in trace {
            meta.0.0.insert(key, value.into());
        }
        params.meta = Some(meta);
        // Getting the connection and handing the request to it are bounded
        // too: whatever is stuck, the call fails after the timeout (and the
        // connection is replaced) instead of hanging.
        let conn = tokio::time::timeout(
            self.cfg.timeout,
            self.connection(Some(session), client.clone()),
        )
        .await
        .map_err(|_| {
            self.discard(Some(session));
            UpstreamError::Timeout {
                upstream: self.cfg.name.clone(),
                secs: self.cfg.timeout.as_secs(),
            }
        })??;
        // rmcp puts its own progress token (a per-connection counter) on
        // every request; route the upstream's progress for that token back
        // to this call's client, with the client's own token.
        let request = ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
        tracing::debug!(upstream = %self.cfg.name, "connection ready; sending the call");
        let sent = match tokio::time::timeout(
            self.cfg.timeout,
            conn.peer()
                .send_request_with_option(request, rmcp::service::PeerRequestOptions::no_options()),
        )
        .await
        {
            Ok(sent) => sent,
            Err(_) => {
                tracing::warn!(upstream = %self.cfg.name, "upstream connection did not accept the request in time; replacing it");
                self.discard(Some(session));
                return Err(UpstreamError::Timeout {
                    upstream: self.cfg.name.clone(),
                    secs: self.cfg.timeout.as_secs(),
                });
            }
        };
        let mut route = None;
        let mut request_id = None;
        let result = match sent {
            Err(e) => Ok(Err(e)),
            Ok(handle) => {
                request_id = Some(handle.id.clone());
                if let (Some(peer), Some(token)) = (client, progress) {
                    let key = route_key(conn.service().conn_id, &handle.progress_token);
                    self.events
                        .progress
                        .insert(key.clone(), ProgressRoute { peer, token });
                    route = Some(key);
                }
                tracing::debug!(upstream = %self.cfg.name, "call sent; awaiting the response");
                tokio::time::timeout(self.cfg.timeout, async move {
                    match handle.await_response().await? {
                        ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
                        ServerResult::InputRequiredResult(r) => {
                            Ok(CallToolResponse::InputRequired(r))
                        }
                        ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
                        _ => Err(rmcp::ServiceError::UnexpectedResponse),
                    }
                })
                .await
            }
        };
        if let Some(key) = route {
            self.events.progress.remove(&key);
        }
        // An answer over `max_result_bytes` was replaced by an error (the
        // connection stays usable), or, if it could not be told whose it
        // was, closed the connection.
        let oversized = &conn.service().oversized;
        if matches!(result, Ok(Err(_))) && request_id.as_ref().is_some_and(|id| oversized.take(id))
        {
            if conn.is_closed() || conn.peer().is_transport_closed() {
                self.discard(Some(session));
            }
            return Err(UpstreamError::ResultTooLarge {
                upstream: self.cfg.name.clone(),
                max_bytes: self.cfg.max_result_bytes,
            });
        }
        match result {
            Err(_) => {
                // A hung upstream may never answer; drop the connection so the
                // next call starts a fresh one.
                self.discard(Some(session));
                Err(UpstreamError::Timeout {
                    upstream: self.cfg.name.clone(),
                    secs: self.cfg.timeout.as_secs(),
                })
            }
            Ok(Ok(r)) => Ok(r),
            Ok(Err(rmcp::ServiceError::McpError(e))) => Err(UpstreamError::Protocol {
                upstream: self.cfg.name.clone(),
                message: e.message.to_string(),
                error: Some(e),
            }),
            Ok(Err(
                e @ (rmcp::ServiceError::UnexpectedResponse
                | rmcp::ServiceError::InputRequiredRoundsExceeded { .. }),
            )) => {
                self.discard(Some(session));
                Err(UpstreamError::InvalidResponse {
                    upstream: self.cfg.name.clone(),
                    detail: e.to_string(),
                })
            }
            Ok(Err(e)) => {
                self.discard(Some(session));
                Err(self.unavailable(e))
            }
        }
    }

    /// Connects and lists tools, for `mandate serve --check`.
    pub async fn probe(&self) -> Result<usize, UpstreamError> {
        self.invalidate_tools().await;
        Ok(self.tools().await?.len())
    }
}

/// A stdio upstream: its child process, MCP over its stdin, and its stdout
/// read through [`BoundedLines`] (each message at most `max_result_bytes`).
struct ChildTransport {
    io: AsyncRwTransport<
        RoleClient,
        BoundedLines<tokio::process::ChildStdout>,
        tokio::process::ChildStdin,
    >,
    child: tokio::process::Child,
}

impl ChildTransport {
    fn spawn(
        mut cmd: tokio::process::Command,
        max: usize,
        oversized: Arc<Oversized>,
    ) -> std::io::Result<Self> {
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("the child's stdio was not piped"));
        };
        // Lines are bounded before rmcp sees them; its own bound stays
        // above ours so that it never drops one silently.
        let io = AsyncRwTransport::new(BoundedLines::new(stdout, max, oversized), stdin)
            .with_max_line_length(max.saturating_add(PREFIX_SLACK));
        Ok(Self { io, child })
    }
}

/// How far above `max_result_bytes` rmcp's own line bound is set (the
/// replacement error line is far shorter than this).
const PREFIX_SLACK: usize = 64 * 1024;

impl rmcp::transport::Transport<RoleClient> for ChildTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: rmcp::service::TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.io.send(item)
    }

    fn receive(
        &mut self,
    ) -> impl Future<Output = Option<rmcp::service::RxJsonRpcMessage<RoleClient>>> + Send {
        self.io.receive()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Closing stdin asks the server to exit (MCP's stdio shutdown);
        // one that does not within a moment is killed.
        self.io.close().await?;
        if tokio::time::timeout(std::time::Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// A `reqwest` client for upstream HTTP that copies the call's W3C trace
/// context (`traceparent`, `tracestate`, `baggage`) from `params._meta`
/// into HTTP headers (F-05), so HTTP-level tracing and logs on the
/// upstream side see the correlation; and, for the gateway's upstreams,
/// bounds each answer ([`TraceHttpClient::bounded`]).
#[derive(Clone)]
pub struct TraceHttpClient {
    client: reqwest::Client,
    bound: Option<(usize, Arc<Oversized>)>,
}

impl TraceHttpClient {
    /// Over `client`, with rmcp's own bounds on answers.
    pub fn new(client: reqwest::Client) -> Self {
        Self {
            client,
            bound: None,
        }
    }

    /// Answers over `max` bytes (a JSON body, or one SSE event) are not
    /// read further; the request gets an error in their place, noted in
    /// `oversized`.
    fn bounded(mut self, max: usize, oversized: Arc<Oversized>) -> Self {
        self.bound = Some((max, oversized));
        self
    }
}

fn trace_headers_of(message: &ClientJsonRpcMessage) -> Vec<(HeaderName, HeaderValue)> {
    let JsonRpcMessage::Request(req) = message else {
        return Vec::new();
    };
    let ClientRequest::CallToolRequest(call) = &req.request else {
        return Vec::new();
    };
    let Some(meta) = call.params.meta.as_ref() else {
        return Vec::new();
    };
    [
        crate::trace::TRACEPARENT,
        crate::trace::TRACESTATE,
        crate::trace::BAGGAGE,
    ]
    .into_iter()
    .filter_map(|key| {
        let value = meta.0.0.get(key)?.as_str()?;
        Some((
            HeaderName::from_static(key),
            HeaderValue::from_str(value).ok()?,
        ))
    })
    .collect()
}

type PostResult = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;

impl StreamableHttpClient for TraceHttpClient {
    type Error = reqwest::Error;

    fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = PostResult> + Send + '_ {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
    }

    fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
        mut limits: StreamableHttpResponseLimits,
    ) -> impl Future<Output = PostResult> + Send + '_ {
        custom_headers.extend(trace_headers_of(&message));
        if let Some((max, _)) = &self.bound {
            limits.max_json_response_size = *max;
            limits.max_sse_event_size = *max;
        }
        let id = upstream_limits::request_id(&message);
        async move {
            let sid = session_id.as_deref().map(str::to_owned);
            let response = self
                .client
                .post_message_with_response_limits(
                    uri,
                    message,
                    session_id,
                    auth_header,
                    custom_headers,
                    limits,
                )
                .await;
            let bound = self.bound.as_ref().zip(id);
            match (response, bound) {
                (
                    Err(StreamableHttpError::ResponseBodyTooLarge { .. }),
                    Some(((max, oversized), id)),
                ) => {
                    tracing::warn!(
                        max_result_bytes = max,
                        "an upstream answer over max_result_bytes was not read"
                    );
                    match upstream_limits::answered_too_large(oversized, &id, *max) {
                        Some(reply) => Ok(StreamableHttpPostResponse::Json(reply, sid)),
                        None => Err(StreamableHttpError::ResponseBodyTooLarge { max_size: *max }),
                    }
                }
                (Ok(StreamableHttpPostResponse::Sse(stream, sid)), bound) => {
                    let bound = bound.map(|((max, oversized), id)| (*max, oversized.clone(), id));
                    Ok(StreamableHttpPostResponse::Sse(
                        Box::pin(Drained {
                            rest: Some(stream),
                            bound,
                        }),
                        sid,
                    ))
                }
                (other, _) => other,
            }
        }
    }

    fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<Output = Result<(), StreamableHttpError<Self::Error>>> + Send + '_ {
        self.client
            .delete_session(uri, session_id, auth_header, custom_headers)
    }

    fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> impl Future<
        Output = Result<
            futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
            StreamableHttpError<Self::Error>,
        >,
    > + Send
    + '_ {
        self.client
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
    }

    fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<
        Output = Result<
            futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
            StreamableHttpError<Self::Error>,
        >,
    > + Send
    + '_ {
        self.client.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            max_sse_event_size,
        )
    }
}

type SseStream = futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>;

/// An SSE response stream that, when dropped before its end (rmcp stops
/// reading once it has the response it waited for), reads the rest in the
/// background for a moment. A body read to its end lets the HTTP client put
/// the connection back in its pool; without this every call opened a new
/// TCP connection and left one in TIME_WAIT.
///
/// With a bound (the stream of a request of ours), an event over
/// `max_result_bytes` ends the stream with an error answering that
/// request, and the rest is not read.
struct Drained {
    rest: Option<SseStream>,
    bound: Option<(usize, Arc<Oversized>, rmcp::model::RequestId)>,
}

impl futures::Stream for Drained {
    type Item = Result<sse_stream::Sse, sse_stream::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(inner) = self.rest.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = inner.as_mut().poll_next(cx);
        match &polled {
            std::task::Poll::Ready(None) => self.rest = None,
            std::task::Poll::Ready(Some(Err(e))) if upstream_limits::is_event_too_large(e) => {
                if let Some((max, oversized, id)) = self.bound.take() {
                    // Not drained: what is left is the oversized answer.
                    self.rest = None;
                    tracing::warn!(
                        max_result_bytes = max,
                        "an upstream event over max_result_bytes was not read"
                    );
                    let reply = upstream_limits::answered_too_large(&oversized, &id, max)
                        .and_then(|m| serde_json::to_string(&m).ok());
                    return std::task::Poll::Ready(reply.map(|data| {
                        Ok(sse_stream::Sse {
                            event: None,
                            data: Some(data),
                            id: None,
                            retry: None,
                        })
                    }));
                }
            }
            _ => {}
        }
        polled
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        if let Some(mut rest) = self.rest.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                use futures::StreamExt as _;
                let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
                    while rest.next().await.is_some() {}
                })
                .await;
            });
        }
    }
}
