//! Graceful shutdown over a real socket: after the signal the server finishes the request in
//! flight and then returns; its HTTP threads end when stopped.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use chiron_store::testing::store;
use chiron_store::Backend;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::support::{serve_on_two_threads, Served, TestApp};

/// A server on two HTTP threads with the app's routes plus `extra`, and its database.
async fn serve_with(extra: Router, grace: Duration) -> (Served, chiron_store::testing::TestDb) {
    let (db_store, db) = store(Backend::Sqlite).await;
    let app = TestApp::new(db_store);
    let app_router = chiron_server::router(app.state.clone()).merge(extra);
    (serve_on_two_threads(app_router, grace).await, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    // The slow handler reports that it started, then waits until the test releases it.
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = std::sync::Arc::new(Mutex::new(Some(release_rx)));
    let slow = Router::new().route(
        "/slow",
        get(move || {
            let started_tx = started_tx.clone();
            let release_rx = release_rx.clone();
            async move {
                started_tx.send(()).await.unwrap();
                let rx = release_rx.lock().await.take().unwrap();
                rx.await.unwrap();
                "finished"
            }
        }),
    );
    let (served, _db) = serve_with(slow, Duration::from_secs(30)).await;

    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(client.get(format!("http://{}/slow", served.addr)).send());
    started_rx.recv().await.unwrap();

    served.stop.send(()).unwrap();
    // Shutdown has begun but must wait for the request in flight.
    assert!(!served.server.is_finished());
    release_tx.send(()).unwrap();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    let threads = served.server.await.unwrap().unwrap();
    threads.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_after_the_grace_period_ends_requests_still_running() {
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let stuck = Router::new().route(
        "/stuck",
        get(move || {
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(()).await.unwrap();
                std::future::pending::<()>().await;
                "never"
            }
        }),
    );
    let (served, _db) = serve_with(stuck, Duration::from_millis(50)).await;
    let url = format!("http://{}/stuck", served.addr);
    let in_flight = tokio::spawn(reqwest::Client::new().get(url).send());
    started_rx.recv().await.unwrap();

    served.stop.send(()).unwrap();
    // Serving returns once the grace period is over, with the request still running; stopping
    // the threads ends it instead of waiting for it forever.
    let threads = served.server.await.unwrap().unwrap();
    threads.stop().await;
    assert!(in_flight.await.unwrap().is_err());
}
