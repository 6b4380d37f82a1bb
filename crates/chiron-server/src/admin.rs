//! The admin API under `/admin/api/`. Every route requires a bearer token with the `admin`
//! scope ([`AdminAuth`]). Responses are JSON; errors are [`ApiError`] with stable codes. The
//! token-issuing route is the only response that ever contains a token.

use std::str::FromStr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use chiron_auth::IssueRequest;
use chiron_core::{
    Actor, CreatedVia, GroupId, PrincipalId, PrincipalStatus, Scope, Scopes, TokenId,
};
use chiron_store::audit::AuditFilter;
use chiron_store::grants::GrantSubject;

pub use crate::bearer::AdminAuth;
use crate::{ApiError, AppState};

/// The admin routes, to be nested under `/admin/api`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/principals", get(list_principals).post(create_principal))
        .route("/principals/{id}", get(get_principal))
        .route("/principals/{id}/disable", post(disable_principal))
        .route("/principals/{id}/enable", post(enable_principal))
        .route(
            "/principals/{id}/tokens",
            get(list_tokens).post(issue_token),
        )
        .route(
            "/principals/{id}/tokens/revoke-all",
            post(revoke_all_tokens),
        )
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{name}", get(get_group).delete(delete_group))
        .route(
            "/groups/{name}/members/{principal}",
            put(add_member).delete(remove_member),
        )
        .route(
            "/grants",
            get(list_grants).post(add_grant).delete(remove_grant),
        )
        .route("/audit", get(list_audit))
        .route("/calls", get(list_calls))
        .route("/runners", get(list_runners))
        .route(
            "/secrets",
            get(list_secrets).put(set_secret).delete(delete_secret),
        )
        .route("/egress", get(list_egress))
        .route("/runners/{principal}/stop", post(stop_runner))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::middleware::map_response(json_method_not_allowed))
}

/// A method a route does not serve gets the stable error shape too, keeping `Allow`.
async fn json_method_not_allowed(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE)
    {
        return response;
    }
    let mut answer = ApiError::MethodNotAllowed.into_response();
    if let Some(allow) = response.headers().get(axum::http::header::ALLOW) {
        answer
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    answer
}

/// A JSON body whose rejection is an [`ApiError`] with the stable error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Query parameters whose rejection is an [`ApiError`] with the stable error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

fn parse_id<T: FromStr>(text: &str, what: &'static str) -> Result<T, ApiError> {
    // A malformed id names nothing: it is simply not found.
    text.parse().map_err(|_| ApiError::NotFound(what))
}

fn actor(admin: &AdminAuth) -> Actor {
    Actor::principal(admin.0.principal.id, "admin-api")
}

async fn list_principals(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let principals = state.store.list_principals().await?;
    Ok(Json(json!({ "principals": principals })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePrincipal {
    display_name: String,
}

async fn create_principal(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreatePrincipal>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.display_name.trim();
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "display_name must not be empty".into(),
        ));
    }
    // Names pick principals in the CLI: a second one of the same name would be ambiguous.
    if !state.store.principals_named(name).await?.is_empty() {
        return Err(ApiError::Conflict("a principal with this display_name"));
    }
    let principal = state.store.create_principal(name).await?;
    Ok((StatusCode::CREATED, Json(json!(principal))))
}

async fn get_principal(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: PrincipalId = parse_id(&id, "principal")?;
    let principal = state
        .store
        .get_principal(id)
        .await?
        .ok_or(ApiError::NotFound("principal"))?;
    let groups = state.store.groups_of(id).await?;
    let identities = state.store.identities_of(id).await?;
    Ok(Json(
        json!({ "principal": principal, "groups": groups, "identities": identities }),
    ))
}

async fn set_status(
    admin: AdminAuth,
    state: AppState,
    id: &str,
    status: PrincipalStatus,
) -> Result<Json<Value>, ApiError> {
    let id: PrincipalId = parse_id(id, "principal")?;
    let principal = state
        .auth
        .set_principal_status(id, status, actor(&admin))
        .await?;
    Ok(Json(json!(principal)))
}

async fn disable_principal(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_status(admin, state, &id, PrincipalStatus::Disabled).await
}

async fn enable_principal(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_status(admin, state, &id, PrincipalStatus::Active).await
}

#[derive(Deserialize)]
struct TokenListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_tokens(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<TokenListQuery>,
) -> Result<Json<Value>, ApiError> {
    let id: PrincipalId = parse_id(&id, "principal")?;
    state
        .store
        .get_principal(id)
        .await?
        .ok_or(ApiError::NotFound("principal"))?;
    let tokens = state.store.list_tokens(id, query.all).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    #[serde(default)]
    name: Option<String>,
    /// Scopes; default `["mcp:tools"]`.
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
    /// Lifetime such as `7d`; default the configured default.
    #[serde(default)]
    ttl: Option<String>,
}

