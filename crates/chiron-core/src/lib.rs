//! Domain vocabulary of chiron: newtype ids (`PrincipalId`, `TokenId`, `GroupId`), the
//! principal, group, token and audit records that storage persists, token scopes and origins,
//! and the typed configuration tree (`Config`) that the server parses once at start.
//!
//! This crate performs no I/O: every other crate depends on it, never the reverse.

pub mod config;
pub mod ids;
pub mod model;
pub mod time_util;

pub use config::Config;
pub use ids::{AuditId, GroupId, PrincipalId, TokenId};
pub use model::{
    Actor, AuditEvent, CreatedVia, ExternalIdentity, Group, McpToken, NewAuditEvent, Principal,
    PrincipalStatus, Scope, Scopes,
};
