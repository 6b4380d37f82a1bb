//! The axum app.

use axum::http::HeaderName;
use axum::routing::get;
use axum::{middleware, Router};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::{admin, health, metrics, AppState};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the app: routes plus the cross-cutting layers.
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::handler))
        .nest("/admin/api", admin::routes())
        .merge(state.mcp.router().with_state::<AppState>(()));
    if let Some(slack) = &state.slack {
        routes = routes.nest_service("/slack", slack.clone());
    }
    let routes = routes
        // Runs inside routing, so the matched route template is known.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ));

    // Outermost first: give the request an id (keeping one the client sent), open a span that
    // carries it, then copy the id onto the response.
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID));

    routes.layer(layers).with_state(state)
}
