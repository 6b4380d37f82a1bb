//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for the MCP endpoint. Clients find it from
//! the `resource_metadata` parameter of a 401's `WWW-Authenticate` header.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// The metadata document.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceMetadata {
    /// The protected resource: `<public_url>/mcp`.
    pub resource: String,
    /// Where tokens come from; defaults to `public_url`.
    pub authorization_servers: Vec<String>,
    /// Tokens are accepted only in the `Authorization` header.
    pub bearer_methods_supported: Vec<&'static str>,
    /// The scope MCP access needs.
    pub scopes_supported: Vec<&'static str>,
    /// Human-readable name.
    pub resource_name: String,
}

/// The path of the metadata document for `/mcp` (RFC 9728 §3.1 path insertion).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";
/// The root metadata path, served with the same document.
pub const ROOT_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// `GET` handler for both metadata paths.
pub async fn handler(State(metadata): State<Arc<ResourceMetadata>>) -> Json<ResourceMetadata> {
    Json((*metadata).clone())
}
