use axum::body::Body;
use axum::http::{Request, StatusCode};
use chiron_store::testing::store;
use chiron_store::Backend;

use crate::support::TestApp;

#[tokio::test]
async fn healthz_and_readyz_answer_with_request_ids() {
    let (store, _db) = store(Backend::Sqlite).await;
    let app = TestApp::new(store);
    let health = app.get("/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    let id = health.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID request id: {id}");

    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.headers.contains_key("x-request-id"));

    // A 404 and an error response carry an id too; a client-chosen id is kept.
    let missing = app.get("/nope", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.headers.contains_key("x-request-id"));
    let request = Request::get("/healthz")
        .header("x-request-id", "trace-me-42")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.send(request).await.headers["x-request-id"],
        "trace-me-42"
    );
}

#[tokio::test]
async fn metrics_count_the_routes_hit() {
    let (store, _db) = store(Backend::Sqlite).await;
    let app = TestApp::new(store);
    for _ in 0..3 {
        app.get("/healthz", None).await;
    }
    app.get("/readyz", None).await;
    app.get("/admin/api/principals", None).await;
    app.get("/definitely/not/here", None).await;

    let metrics = app.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text;
    assert!(
        text.contains(
            r#"chiron_http_requests_total{method="GET",route="/healthz",status="200"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"chiron_http_requests_total{method="GET",route="/readyz",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"chiron_http_requests_total{method="GET",route="/admin/api/principals",status="401"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"chiron_http_request_duration_seconds_count{method="GET",route="/healthz"} 3"#
        ),
        "{text}"
    );
}
