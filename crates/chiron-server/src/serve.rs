//! Running the HTTP server: bind with TCP_NODELAY, serve until the shutdown future resolves,
//! then stop accepting and drain in-flight requests for up to the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: new connections are
/// refused, in-flight requests finish, idle keep-alive connections close. Returns once drained
/// or after `grace`, whichever comes first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    // Session-mode MCP writes SSE frames in pieces; without TCP_NODELAY Nagle's algorithm
    // delays them by tens of milliseconds.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    let draining = CancellationToken::new();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(draining.clone().cancelled_owned());
    let server = tokio::spawn(async move { server.await });
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    draining.cancel();
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!(grace = ?grace, "in-flight requests still running after the grace period");
            Ok(())
        }
    }
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
