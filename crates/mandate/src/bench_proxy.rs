//! The benchmark's second baseline: a bare MCP proxy on the same SDK.
//!
//! It forwards `tools/list` and `tools/call` to one Streamable HTTP
//! upstream and does nothing else: no authentication, no policy, no audit.
//! Like the gateway it is an `rmcp` server to its clients and an `rmcp`
//! client to the upstream, with the same server configuration and one
//! upstream connection per client (the gateway keeps one per Mandate
//! session): per transport session for session-era clients, per client
//! connection for stateless ones. So `mandate bench` can tell what any
//! MCP proxy on this SDK costs from what Mandate's own checks and durable
//! records add. It is never a way to reach an upstream in production: it
//! exists only inside `mandate bench`.

use anyhow::Result;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService, ServiceExt as _};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData, Peer, RoleClient, RoleServer, ServerHandler};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

type UpstreamCell = Arc<tokio::sync::OnceCell<RunningService<RoleClient, ()>>>;

/// The proxy: its upstream connections, one per client.
#[derive(Clone)]
struct BareProxy {
    upstream_url: Arc<str>,
    upstreams: Arc<Mutex<HashMap<String, UpstreamCell>>>,
}

impl BareProxy {
    /// The upstream connection of the client that sent this request.
    async fn upstream(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Peer<RoleClient>, ErrorData> {
        let parts = ctx.extensions.get::<axum::http::request::Parts>();
        let session = parts
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let peer = parts
            .and_then(|p| p.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>())
            .map(|c| c.0.to_string());
        let key = session.or(peer).unwrap_or_default();
        let cell = self
            .upstreams
            .lock()
            .map_err(|_| ErrorData::internal_error("connection table poisoned", None))?
            .entry(key)
            .or_default()
            .clone();
        let service = cell
            .get_or_try_init(|| async {
                let transport = StreamableHttpClientTransport::with_client(
                    mandate_gateway::TraceHttpClient::new(reqwest::Client::new()),
                    StreamableHttpClientTransportConfig::with_uri(&*self.upstream_url),
                );
                ().serve(transport).await
            })
            .await
            .map_err(|e| upstream_error(&e))?;
        Ok(service.peer().clone())
    }
}

/// The upstream's error goes to the log; the client learns only that the
/// upstream failed (the gateway's `upstream_failed` code).
fn upstream_error(e: &impl std::fmt::Display) -> ErrorData {
    tracing::warn!(error = %e, "bare proxy: upstream failed");
    ErrorData::new(
        rmcp::model::ErrorCode(mandate_gateway::error::RpcCode::UpstreamFailed.value()),
        "upstream unavailable",
        None,
    )
}

impl ServerHandler for BareProxy {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.upstream(&ctx)
            .await?
            .list_tools(request)
            .await
            .map_err(|e| upstream_error(&e))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.upstream(&ctx)
            .await?
            .call_tool_once(params)
            .await
            .map_err(|e| upstream_error(&e))
    }
}

/// Serves the bare proxy for `upstream_url` on `listener` until the
/// process ends.
pub async fn serve(listener: tokio::net::TcpListener, upstream_url: String) -> Result<()> {
    let proxy = BareProxy {
        upstream_url: upstream_url.into(),
        upstreams: Arc::default(),
    };
    crate::demo_server::serve_http_with(listener, move || proxy.clone()).await
}
