//! [`AppState`]: the services every handler may use. Cheap to clone: each field is shared.

use std::sync::Arc;

use chiron_auth::AuthService;
use chiron_core::Config;
use chiron_store::Store;

use crate::metrics::Metrics;

/// Shared state of the HTTP app.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Storage.
    pub store: Store,
    /// Token issuance and verification.
    pub auth: AuthService,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Builds the state from its parts.
    pub fn new(config: Config, store: Store, auth: AuthService) -> Self {
        Self {
            config: Arc::new(config),
            store,
            auth,
            metrics: Arc::new(Metrics::new()),
        }
    }
}
