//! `/readyz` follows PostgreSQL reachability without a restart. The database is reached
//! through a TCP proxy that the test cuts and restores; the shared server is never stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chiron_core::Config;
use chiron_store::testing::{postgres_skipped, TestDb};
use chiron_store::{Backend, ConnectOptions, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::support::TestApp;

/// Forwards connections to `upstream` while enabled; `cut` drops every live connection and
/// refuses new ones until `restore`.
struct CuttableProxy {
    port: u16,
    enabled: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (on, conns) = (enabled.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !on.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            enabled,
            connections,
        }
    }

    fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

async fn readyz_until(app: &TestApp, wanted: StatusCode) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get("/readyz", None).await;
        if reply.status == wanted {
            return reply.json();
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed {} ({})",
            reply.status,
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_postgres_is_unreachable_and_recovers() {
    if postgres_skipped() {
        return;
    }
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let mut parsed = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let proxy = CuttableProxy::start(upstream).await;
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(proxy.port)).unwrap();

    let mut config = Config::default();
    config.database.acquire_timeout = Duration::from_millis(500);
    let store = Store::open(&ConnectOptions {
        url: parsed.to_string(),
        max_connections: 2,
        acquire_timeout: config.database.acquire_timeout,
    })
    .await
    .unwrap();
    let app = TestApp::with_config(store, config);

    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    proxy.cut();
    let down = readyz_until(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(down["status"], "unavailable");
    assert!(
        down["reason"].as_str().unwrap().contains("storage"),
        "{down}"
    );
    // Liveness does not depend on storage.
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);

    proxy.restore();
    let up = readyz_until(&app, StatusCode::OK).await;
    assert_eq!(up["status"], "ready");
}
