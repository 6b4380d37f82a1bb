//! Running the HTTP server: bind with TCP_NODELAY, serve until the shutdown future resolves,
//! then stop accepting and drain in-flight requests for up to the grace period.
//!
//! The server runs on its own threads, each with a single-threaded runtime accepting from the
//! same listening socket. A connection, and every task its requests spawn (rmcp's per-request
//! service, a runner started by a call and its pipes), stays on the thread that accepted it.
//! On the work-stealing runtime each of those spawns woke the other, idle worker, which cost
//! more CPU than the request itself (see ARCHITECTURE.md, "Hot path").

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The HTTP threads after draining. They keep driving what requests started on them (a
/// runner's pipes and its tasks) until [`HttpThreads::stop`], which comes after the runners
/// have stopped.
#[must_use = "the HTTP threads run until stopped"]
pub struct HttpThreads {
    draining: CancellationToken,
    finished: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HttpThreads {
    /// Ends the threads, with whatever still runs on them (requests past the grace period),
    /// and waits for them.
    pub async fn stop(mut self) {
        self.draining.cancel();
        self.finished.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for HttpThreads {
    fn drop(&mut self) {
        self.draining.cancel();
        self.finished.cancel();
    }
}

/// Serves `app` on `listener` with `threads` HTTP threads until `shutdown` resolves, then
/// drains: new connections are refused, in-flight requests finish, idle keep-alive connections
/// close. Returns once drained or after `grace`, whichever comes first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    threads: usize,
) -> std::io::Result<HttpThreads> {
    let listener = listener.into_std()?;
    let draining = CancellationToken::new();
    let finished = CancellationToken::new();
    let mut drained = Vec::new();
    let mut handles = HttpThreads {
        draining: draining.clone(),
        finished: finished.clone(),
        threads: Vec::new(),
    };
    for index in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let (app, draining, finished) = (app.clone(), draining.clone(), finished.clone());
        let (done, done_rx) = oneshot::channel::<std::io::Result<()>>();
        drained.push(done_rx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("chiron-http-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        served = serve_one(listener, app, draining) => {
                            let _ = done.send(served);
                            finished.cancelled().await;
                        }
                        // Stopped while requests still run (the grace period passed).
                        () = finished.cancelled() => {}
                    }
                });
                // Tasks still on this thread are dropped; a blocking call does not hold up
                // the exit.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        handles.threads.push(thread);
    }
    drop(listener);
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    draining.cancel();
    let all_drained = async {
        for done in drained {
            if let Ok(Err(err)) = done.await {
                return Err(err);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(grace, all_drained).await {
        Ok(result) => result?,
        Err(_) => {
            tracing::warn!(grace = ?grace, "in-flight requests still running after the grace period");
        }
    }
    Ok(handles)
}

/// One HTTP thread's server, on its own registration of the shared listening socket.
async fn serve_one(
    listener: std::net::TcpListener,
    app: Router,
    draining: CancellationToken,
) -> std::io::Result<()> {
    // Session-mode MCP writes SSE frames in pieces; without TCP_NODELAY Nagle's algorithm
    // delays them by tens of milliseconds.
    let listener = TcpListener::from_std(listener)?.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(draining.cancelled_owned())
        .await
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves on either.
/// Installing eagerly matters: a signal that arrives after the server reports it is ready but
/// before the future is first polled must still start a graceful shutdown.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
