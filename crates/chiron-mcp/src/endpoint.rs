//! Assembling `/mcp` and the metadata routes from configuration.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{middleware, Router};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use url::Url;

use chiron_auth::AuthService;
use chiron_core::Config;

use crate::catalog::ToolCatalog;
use crate::gate::{gate, Gate};
use crate::handler::McpHandler;
use crate::metadata::{self, ResourceMetadata, METADATA_PATH, ROOT_METADATA_PATH};
use crate::sessions::SessionRegistry;

/// The MCP endpoint: its routes, its session registry and rmcp's session manager.
#[derive(Clone)]
pub struct McpEndpoint {
    router: Router,
    sessions: SessionRegistry,
    session_manager: Arc<LocalSessionManager>,
}

/// rmcp's service behind an `Arc`. The router clones a route's service for every request
/// (several times, through its layers), and rmcp's service clones its whole configuration,
/// host and origin lists included; this clone is a reference count.
#[derive(Clone)]
struct Shared(Arc<StreamableHttpService<McpHandler, LocalSessionManager>>);

impl tower::Service<axum::extract::Request> for Shared {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(service.handle(request).await.map(axum::body::Body::new)) })
    }
}

/// Whether `host` (as a URL writes it) names this machine's loopback interface.
pub fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

/// `Host` values accepted: `public_url`'s authority (and its loopback aliases on the same
/// port when it is loopback), plus `mcp.allowed_hosts`.
pub fn allowed_hosts(public_url: &Url, extra: &[String]) -> Vec<String> {
    let host = public_url
        .host_str()
        .unwrap_or("localhost")
        .to_ascii_lowercase();
    let port = public_url.port_or_known_default().unwrap_or(80);
    let names: Vec<String> = if is_loopback(&host) {
        vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]
    } else {
        vec![host]
    };
    let mut hosts = Vec::new();
    for name in names {
        hosts.push(format!("{name}:{port}"));
        if public_url.port().is_none() {
            hosts.push(name);
        }
    }
    hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
    hosts
}

/// `Origin` values accepted: `public_url`'s origin (and loopback aliases), plus
/// `mcp.allowed_origins`.
pub fn allowed_origins(public_url: &Url, extra: &[String]) -> Vec<String> {
    let scheme = public_url.scheme();
    let mut origins: Vec<String> = allowed_hosts(public_url, &[])
        .into_iter()
        .map(|authority| format!("{scheme}://{authority}"))
        .collect();
    origins.extend(
        extra
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase()),
    );
    origins
}

impl McpEndpoint {
    /// Builds the endpoint. `shutdown` ends every open session and stream.
    pub fn new(
        config: &Config,
        auth: AuthService,
        catalog: Arc<dyn ToolCatalog>,
        shutdown: CancellationToken,
    ) -> Self {
        let mcp = &config.mcp;
        let public_url = &config.server.public_url;
        let hosts = allowed_hosts(public_url, &mcp.allowed_hosts);
        let origins = allowed_origins(public_url, &mcp.allowed_origins);
        let sessions = SessionRegistry::new(
            mcp.session_ttl,
            mcp.max_sessions_per_principal,
            mcp.max_sessions_total,
        );

        let mut session_manager = LocalSessionManager::default();
        // rmcp's own idle timeout is a safety net behind the registry's TTL.
        session_manager.session_config.keep_alive = Some(mcp.session_ttl + Duration::from_secs(5));
        let session_manager = Arc::new(session_manager);

        // rmcp validates Host and Origin too; an empty origin list would switch its check off,
        // so it gets the same explicit lists as the gate.
        // Stateless (2026-07-28) requests whose handler answers with no message in between
        // get a plain JSON response instead of a one-event SSE stream: less work on both
        // ends. Calls that emit notifications first still stream.
        let rmcp_config = StreamableHttpServerConfig::default()
            .with_json_response(true)
            .with_allowed_hosts(hosts.clone())
            .with_allowed_origins(origins.clone())
            .enforce_origin_validation()
            .with_max_request_body_bytes(mcp.max_body_bytes)
            .with_cancellation_token(shutdown);
        let handler = McpHandler::new(catalog);
        let service = Shared(Arc::new(StreamableHttpService::new(
            move || Ok(handler.clone()),
            session_manager.clone(),
            rmcp_config,
        )));

        let gate_state = Arc::new(Gate {
            auth,
            sessions: sessions.clone(),
            allowed_hosts: hosts.into_iter().collect::<HashSet<_>>(),
            allowed_origins: origins.into_iter().collect::<HashSet<_>>(),
            resource_metadata_url: format!("{}{METADATA_PATH}", config.server.public_base()),
            max_body_bytes: mcp.max_body_bytes,
            limiter: Gate::limiter(mcp.calls_per_minute, mcp.call_burst),
        });

        let authorization_servers = if mcp.authorization_servers.is_empty() {
            vec![config.server.public_base()]
        } else {
            mcp.authorization_servers
                .iter()
                .map(|u| u.as_str().trim_end_matches('/').to_owned())
                .collect()
        };
        let metadata = Arc::new(ResourceMetadata {
            resource: config.server.mcp_url(),
            authorization_servers,
            bearer_methods_supported: vec!["header"],
            scopes_supported: vec!["mcp:tools"],
            resource_name: mcp.resource_name.clone(),
        });

        let mcp_routes = Router::new()
            .route_service("/mcp", service)
            .layer(middleware::from_fn_with_state(gate_state, gate));
        let metadata_routes = Router::new()
            .route(METADATA_PATH, get(metadata::handler))
            .route(ROOT_METADATA_PATH, get(metadata::handler))
            .with_state(metadata);
        Self {
            router: mcp_routes.merge(metadata_routes),
            sessions,
            session_manager,
        }
    }

    /// The routes: `/mcp` and the protected-resource metadata.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The session registry (for metrics and tests).
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Closes idle sessions every half TTL until `shutdown`.
    pub fn spawn_reaper(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let sessions = self.sessions.clone();
        let manager = self.session_manager.clone();
        let period =
            (sessions.ttl() / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                for id in sessions.take_expired() {
                    tracing::debug!(session = %id, "closing idle mcp session");
                    let _ = manager.close_session(&Arc::from(id.as_str())).await;
                }
            }
        })
    }
}
