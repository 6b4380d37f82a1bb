//! Graceful shutdown over a real socket: after the signal the server finishes the request in
//! flight and then returns; its HTTP threads end when stopped.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use chiron_server::serve::HttpThreads;
use chiron_store::testing::store;
use chiron_store::Backend;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::support::TestApp;

/// A server on two HTTP threads with the app's routes plus `extra`, shutting down (with
/// `grace`) when the returned sender fires.
struct Served {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<HttpThreads>>,
    _db: chiron_store::testing::TestDb,
}

async fn serve_with(extra: Router, grace: Duration) -> Served {
    let (db_store, db) = store(Backend::Sqlite).await;
    let app = TestApp::new(db_store);
    let app_router = chiron_server::router(app.state.clone()).merge(extra);
    let listener = chiron_server::serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(chiron_server::serve::serve(
        listener,
        app_router,
        async move {
            let _ = stop_rx.await;
        },
        grace,
        2,
    ));
    Served {
        addr,
        stop,
        server,
        _db: db,
    }
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
    let served = serve_with(slow, Duration::from_secs(30)).await;

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
    let served = serve_with(stuck, Duration::from_millis(50)).await;
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
