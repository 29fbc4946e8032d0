//! The MCP server surface the agent sees.
//!
//! Every method that touches a tool obtains the verified [`Principal`] for
//! *this request* first: over HTTP from the request the authentication layer
//! already checked, over stdio by re-verifying the launch token on each call
//! (so expiry and, later, revocation are seen mid-session).

use crate::Gateway;
use crate::error::GatewayError;
use crate::metrics::AuthTook;
use crate::pipeline::Incoming;
use crate::trace::CallerTrace;
use mandate_authn::Principal;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, GetTaskResult,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use std::sync::Arc;
use tracing::Instrument as _;

/// Where the handler gets the caller's identity from.
#[derive(Clone)]
pub enum PrincipalSource {
    /// From the HTTP request (inserted by [`crate::http`]'s auth layer).
    PerRequest,
    /// A token given at launch (stdio mode); re-verified on every call.
    Token(Arc<str>),
}

/// The rmcp server handler; one per transport session, all sharing one
/// [`Gateway`].
#[derive(Clone)]
pub struct GatewayHandler {
    gw: Arc<Gateway>,
    source: PrincipalSource,
}

impl GatewayHandler {
    /// A handler over `gw`.
    pub fn new(gw: Arc<Gateway>, source: PrincipalSource) -> Self {
        Self { gw, source }
    }

    async fn principal(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<Principal>, ErrorData> {
        match &self.source {
            PrincipalSource::PerRequest => ctx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Arc<Principal>>())
                .cloned()
                // INVARIANT: the HTTP layer refuses unauthenticated requests
                // before they reach rmcp, so this is unreachable in practice;
                // if it ever happens, refuse.
                .ok_or_else(|| GatewayError::unauthenticated("unauthenticated request").into()),
            PrincipalSource::Token(token) => self
                .gw
                .authenticate(token)
                .await
                .map(Arc::new)
                .map_err(|e| {
                    self.gw.metrics().auth_failures.inc();
                    GatewayError::unauthenticated(format!("invalid token: {}", e.description()))
                        .into()
                }),
        }
    }
}

/// The authenticate phase of one call, recorded when dropped.
struct AuthPhase<'a> {
    gw: &'a Gateway,
    took: Option<std::time::Duration>,
    tool: String,
}

impl Drop for AuthPhase<'_> {
    fn drop(&mut self) {
        if let Some(took) = self.took {
            let metrics = self.gw.metrics();
            metrics.observe_phase(
                crate::metrics::Phase::Authenticate,
                &metrics.tool_seen(&self.tool),
                took,
            );
        }
    }
}

impl ServerHandler for GatewayHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("mandate", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Mandate gateway: tools are namespaced <upstream>.<tool>. Every call is \
             authorised per call; denials carry a decision id.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.principal(&ctx).await?;
        Ok(ListToolsResult::with_all_items(
            self.gw.list_tools(&principal).await,
        ))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // The call's span comes first, so that authenticating is its first
        // phase. rmcp moves the request's `_meta` into the context.
        let correlation = mandate_core::CorrelationId::new();
        let parts = ctx.extensions.get::<http::request::Parts>();
        let meta = if ctx.meta.0.is_empty() {
            params.meta.as_ref().map(|m| &m.0.0)
        } else {
            Some(&ctx.meta.0.0)
        };
        let trace = CallerTrace::extract(meta, parts.map(|p| &p.headers));
        let span = crate::trace::tool_call_span(&params.name, &correlation, &trace);
        let authenticate =
            tracing::debug_span!(target: crate::trace::TARGET, parent: &span, "authenticate");
        let started = std::time::Instant::now();
        let principal = self
            .principal(&ctx)
            .instrument(authenticate)
            .instrument(span.clone())
            .await;
        // Recorded when the call is done, when the pipeline has given a
        // served tool its label: over HTTP the time `http.rs` measured,
        // over stdio re-verifying the launch token for this call.
        let _auth_phase = AuthPhase {
            gw: &self.gw,
            took: match &self.source {
                PrincipalSource::Token(_) => Some(started.elapsed()),
                PrincipalSource::PerRequest => parts
                    .and_then(|parts| parts.extensions.get::<AuthTook>())
                    .map(|t| t.0),
            },
            tool: params.name.to_string(),
        };
        let principal = principal?;
        let tasks = self.gw.cfg.approvals.held_calls_as_tasks
            && ctx
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks());
        if !tasks {
            return self
                .gw
                .call_tool(Incoming {
                    principal,
                    params,
                    client: Some(ctx.peer.clone()),
                    progress: ctx.meta.get_progress_token(),
                    cancel: ctx.ct.clone(),
                    on_hold: None,
                    correlation,
                    trace,
                    span: span.clone(),
                })
                .instrument(span)
                .await;
        }
        // The client takes tasks: run the call in the background and, if it
        // is held for a person, answer with a task at once. The task has
        // its own cancellation (tasks/cancel), not this request's.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let task_cancel = tokio_util::sync::CancellationToken::new();
        let gw = self.gw.clone();
        let incoming = Incoming {
            principal: principal.clone(),
            params,
            client: Some(ctx.peer.clone()),
            progress: ctx.meta.get_progress_token(),
            cancel: task_cancel.clone(),
            on_hold: Some(held_tx),
            correlation,
            trace,
            span: span.clone(),
        };
        let mut run = tokio::spawn(async move { gw.call_tool(incoming).await }.instrument(span));
        let joined = |r: Result<Result<CallToolResponse, ErrorData>, tokio::task::JoinError>| {
            r.unwrap_or_else(|_| Err(GatewayError::Internal.into()))
        };
        tokio::select! {
            r = &mut run => joined(r),
            held = held_rx => match held {
                Ok(id) => {
                    let message = format!(
                        "held until a person approves it: {}",
                        self.gw.approval_url(&id)
                    );
                    let task = self
                        .gw
                        .mcp_tasks
                        .start(&id, &principal, message, task_cancel)
                        .await;
                    let gw = self.gw.clone();
                    tokio::spawn(async move {
                        let r = joined(run.await);
                        gw.mcp_tasks.finish(&id, r).await;
                    });
                    Ok(CallToolResponse::Task(rmcp::model::CreateTaskResult::new(task)))
                }
                // Finished without being held.
                Err(_) => joined(run.await),
            },
            () = ctx.ct.cancelled() => {
                task_cancel.cancel();
                joined(run.await)
            }
        }
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let principal = self.principal(&ctx).await?;
        self.gw
            .mcp_tasks
            .get(&request.task_id, &principal)
            .await
            .map(GetTaskResult::new)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let principal = self.principal(&ctx).await?;
        self.gw.mcp_tasks.cancel(&request.task_id, &principal).await
    }

    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        self.gw.register_peer(ctx.peer);
    }
}
