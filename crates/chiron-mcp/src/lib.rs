//! chiron's MCP endpoint. [`McpEndpoint`] serves `/mcp` with rmcp's Streamable HTTP service
//! (session revisions 2025-03-26, 2025-06-18, 2025-11-25 and the stateless 2026-07-28 revision
//! side by side) behind [`gate`], an axum middleware that validates `Host` and `Origin`,
//! authenticates the bearer token, binds sessions to the principal that opened them
//! ([`sessions::SessionRegistry`]), limits body size and `tools/call` rate, and hands the
//! verified principal to [`handler::McpHandler`] as a typed value. Tools other than the
//! built-in `whoami` come from a [`catalog::ToolCatalog`], the interface tool packages plug
//! into. [`metadata`] serves RFC 9728 protected-resource metadata.

pub mod catalog;
pub mod gate;
pub mod handler;
pub mod metadata;
pub mod packages;
pub mod sessions;

mod endpoint;

pub use catalog::{CatalogError, EmptyCatalog, ToolCatalog};
pub use endpoint::{is_loopback, McpEndpoint};
pub use packages::{decl_from_server_tool, OutputScrubber, PackageCatalog};
