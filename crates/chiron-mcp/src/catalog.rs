//! The tool-routing interface. The MCP handler asks a [`ToolCatalog`] which tools a principal
//! may see and routes calls to it; the catalog decides visibility (grants) and execution
//! (runners). A tool the principal may not use must be indistinguishable from one that does
//! not exist: both are [`CatalogError::UnknownTool`].

use async_trait::async_trait;
use rmcp::model::{CallToolResult, JsonObject, Tool};

use chiron_auth::Authenticated;

/// Why a catalog could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such tool for this principal (missing and ungranted look the same).
    #[error("unknown tool")]
    UnknownTool,
    /// The catalog could not be consulted; the detail is logged, not returned.
    #[error("tool catalog unavailable: {0}")]
    Unavailable(String),
}

/// Tools beyond the built-ins, filtered per principal.
#[async_trait]
pub trait ToolCatalog: Send + Sync + 'static {
    /// The tools `caller` may list and call.
    async fn list_tools(&self, caller: &Authenticated) -> Result<Vec<Tool>, CatalogError>;

    /// Runs a tool for `caller`. A tool failure is `Ok` with `is_error: true`.
    async fn call_tool(
        &self,
        caller: &Authenticated,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, CatalogError>;

    /// A receiver that changes whenever the tools some principal sees may have changed
    /// (packages reloaded, grants changed); `None` for a catalog that never changes. MCP
    /// sessions turn changes into `notifications/tools/list_changed`.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Announces that visible tools may have changed (called after grant changes).
    fn notify_changed(&self) {}

    /// Call audit rows dropped since the start because storage could not take them.
    fn audit_dropped(&self) -> u64 {
        0
    }
}

/// A catalog with no tools: only the built-ins are served.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmptyCatalog;

#[async_trait]
impl ToolCatalog for EmptyCatalog {
    async fn list_tools(&self, _caller: &Authenticated) -> Result<Vec<Tool>, CatalogError> {
        Ok(Vec::new())
    }

    async fn call_tool(
        &self,
        _caller: &Authenticated,
        _name: &str,
        _arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, CatalogError> {
        Err(CatalogError::UnknownTool)
    }
}
