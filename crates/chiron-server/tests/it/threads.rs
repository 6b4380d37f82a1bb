//! Connections from one peer are served on one HTTP thread, whichever thread accepted them.

use std::time::Duration;

use axum::routing::get;
use axum::Router;

use crate::support::serve_on_two_threads;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_connections_share_one_http_thread() {
    let app = Router::new().route(
        "/thread",
        get(|| async { std::thread::current().name().unwrap_or_default().to_owned() }),
    );
    let served = serve_on_two_threads(app, Duration::from_secs(5)).await;
    let addr = served.addr;
    // One client per connection, each kept (with its idle connection open) until the end. The
    // kernel spreads accepts over both threads; each later connection must still be served
    // where the first one is.
    let mut clients = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..12 {
        let client = reqwest::Client::new();
        let thread = client
            .get(format!("http://{addr}/thread"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        threads.push(thread);
        clients.push(client);
    }
    assert!(threads[0].starts_with("chiron-http-"), "{threads:?}");
    assert!(threads.iter().all(|t| *t == threads[0]), "{threads:?}");
    drop(clients);
    served.stop.send(()).unwrap();
    served.server.await.unwrap().unwrap().stop().await;
}
