//! The admin API's authentication extractor. The token is read only from the
//! `Authorization: Bearer` header; a token anywhere else (query string, cookie) is ignored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use chiron_auth::Authenticated;
use chiron_core::Scope;

use crate::{ApiError, AppState};

/// A request authenticated with a token that has the `admin` scope.
#[derive(Debug, Clone)]
pub struct AdminAuth(pub std::sync::Arc<Authenticated>);

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            chiron_mcp::gate::bearer_token(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let authenticated = state.auth.verify(token, Scope::Admin).await?;
        Ok(Self(authenticated))
    }
}
