//! Graceful shutdown over a real socket: after the signal the server finishes the request in
//! flight and then returns; its HTTP threads end when stopped.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use chiron_store::testing::store;
use chiron_store::Backend;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let (db_store, _db) = store(Backend::Sqlite).await;
    let app = TestApp::new(db_store);

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
    let app_router = chiron_server::router(app.state.clone()).merge(slow);

    let listener = chiron_server::serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(chiron_server::serve::serve(
        listener,
        app_router,
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_secs(30),
        2,
    ));

    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(client.get(format!("http://{addr}/slow")).send());
    started_rx.recv().await.unwrap();

    stop_tx.send(()).unwrap();
    // Shutdown has begun but must wait for the request in flight.
    assert!(!server.is_finished());
    release_tx.send(()).unwrap();

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    let threads = server.await.unwrap().unwrap();
    threads.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_after_the_grace_period_ends_requests_still_running() {
    let (db_store, _db) = store(Backend::Sqlite).await;
    let app = TestApp::new(db_store);
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
    let app_router = chiron_server::router(app.state.clone()).merge(stuck);
    let listener = chiron_server::serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(chiron_server::serve::serve(
        listener,
        app_router,
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_millis(50),
        2,
    ));
    let in_flight = tokio::spawn(
        reqwest::Client::new()
            .get(format!("http://{addr}/stuck"))
            .send(),
    );
    started_rx.recv().await.unwrap();

    stop_tx.send(()).unwrap();
    // Serving returns once the grace period is over, with the request still running; stopping
    // the threads ends it instead of waiting for it forever.
    let threads = server.await.unwrap().unwrap();
    threads.stop().await;
    assert!(in_flight.await.unwrap().is_err());
}
