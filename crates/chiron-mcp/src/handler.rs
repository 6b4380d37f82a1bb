//! [`McpHandler`]: the rmcp `ServerHandler`. It lists `whoami` plus the catalog's tools for
//! the authenticated principal and routes calls. The principal comes from the request's
//! extensions, where [`crate::gate`] put it after verifying the bearer token; rmcp passes the
//! HTTP request parts through to the handler's context.

use std::sync::Arc;

use rmcp::model::SubscriptionFilter;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::json;

use chiron_auth::Authenticated;
use chiron_core::time_util::rfc3339;

use crate::catalog::{CatalogError, ToolCatalog};

/// The built-in tool every principal sees.
pub const WHOAMI: &str = "whoami";

/// Serves MCP requests for one connection or request; cheap to clone.
#[derive(Clone)]
pub struct McpHandler {
    catalog: Arc<dyn ToolCatalog>,
}

impl McpHandler {
    /// A handler routing non-built-in tools to `catalog`.
    pub fn new(catalog: Arc<dyn ToolCatalog>) -> Self {
        Self { catalog }
    }
}

/// The verified caller of this request.
fn caller(context: &RequestContext<RoleServer>) -> Result<Arc<Authenticated>, McpError> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Arc<Authenticated>>())
        .cloned()
        // Invariant: the gate rejects every request it could not authenticate, so this only
        // fails if the handler is mounted without the gate.
        .ok_or_else(|| McpError::internal_error("request was not authenticated", None))
}

fn whoami_tool() -> Tool {
    let schema = json!({ "type": "object", "properties": {}, "additionalProperties": false });
    let schema = match schema {
        serde_json::Value::Object(map) => map,
        _ => JsonObject::new(),
    };
    Tool::new(
        WHOAMI,
        "Shows which chiron principal and token this connection is authenticated as.",
        Arc::new(schema),
    )
    .with_annotations(ToolAnnotations::new().read_only(true).open_world(false))
}

fn whoami(caller: &Authenticated) -> CallToolResult {
    CallToolResult::structured(json!({
        "principal_id": caller.principal.id,
        "principal_name": caller.principal.display_name,
        "token_id": caller.token.id,
        "token_name": caller.token.name,
        "token_expires_at": rfc3339(caller.token.expires_at),
        "scopes": caller.token.scopes,
    }))
}

fn catalog_error(err: CatalogError, name: &str) -> McpError {
    match err {
        CatalogError::UnknownTool => {
            McpError::invalid_params(format!("unknown tool: {name}"), None)
        }
        CatalogError::Unavailable(detail) => {
            tracing::error!(error = %detail, "tool catalog unavailable");
            McpError::internal_error("tool catalog unavailable", None)
        }
    }
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("chiron", env!("CARGO_PKG_VERSION")))
        .with_instructions("Tools granted to you by your team's chiron gateway.")
    }

    /// Session revisions: once the client is initialized, every catalog change becomes a
    /// `notifications/tools/list_changed` on the session's stream. The forwarding task ends
    /// when a send fails (the session is gone) or the catalog is dropped.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let Some(mut changes) = self.catalog.changes() else {
            return;
        };
        changes.borrow_and_update();
        let peer = context.peer.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// The 2026-07-28 revision has no sessions: clients ask for change notifications with
    /// `subscriptions/listen`, and chiron offers tool-list changes.
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let Some(mut changes) = self.catalog.changes() else {
            context.cancelled().await;
            return Ok(());
        };
        changes.borrow_and_update();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() || context.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = caller(&context)?;
        let mut tools = vec![whoami_tool()];
        tools.extend(
            self.catalog
                .list_tools(&caller)
                .await
                .map_err(|e| catalog_error(e, ""))?,
        );
        Ok(ListToolsResult {
            tools,
            ..Default::default()
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = caller(&context)?;
        let name = request.name.as_ref();
        tracing::debug!(principal_id = %caller.principal.id, tool = name, "tool call");
        if name == WHOAMI {
            return Ok(whoami(&caller).into());
        }
        let result = self
            .catalog
            .call_tool(&caller, name, request.arguments)
            .await
            .map_err(|err| catalog_error(err, name))?;
        Ok(result.into())
    }
}
