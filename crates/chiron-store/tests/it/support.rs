//! Builders shared by the store tests.

use std::time::Duration;

use chiron_core::time_util::now;
use chiron_core::{
    Actor, CreatedVia, McpToken, NewAuditEvent, PrincipalId, Scope, Scopes, TokenId,
};

pub fn audit(action: &str, target_id: impl ToString) -> NewAuditEvent {
    NewAuditEvent {
        actor: Actor::cli(),
        action: action.to_owned(),
        target_kind: "test".to_owned(),
        target_id: target_id.to_string(),
        detail: serde_json::json!({ "note": "test" }),
    }
}

pub fn token(principal_id: PrincipalId, ttl: Duration) -> McpToken {
    let created_at = now();
    McpToken {
        id: TokenId::new(),
        principal_id,
        name: "laptop".to_owned(),
        display_prefix: "chi_abcd".to_owned(),
        scopes: Scopes::new([Scope::McpTools]),
        audience: "http://127.0.0.1:8787/mcp".to_owned(),
        created_via: CreatedVia::Cli,
        created_at,
        expires_at: created_at + ttl,
        last_used_at: None,
        revoked_at: None,
        revoke_reason: None,
    }
}
