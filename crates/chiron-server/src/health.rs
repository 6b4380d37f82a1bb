//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: storage answers a query within the database acquire timeout. 503 with a
/// reason otherwise; it turns 200 again by itself when storage comes back.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let limit = state.config.database.acquire_timeout;
    let reason = match tokio::time::timeout(limit, state.store.ping()).await {
        Ok(Ok(())) => return (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(Err(err)) => format!("storage unreachable: {}", describe(&err)),
        Err(_) => format!(
            "storage did not answer within {}",
            humantime::format_duration(limit)
        ),
    };
    tracing::warn!(reason = %reason, "not ready");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "unavailable", "reason": reason })),
    )
}

/// The error with its causes, e.g. `database error: pool timed out while waiting for an open
/// connection`. sqlx's messages carry no credentials.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