async fn issue_token(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<IssueBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let principal_id: PrincipalId = parse_id(&id, "principal")?;
    let ttl = body
        .ttl
        .as_deref()
        .map(parse_ttl)
        .transpose()
        .map_err(|err| ApiError::BadRequest(format!("ttl: {err}")))?;
    let scopes = Scopes::new(body.scopes.unwrap_or_else(|| vec![Scope::McpTools]));
    let issued = state
        .auth
        .issue(IssueRequest {
            principal_id,
            name: body.name.unwrap_or_else(|| "admin-issued".into()),
            scopes,
            ttl,
            created_via: CreatedVia::AdminApi,
            actor: actor(&admin),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": issued.secret.expose(), "metadata": issued.record })),
    ))
}

/// Parses `7d`, `12h`, `30m` and the like.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("{text:?} is not a duration such as 30m, 12h or 7d ({err})"))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The reason from an optional `{"reason": …}` body.
fn revoke_reason(body: &[u8]) -> Result<String, ApiError> {
    let parsed: RevokeBody = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeBody::default()
    } else {
        serde_json::from_slice(body).map_err(|err| ApiError::BadRequest(err.to_string()))?
    };
    Ok(parsed.reason.unwrap_or_else(|| "revoked by admin".into()))
}

async fn revoke_token(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id: TokenId = parse_id(&id, "token")?;
    let reason = revoke_reason(&body)?;
    let token = state.auth.revoke(id, None, &reason, actor(&admin)).await?;
    Ok(Json(json!(token)))
}

async fn revoke_all_tokens(
    admin: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id: PrincipalId = parse_id(&id, "principal")?;
    let reason = revoke_reason(&body)?;
    let revoked = state.auth.revoke_all(id, &reason, actor(&admin)).await?;
    Ok(Json(json!({ "revoked": revoked })))
}

async fn list_groups(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "groups": state.store.list_groups().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    name: String,
}

async fn create_group(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() {
        return Err(ApiError::BadRequest("name must not be empty".into()));
    }
    let group = state.store.create_group(name).await?;
    Ok((StatusCode::CREATED, Json(json!(group))))
}

async fn group_id(state: &AppState, name: &str) -> Result<GroupId, ApiError> {
    Ok(state
        .store
        .group_by_name(name)
        .await?
        .ok_or(ApiError::NotFound("group"))?
        .id)
}

async fn get_group(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group = state
        .store
        .group_by_name(&name)
        .await?
        .ok_or(ApiError::NotFound("group"))?;
    let members = state.store.group_members(group.id).await?;
    Ok(Json(json!({ "group": group, "members": members })))
}

async fn delete_group(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = group_id(&state, &name).await?;
    state.store.delete_group(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_member(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((name, principal)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = group_id(&state, &name).await?;
    let principal: PrincipalId = parse_id(&principal, "principal")?;
    state.store.add_group_member(id, principal).await?;
    // Group grants now reach (or leave) this principal.
    state.catalog.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((name, principal)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = group_id(&state, &name).await?;
    let principal: PrincipalId = parse_id(&principal, "principal")?;
    if state.store.remove_group_member(id, principal).await? {
        state.catalog.notify_changed();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("membership"))
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    action: Option<String>,
    target: Option<String>,
    limit: Option<u32>,
}

async fn list_audit(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = AuditFilter {
        action: query.action,
        target_id: query.target,
        since: None,
        limit: Some(query.limit.unwrap_or(100).min(1000)),
    };
    Ok(Json(
        json!({ "events": state.store.list_audit(&filter).await? }),
    ))
}

#[derive(Deserialize)]
struct GrantQuery {
    package: Option<String>,
}

async fn list_grants(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<GrantQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "grants": state.store.list_grants(query.package.as_deref()).await? }),
    ))
}

/// `{"package": "github", "principal": "<id>"}`, `{"package": …, "group": "<name>"}` or
/// `{"package": …, "everyone": true}` — exactly one subject.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    package: String,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    everyone: bool,
}

/// The id of an existing principal, from its text form.
async fn existing_principal(state: &AppState, text: &str) -> Result<PrincipalId, ApiError> {
    let id: PrincipalId = parse_id(text, "principal")?;
    state
        .store
        .get_principal(id)
        .await?
        .ok_or(ApiError::NotFound("principal"))?;
    Ok(id)
}

