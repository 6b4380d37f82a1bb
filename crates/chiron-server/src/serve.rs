//! Running the HTTP server: bind with TCP_NODELAY, serve until the shutdown future resolves,
//! then stop accepting and drain in-flight requests for up to the grace period.
//!
//! The server runs on its own threads, each with a single-threaded runtime accepting from the
//! same listening socket. A connection, and every task its requests spawn (rmcp's per-request
//! service, a runner started by a call and its pipes), stays on the thread that serves it.
//! On the work-stealing runtime each of those spawns woke the other, idle worker, which cost
//! more CPU than the request itself (see ARCHITECTURE.md, "Hot path").
//!
//! A new connection goes to the thread that already serves its peer's other connections
//! ([`Steering`]): an MCP session client holds one connection for its event stream and posts
//! on another, and the session's rmcp worker lives on the thread of the first. Requests that
//! arrive on another thread cross to the worker and back on every call.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
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
    let (steering, handed) = Steering::new(threads.max(1));
    for (index, handed) in handed.into_iter().enumerate() {
        let (app, draining, finished) = (app.clone(), draining.clone(), finished.clone());
        let (done, done_rx) = oneshot::channel::<std::io::Result<()>>();
        drained.push(done_rx);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Each thread's own registration of the shared listening socket, with its runtime.
        let listener = SteeredListener {
            listener: {
                let _entered = runtime.enter();
                TcpListener::from_std(listener.try_clone()?)?
            },
            index,
            steering: steering.clone(),
            handed,
        };
        let thread = std::thread::Builder::new()
            .name(format!("chiron-http-{index}"))
            .spawn(move || {
                runtime.spawn(pacemaker());
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

/// One HTTP thread's server.
async fn serve_one(
    listener: SteeredListener,
    app: Router,
    draining: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(draining.cancelled_owned())
        .await
}

/// How many more open connections than the accepting thread a peer's thread may have and
/// still get the peer's new connections. Past that (many connections from one address, as
/// behind a reverse proxy), new connections stay where they were accepted, so one address
/// cannot pile every connection onto one thread.
const STEERING_SLACK: usize = 16;

/// How far ahead an HTTP thread's runtime always has a timer due (see [`pacemaker`]).
const PACEMAKER: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`PACEMAKER`] on an HTTP thread's runtime. Tokio wakes a runtime's
/// driver (a write to its eventfd, then one more `epoll_wait`) whenever a new timer falls due
/// before the driver's next planned wake-up, even on the driver's own thread; with no timer
/// pending that was every timer, so every tool call (its timeout) and every session response
/// (its stream's keep-alive) paid two system calls for nothing. Those timers are all longer
/// than this one, which costs one wake-up a second.
async fn pacemaker() {
    let mut tick = tokio::time::interval(PACEMAKER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// A connection on its way to the thread that serves its peer.
type Handoff = (std::net::TcpStream, SocketAddr, Placed);

/// Which HTTP thread serves which peer addresses, by open connections.
struct Steering {
    state: Mutex<SteeringState>,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
}

#[derive(Default)]
struct SteeringState {
    /// Open connections per thread.
    open: Vec<usize>,
    /// Per peer address: the thread serving it and its open connections there.
    peers: HashMap<IpAddr, (usize, usize)>,
}

impl Steering {
    fn new(threads: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (handoff, handed) = (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let steering = Self {
            state: Mutex::new(SteeringState {
                open: vec![0; threads],
                peers: HashMap::new(),
            }),
            handoff,
        };
        (Arc::new(steering), handed)
    }

    /// Chooses the thread for a new connection from `peer` accepted on thread `here`, and
    /// counts it there until the returned [`Placed`] is dropped.
    fn place(self: &Arc<Self>, here: usize, peer: IpAddr) -> Placed {
        let mut state = self.state.lock().expect("invariant: steering lock");
        let thread = match state.peers.get(&peer) {
            Some(&(thread, _)) if state.open[thread] <= state.open[here] + STEERING_SLACK => thread,
            _ => here,
        };
        state.open[thread] += 1;
        let entry = state.peers.entry(peer).or_insert((thread, 0));
        let with_peer = entry.0 == thread;
        if with_peer {
            entry.1 += 1;
        }
        Placed {
            steering: self.clone(),
            thread,
            peer,
            with_peer,
        }
    }
}

/// One open connection as [`Steering`] counts it.
struct Placed {
    steering: Arc<Steering>,
    thread: usize,
    peer: IpAddr,
    /// Counted in its peer's entry (it went to the peer's thread).
    with_peer: bool,
}

impl Drop for Placed {
    fn drop(&mut self) {
        let mut state = self
            .steering
            .state
            .lock()
            .expect("invariant: steering lock");
        state.open[self.thread] -= 1;
        if self.with_peer {
            if let Some(entry) = state.peers.get_mut(&self.peer) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    state.peers.remove(&self.peer);
                }
            }
        }
    }
}

/// One HTTP thread's listener: accepts from the shared socket, passes connections whose peer
/// is served elsewhere to that thread, and takes those passed to it.
struct SteeredListener {
    listener: TcpListener,
    index: usize,
    steering: Arc<Steering>,
    handed: mpsc::UnboundedReceiver<Handoff>,
}

impl axum::serve::Listener for SteeredListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            let (stream, peer, placed) = tokio::select! {
                Some((stream, peer, placed)) = self.handed.recv() => {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => (stream, peer, placed),
                        Err(err) => {
                            tracing::debug!(error = %err, "could not take over a connection");
                            continue;
                        }
                    }
                }
                (stream, peer) = axum::serve::Listener::accept(&mut self.listener) => {
                    let placed = self.steering.place(self.index, peer.ip());
                    if placed.thread != self.index {
                        let thread = placed.thread;
                        // A connection that cannot be passed on (its thread is ending) closes.
                        if let Ok(stream) = stream.into_std() {
                            let _ = self.steering.handoff[thread].send((stream, peer, placed));
                        }
                        continue;
                    }
                    (stream, peer, placed)
                }
            };
            // Session-mode MCP writes SSE frames in pieces; without TCP_NODELAY Nagle's
            // algorithm delays them by tens of milliseconds.
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY");
            }
            let connection = Connection {
                stream,
                _placed: placed,
            };
            return (connection, peer);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection, counted by [`Steering`] while it is open.
pub struct Connection {
    stream: TcpStream,
    _placed: Placed,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_peer_s_connections_go_to_the_thread_serving_it() {
        let (steering, _handed) = Steering::new(2);
        let first = steering.place(0, ip(1));
        assert_eq!(first.thread, 0);
        // Accepted on the other thread, it joins the first.
        let second = steering.place(1, ip(1));
        assert_eq!(second.thread, 0);
        // Another peer stays where it was accepted.
        let other = steering.place(1, ip(2));
        assert_eq!(other.thread, 1);
        // Once all of a peer's connections are closed, it is placed afresh.
        drop((first, second));
        assert_eq!(steering.place(1, ip(1)).thread, 1);
        let state = steering.state.lock().unwrap();
        assert_eq!(
            state.open,
            [0, 1],
            "closed connections are no longer counted"
        );
        assert_eq!(state.peers.len(), 1);
    }

    #[test]
    fn one_address_cannot_pile_every_connection_onto_one_thread() {
        let (steering, _handed) = Steering::new(2);
        let mut placed: Vec<Placed> = (0..=STEERING_SLACK)
            .map(|_| steering.place(1, ip(9)))
            .collect();
        assert!(placed.iter().all(|p| p.thread == 1));
        // Thread 1 now holds more than the slack over thread 0: new connections from the
        // same address stay where they are accepted, uncounted in the peer's entry.
        let overflow = steering.place(0, ip(9));
        assert_eq!(overflow.thread, 0);
        assert!(!overflow.with_peer);
        drop(overflow);
        placed.clear();
        let state = steering.state.lock().unwrap();
        assert_eq!(state.open, [0, 0]);
        assert!(state.peers.is_empty());
    }
}
