//! [`ApiError`]: the one mapping from domain errors to HTTP status and a stable JSON `code`.
//! Details of internal failures are logged where they are handled, never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use chiron_auth::{AuthError, VerifyError};
use chiron_store::StoreError;

/// An error answered to an HTTP client as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No bearer token was presented.
    #[error("a bearer token is required")]
    Unauthenticated,
    /// The token is not valid here.
    #[error("the bearer token is invalid, expired or revoked")]
    InvalidToken,
    /// The token lacks a scope.
    #[error("the bearer token lacks the {0} scope")]
    InsufficientScope(&'static str),
    /// The named object does not exist (or the caller may not see it).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The object already exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The route exists, not with this method.
    #[error("this route does not serve that method (see the Allow header)")]
    MethodNotAllowed,
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    BadRequest(String),
    /// Storage is unreachable.
    #[error("storage is unavailable")]
    Unavailable,
    /// Anything else; logged, not described.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut response = (self.status(), Json(body)).into_response();
        let challenge = match &self {
            Self::Unauthenticated => Some("Bearer".to_owned()),
            Self::InvalidToken => Some(r#"Bearer error="invalid_token""#.to_owned()),
            Self::InsufficientScope(scope) => Some(format!(
                r#"Bearer error="insufficient_scope", scope="{scope}""#
            )),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(what),
            StoreError::Database(ref inner) if is_unreachable(inner) => {
                tracing::warn!(error = %err, "storage unavailable");
                Self::Unavailable
            }
            other => {
                tracing::error!(error = %other, "storage error");
                Self::Internal
            }
        }
    }
}

fn is_unreachable(err: &chiron_store::SqlxError) -> bool {
    use chiron_store::SqlxError;
    matches!(
        err,
        SqlxError::PoolTimedOut | SqlxError::Io(_) | SqlxError::PoolClosed
    )
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::PrincipalNotFound => Self::NotFound("principal"),
            AuthError::TokenNotFound => Self::NotFound("token"),
            AuthError::PrincipalDisabled => Self::BadRequest("principal is disabled".into()),
            AuthError::BadTtl { .. } | AuthError::NoScopes => Self::BadRequest(err.to_string()),
            AuthError::Store(inner) => inner.into(),
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(err: VerifyError) -> Self {
        match err {
            VerifyError::Invalid(_) => Self::InvalidToken,
            VerifyError::InsufficientScope(scope) => Self::InsufficientScope(scope.as_str()),
            VerifyError::Unavailable(inner) => {
                tracing::warn!(error = %inner, "token verification failed closed");
                Self::Unavailable
            }
        }
    }
}
