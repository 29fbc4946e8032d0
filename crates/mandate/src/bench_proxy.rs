//! The benchmark's second baseline: a bare MCP proxy on the same SDK.
//!
//! It forwards `tools/list` and `tools/call` to one Streamable HTTP
//! upstream and does nothing else: no authentication, no policy, no audit.
//! Like the gateway it is an `rmcp` server to its clients and an `rmcp`
//! client to the upstream, with one upstream connection per client session
//! and the same server configuration, so `mandate bench` can tell what any
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
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler};
use std::sync::Arc;

/// One client session of the proxy, with its own upstream connection.
struct BareProxy {
    upstream_url: Arc<str>,
    upstream: tokio::sync::OnceCell<RunningService<RoleClient, ()>>,
}

impl BareProxy {
    async fn upstream(&self) -> Result<&RunningService<RoleClient, ()>, ErrorData> {
        self.upstream
            .get_or_try_init(|| async {
                let transport = StreamableHttpClientTransport::with_client(
                    mandate_gateway::upstream::TraceHttpClient(reqwest::Client::new()),
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                        &*self.upstream_url,
                    ),
                );
                ().serve(transport).await
            })
            .await
            .map_err(|e| ErrorData::internal_error(format!("upstream: {e}"), None))
    }
}

fn upstream_error(e: &rmcp::ServiceError) -> ErrorData {
    ErrorData::internal_error(format!("upstream: {e}"), None)
}

impl ServerHandler for BareProxy {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let upstream = self.upstream().await?;
        upstream
            .list_tools(request)
            .await
            .map_err(|e| upstream_error(&e))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let upstream = self.upstream().await?;
        upstream
            .call_tool_once(params)
            .await
            .map_err(|e| upstream_error(&e))
    }
}

/// Serves the bare proxy for `upstream_url` on `listener` until the
/// process ends.
pub async fn serve(listener: tokio::net::TcpListener, upstream_url: String) -> Result<()> {
    let url: Arc<str> = upstream_url.into();
    crate::demo_server::serve_http_with(listener, move || BareProxy {
        upstream_url: url.clone(),
        upstream: tokio::sync::OnceCell::new(),
    })
    .await
}