async fn grant_subject(state: &AppState, body: &GrantBody) -> Result<GrantSubject, ApiError> {
    if body.package.trim().is_empty() {
        return Err(ApiError::BadRequest("package must not be empty".into()));
    }
    match (&body.principal, &body.group, body.everyone) {
        (Some(principal), None, false) => Ok(GrantSubject::Principal(
            existing_principal(state, principal).await?,
        )),
        (None, Some(group), false) => Ok(GrantSubject::Group(group_id(state, group).await?)),
        (None, None, true) => Ok(GrantSubject::Everyone),
        _ => Err(ApiError::BadRequest(
            "give exactly one of principal, group or everyone".into(),
        )),
    }
}

async fn add_grant(
    admin: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let subject = grant_subject(&state, &body).await?;
    let added = state
        .store
        .add_grant(&body.package, subject, actor(&admin))
        .await?;
    if added {
        state.catalog.notify_changed();
    }
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "package": body.package, "subject": subject, "added": added })),
    ))
}

async fn remove_grant(
    admin: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<StatusCode, ApiError> {
    let subject = grant_subject(&state, &body).await?;
    if !state
        .store
        .remove_grant(&body.package, subject, actor(&admin))
        .await?
    {
        return Err(ApiError::NotFound("grant"));
    }
    state.catalog.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SecretQuery {
    principal: Option<String>,
}

async fn list_secrets(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SecretQuery>,
) -> Result<Json<Value>, ApiError> {
    let principal = query
        .principal
        .as_deref()
        .map(|p| parse_id::<PrincipalId>(p, "principal"))
        .transpose()?;
    Ok(Json(
        json!({ "secrets": state.store.list_secrets(principal).await? }),
    ))
}

/// `{"name": "GITHUB_TOKEN", "principal": "<id>", "value": "…"}` or `{…, "team": true, …}`;
/// for deletion the same without `value`. The value is never echoed, logged or audited.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    name: String,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    team: bool,
    #[serde(default)]
    value: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBody")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

async fn secret_owner(
    state: &AppState,
    body: &SecretBody,
) -> Result<chiron_store::secrets::SecretOwner, ApiError> {
    use chiron_store::secrets::SecretOwner;
    match (&body.principal, body.team) {
        (Some(principal), false) => Ok(SecretOwner::Principal(
            existing_principal(state, principal).await?,
        )),
        (None, true) => Ok(SecretOwner::Team),
        _ => Err(ApiError::BadRequest(
            "give exactly one of principal or team".into(),
        )),
    }
}

fn secret_error(err: chiron_egress::SecretError) -> ApiError {
    match err {
        chiron_egress::SecretError::Store(err) => err.into(),
        other => ApiError::BadRequest(other.to_string()),
    }
}

async fn set_secret(
    admin: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SecretBody>,
) -> Result<StatusCode, ApiError> {
    let owner = secret_owner(&state, &body).await?;
    let value = body
        .value
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("value is required".into()))?;
    state
        .secrets()
        .set(&body.name, owner, value, actor(&admin))
        .await
        .map_err(secret_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(
    admin: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SecretBody>,
) -> Result<StatusCode, ApiError> {
    let owner = secret_owner(&state, &body).await?;
    let removed = state
        .secrets()
        .delete(&body.name, owner, actor(&admin))
        .await
        .map_err(secret_error)?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("secret"))
    }
}

#[derive(Deserialize)]
struct EgressQuery {
    call: Option<String>,
    limit: Option<u32>,
}

async fn list_egress(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EgressQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = state
        .store
        .egress_requests(query.call.as_deref(), query.limit.unwrap_or(100).min(1000))
        .await?;
    Ok(Json(json!({ "requests": rows })))
}

#[derive(Deserialize)]
struct CallQuery {
    principal: Option<String>,
    tool: Option<String>,
    outcome: Option<String>,
    limit: Option<u32>,
}

async fn list_calls(
    _: AdminAuth,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CallQuery>,
) -> Result<Json<Value>, ApiError> {
    let principal_id = query
        .principal
        .as_deref()
        .map(|p| parse_id::<PrincipalId>(p, "principal"))
        .transpose()?;
    let filter = chiron_store::tool_calls::ToolCallFilter {
        principal_id,
        tool: query.tool,
        outcome: query.outcome,
        since: None,
        limit: Some(query.limit.unwrap_or(100).min(1000)),
    };
    Ok(Json(
        json!({ "calls": state.store.list_tool_calls(&filter).await? }),
    ))
}

async fn list_runners(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    let runners = state
        .runners
        .as_ref()
        .map(|pool| pool.list())
        .unwrap_or_default();
    Ok(Json(json!({ "runners": runners })))
}

async fn stop_runner(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(principal): Path<String>,
) -> Result<StatusCode, ApiError> {
    let principal: PrincipalId = parse_id(&principal, "runner")?;
    let pool = state.runners.as_ref().ok_or(ApiError::NotFound("runner"))?;
    if pool.stop(principal).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("runner"))
    }
}
