use std::time::Duration;

use chiron_auth::{AuthService, AuthSettings, IssueRequest, IssuedToken};
use chiron_core::{Actor, CreatedVia, PrincipalId, Scope, Scopes};
use chiron_store::Store;

pub const AUDIENCE: &str = "http://127.0.0.1:8787/mcp";

pub fn settings(audience: &str) -> AuthSettings {
    AuthSettings {
        audience: audience.to_owned(),
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(24 * 3600),
        cache_ttl: Duration::from_secs(5),
        last_used_interval: Duration::from_secs(60),
    }
}

pub fn service(store: &Store) -> AuthService {
    AuthService::new(store.clone(), settings(AUDIENCE), None)
}

pub fn request(principal_id: PrincipalId, scopes: &[Scope]) -> IssueRequest {
    IssueRequest {
        principal_id,
        name: "laptop".into(),
        scopes: Scopes::new(scopes.iter().copied()),
        ttl: None,
        created_via: CreatedVia::Cli,
        actor: Actor::cli(),
    }
}

pub async fn issue(
    service: &AuthService,
    principal_id: PrincipalId,
    scopes: &[Scope],
) -> IssuedToken {
    service
        .issue(request(principal_id, scopes))
        .await
        .expect("issue token")
}
