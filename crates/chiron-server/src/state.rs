//! [`AppState`]: the services every handler may use. Cheap to clone: each field is shared.

use std::sync::{Arc, OnceLock};

use chiron_auth::AuthService;
use chiron_core::Config;
use chiron_egress::Secrets;
use chiron_mcp::{EmptyCatalog, McpEndpoint, ToolCatalog};
use chiron_store::Store;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Shared state of the HTTP app.
#[derive(Clone)]
pub struct AppState {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Storage.
    pub store: Store,
    /// Token issuance and verification.
    pub auth: AuthService,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The MCP endpoint (routes, sessions).
    pub mcp: McpEndpoint,
    /// The tools beyond the built-ins; told when grants change.
    pub catalog: Arc<dyn ToolCatalog>,
    /// The per-principal runners, when this server runs tools.
    pub runners: Option<Arc<chiron_runner::RunnerPool>>,
    /// The Slack bot's routes (Events API transport), served under `/slack`.
    pub slack: Option<axum::Router>,
    /// The egress proxy, when this server runs one (its counts are metrics).
    pub egress: Option<chiron_egress::EgressProxy>,
    /// The secret store the egress proxy reads, opened on first use when no proxy runs.
    secrets: Arc<OnceLock<Arc<Secrets>>>,
    /// Cancelled when the server shuts down: ends MCP sessions and their streams so draining
    /// does not wait on long-lived SSE connections.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The same state with the runner pool that serves its catalog's tools.
    pub fn with_runners(mut self, runners: Arc<chiron_runner::RunnerPool>) -> Self {
        self.runners = Some(runners);
        self
    }

    /// The same state reporting `proxy`'s counts as metrics.
    pub fn with_egress(mut self, proxy: chiron_egress::EgressProxy) -> Self {
        self.egress = Some(proxy);
        self
    }

    /// The same state serving the Slack bot's routes under `/slack`.
    pub fn with_slack(mut self, routes: axum::Router) -> Self {
        self.slack = Some(routes);
        self
    }

    /// The same state sharing `secrets` (the egress proxy's), so changes made through the
    /// admin API reach the proxy's cached values at once.
    pub fn with_secrets(self, secrets: Arc<Secrets>) -> Self {
        let _ = self.secrets.set(secrets);
        self
    }

    /// The secret store.
    pub fn secrets(&self) -> Arc<Secrets> {
        self.secrets
            .get_or_init(|| crate::egress::secrets(&self.config, self.store.clone()))
            .clone()
    }

    /// Builds the state with no tool catalog beyond the built-in tools.
    pub fn new(config: Config, store: Store, auth: AuthService) -> Self {
        Self::with_catalog(config, store, auth, Arc::new(EmptyCatalog))
    }

    /// Builds the state with a tool catalog.
    pub fn with_catalog(
        config: Config,
        store: Store,
        auth: AuthService,
        catalog: Arc<dyn ToolCatalog>,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let mcp = McpEndpoint::new(&config, auth.clone(), catalog.clone(), shutdown.clone());
        Self {
            config: Arc::new(config),
            store,
            auth,
            metrics: Arc::new(Metrics::new()),
            mcp,
            catalog,
            runners: None,
            slack: None,
            egress: None,
            secrets: Arc::default(),
            shutdown,
        }
    }
}
