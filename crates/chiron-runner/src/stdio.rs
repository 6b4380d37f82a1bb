//! A warm `mcp-stdio` server inside a runner, seen from the gateway: the agent started it and
//! handed over its pipes (see [`crate::control`]); the gateway speaks MCP to it directly over
//! them with the rmcp client, so a call crosses no extra process. Initialised once, kept while
//! it lives; the runner starts a new one when it has died.

use std::collections::HashSet;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, JsonObject, JsonRpcMessage,
    JsonRpcResponse, JsonRpcVersion2_0, RequestId, ServerPeerInfo, ServerResult, Tool,
};
use rmcp::service::{RoleClient, RunningService, RxJsonRpcMessage, ServiceExt, TxJsonRpcMessage};
use rmcp::transport::async_rw::JsonRpcMessageCodec;
use rmcp::transport::Transport;
use tokio::io::AsyncBufReadExt;
use tokio::net::unix::pipe;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use crate::egress::CredentialGuard;

/// How long a server may take to answer `initialize`.
pub const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);

/// One running stdio MCP server.
///
/// Its pipes and rmcp's service loop are driven by one runtime: with one single-threaded
/// runtime per HTTP thread, that is one thread. A call that comes from another thread crosses
/// to it and back (two wake-ups of an idle thread, which cost more CPU than the call itself),
/// so the client follows its callers: after [`MOVE_AFTER`] calls in a row from another
/// runtime, the first of them that finds no call in flight moves the pipes there (the service
/// loop ends without closing them; a new one starts on them without a new `initialize`).
pub struct StdioServer {
    /// Its pid inside the sandbox (for the agent's `kill`).
    pub pid: i32,
    client: tokio::sync::RwLock<Client>,
    /// Calls in a row that came from a runtime other than the client's.
    away: AtomicU32,
    /// The server process's proxy credential, valid while it runs.
    _credential: Option<CredentialGuard>,
}

/// Calls in a row from another runtime after which the client moves there.
const MOVE_AFTER: u32 = 3;

/// The rmcp client of a server and where it runs.
struct Client {
    service: RunningService<RoleClient, ()>,
    /// The runtime that drives its pipes and service loop.
    runtime: tokio::runtime::Id,
    /// Set before the service loop is ended to move: its transport then hands its pipes here
    /// instead of closing them.
    moving: Arc<Mutex<Option<Released>>>,
}

impl Client {
    /// rmcp's client over `pipes`, on the current runtime: initialised (`peer` is `None`), or
    /// taking over a server initialised before (`peer` is its answer to `initialize`).
    async fn start(pipes: Pipes, peer: Option<ServerPeerInfo>) -> Result<Self, String> {
        let moving = pipes.moving.clone();
        let service = match peer {
            Some(peer) => rmcp::service::serve_directly((), pipes, Some(peer)),
            None => tokio::time::timeout(INITIALIZE_TIMEOUT, ().serve(pipes))
                .await
                .map_err(|_| "the server did not answer initialize in time".to_owned())?
                .map_err(|e| format!("initialize failed: {e}"))?,
        };
        Ok(Self {
            service,
            runtime: tokio::runtime::Handle::current().id(),
            moving,
        })
    }

    /// Moves the client to the current runtime. With no call in flight (the caller holds the
    /// only lock), the old service loop is ended, its pipes taken over, and a new loop started
    /// here. When the pipes are gone (the server exited meanwhile), the client stays closed
    /// and the runner starts the server again on the next call.
    async fn move_here(&mut self) -> Result<(), String> {
        let peer = self.service.peer().peer_info().map(|info| (*info).clone());
        *self
            .moving
            .lock()
            .expect("invariant: the move slot lock is never poisoned") = Some(Released::Pending);
        let _ = self.service.close().await;
        let released = self
            .moving
            .lock()
            .expect("invariant: the move slot lock is never poisoned")
            .take();
        let Some(Released::Pipes {
            reader,
            writer,
            buffered,
        }) = released
        else {
            return Err("the server's pipes closed while its client moved".into());
        };
        let pipe_err = |e: std::io::Error| format!("server pipes: {e}");
        let reader = pipe::Receiver::from_owned_fd(reader).map_err(pipe_err)?;
        let writer = pipe::Sender::from_owned_fd(writer).map_err(pipe_err)?;
        let mut pipes = Pipes::new(reader, writer);
        if let Some(lines) = pipes.lines.as_mut() {
            lines.read_buffer_mut().extend_from_slice(&buffered);
        }
        *self = Client::start(pipes, peer).await?;
        Ok(())
    }
}

impl StdioServer {
    /// Speaks MCP over the server's `[stdin, stdout, stderr]` and initialises it. Its stderr
    /// goes to the gateway's log at debug level, labelled with `label`.
    pub async fn connect(
        pid: i32,
        fds: Vec<OwnedFd>,
        label: String,
        credential: Option<CredentialGuard>,
    ) -> Result<Self, String> {
        let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
            .try_into()
            .map_err(|_| "the agent sent the wrong number of pipes".to_owned())?;
        let pipe_err = |e: std::io::Error| format!("server pipes: {e}");
        let writer = pipe::Sender::from_owned_fd(stdin).map_err(pipe_err)?;
        let reader = pipe::Receiver::from_owned_fd(stdout).map_err(pipe_err)?;
        let errors = pipe::Receiver::from_owned_fd(stderr).map_err(pipe_err)?;
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(errors).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %label, message = %line, "mcp-stdio server");
            }
        });
        let client = Client::start(Pipes::new(reader, writer), None).await?;
        Ok(Self {
            pid,
            client: tokio::sync::RwLock::new(client),
            away: AtomicU32::new(0),
            _credential: credential,
        })
    }

    /// Whether the server is still connected.
    pub fn is_alive(&self) -> bool {
        // Locked for writing only while the client moves.
        self.client
            .try_read()
            .map_or(true, |client| !client.service.is_closed())
    }

    /// The client, moved to the caller's runtime first when calls keep coming from there and
    /// none is in flight.
    async fn client(&self) -> tokio::sync::RwLockReadGuard<'_, Client> {
        let here = tokio::runtime::Handle::current().id();
        let client = self.client.read().await;
        if client.runtime == here {
            self.away.store(0, Ordering::Relaxed);
            return client;
        }
        if self.away.fetch_add(1, Ordering::Relaxed) + 1 < MOVE_AFTER {
            return client;
        }
        drop(client);
        match self.client.try_write() {
            Ok(mut client) => {
                if client.runtime != here {
                    if let Err(err) = client.move_here().await {
                        tracing::warn!(pid = self.pid, error = %err, "mcp-stdio client could not move");
                    }
                }
                self.away.store(0, Ordering::Relaxed);
                client.downgrade()
            }
            // A call is in flight (or another caller moves it): stay for now.
            Err(_) => self.client.read().await,
        }
    }

    /// Every tool the server offers.
    pub async fn list_tools(&self) -> Result<Vec<Tool>, String> {
        self.client()
            .await
            .service
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))
    }

    /// Calls one tool. `Ok(None)` means the timeout passed.
    pub async fn call(
        &self,
        tool: &str,
        arguments: JsonObject,
        timeout: Duration,
    ) -> Result<Option<CallToolResult>, String> {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let client = self.client().await;
        match tokio::time::timeout(timeout, client.service.peer().call_tool(params)).await {
            Ok(Ok(result)) => Ok(Some(result)),
            Ok(Err(err)) => Err(format!("tools/call failed: {err}")),
            Err(_) => Ok(None),
        }
    }

    /// The runtime that drives the client now (tests).
    #[cfg(test)]
    async fn runtime(&self) -> tokio::runtime::Id {
        self.client.read().await.runtime
    }
}

/// A client's pipes, handed over by its transport when the client moves.
enum Released {
    /// The move started; the transport has not closed yet.
    Pending,
    /// Still registered with no runtime; `buffered` was read and not yet parsed.
    Pipes {
        reader: OwnedFd,
        writer: OwnedFd,
        buffered: Vec<u8>,
    },
}

/// The longest line (one JSON-RPC message) read from a server, as rmcp's stdio transport.
const MAX_LINE: usize = 16 * 1024 * 1024;

type Writer = FramedWrite<pipe::Sender, JsonRpcMessageCodec<TxJsonRpcMessage<RoleClient>>>;

/// A warm server's pipes as an rmcp transport: JSON-RPC messages one per line, written with
/// rmcp's codec and read as rmcp reads them, except the answer to a `tools/call` this
/// transport sent, whose result is read directly as a [`CallToolResult`]. rmcp's
/// `ServerResult` is an untagged union in which `CallToolResult` is the sixteenth variant, so
/// its general parse first fails on fifteen other result types, each failure building an
/// error message: 6% of the gateway's CPU per warm call.
struct Pipes {
    /// `None` once handed over to a moving client.
    lines: Option<FramedRead<pipe::Receiver, LinesCodec>>,
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    /// Ids of the `tools/call` requests sent and not answered yet.
    calls: Arc<Mutex<HashSet<RequestId>>>,
    /// [`Released::Pending`] when the client moves: closing hands the pipes over.
    moving: Arc<Mutex<Option<Released>>>,
}

impl Pipes {
    fn new(reader: pipe::Receiver, writer: pipe::Sender) -> Self {
        Self {
            lines: Some(FramedRead::new(
                reader,
                LinesCodec::new_with_max_length(MAX_LINE),
            )),
            writer: Arc::new(tokio::sync::Mutex::new(Some(FramedWrite::new(
                writer,
                JsonRpcMessageCodec::default(),
            )))),
            calls: Arc::default(),
            moving: Arc::default(),
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashSet<RequestId>> {
        self.calls
            .lock()
            .expect("invariant: the pending calls lock is never poisoned")
    }

    /// `line` as the answer to a pending `tools/call`, if it is one.
    fn call_result(&self, line: &str) -> Option<RxJsonRpcMessage<RoleClient>> {
        /// The keys that make a line a response (no `method`, no `error`).
        #[derive(serde::Deserialize)]
        struct Response<'a> {
            id: RequestId,
            #[serde(borrow)]
            result: &'a serde_json::value::RawValue,
            method: Option<serde::de::IgnoredAny>,
            error: Option<serde::de::IgnoredAny>,
        }
        let response: Response<'_> = serde_json::from_str(line).ok()?;
        if response.method.is_some() || response.error.is_some() {
            return None;
        }
        if !self.calls().contains(&response.id) {
            return None;
        }
        let result: CallToolResult = serde_json::from_str(response.result.get()).ok()?;
        self.calls().remove(&response.id);
        Some(JsonRpcMessage::Response(JsonRpcResponse {
            jsonrpc: JsonRpcVersion2_0,
            id: response.id,
            result: ServerResult::CallToolResult(result),
        }))
    }
}

impl Transport<RoleClient> for Pipes {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        if let JsonRpcMessage::Request(request) = &item {
            if matches!(request.request, ClientRequest::CallToolRequest(_)) {
                self.calls().insert(request.id.clone());
            }
        }
        let writer = self.writer.clone();
        async move {
            match writer.lock().await.as_mut() {
                Some(writer) => writer.send(item).await.map_err(std::io::Error::from),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the server's pipes are closed",
                )),
            }
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let line = match self.lines.as_mut()?.next().await? {
                Ok(line) => line,
                Err(err) => {
                    tracing::warn!(error = %err, "mcp-stdio server output unreadable");
                    return None;
                }
            };
            let line = line.trim_start_matches('\u{feff}').trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(message) = self.call_result(line) {
                return Some(message);
            }
            match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(line) {
                Ok(message) => {
                    let answered = match &message {
                        JsonRpcMessage::Response(response) => Some(&response.id),
                        JsonRpcMessage::Error(error) => error.id.as_ref(),
                        _ => None,
                    };
                    if let Some(id) = answered {
                        self.calls().remove(id);
                    }
                    return Some(message);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "mcp-stdio server sent a line that is not a message");
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        let writer = self.writer.lock().await.take();
        let mut moving = self
            .moving
            .lock()
            .expect("invariant: the move slot lock is never poisoned");
        if matches!(*moving, Some(Released::Pending)) {
            if let (Some(lines), Some(writer)) = (self.lines.take(), writer) {
                let buffered = lines.read_buffer().to_vec();
                *moving = Some(Released::Pipes {
                    reader: lines.into_inner().into_nonblocking_fd()?,
                    writer: writer.into_inner().into_nonblocking_fd()?,
                    buffered,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A scripted server on the far ends of the pipes: answers `initialize`; for `tools/call`
    /// of `echo` sends a notification and a stray non-JSON line before the result; answers
    /// `fail` with a JSON-RPC error.
    fn scripted_server(requests: std::io::PipeReader, mut replies: std::io::PipeWriter) {
        let mut lines = std::io::BufReader::new(requests).lines();
        while let Some(Ok(line)) = lines.next() {
            let message: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = message["id"].clone();
            let answer = match message["method"].as_str() {
                Some("initialize") => serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": message["params"]["protocolVersion"],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "scripted", "version": "1"}
                }}),
                Some("tools/call") if message["params"]["name"] == "echo" => {
                    let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/message",
                        "params": {"level": "info", "data": "working"}});
                    writeln!(replies, "{note}\nnot json at all").unwrap();
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                        "content": [{"type": "text", "text": message["params"]["arguments"]["text"]}],
                        "isError": false
                    }})
                }
                Some("tools/call") => serde_json::json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32602, "message": "no such tool"}}),
                _ => continue,
            };
            writeln!(replies, "{answer}").unwrap();
        }
    }

    /// A server connected to the scripted one, and the thread that runs the script.
    async fn scripted() -> (StdioServer, std::thread::JoinHandle<()>) {
        let (stdin_read, stdin_write) = std::io::pipe().unwrap();
        let (stdout_read, stdout_write) = std::io::pipe().unwrap();
        let (stderr_read, stderr_write) = std::io::pipe().unwrap();
        let script = std::thread::spawn(move || {
            let _stderr = stderr_write;
            scripted_server(stdin_read, stdout_write);
        });
        let server = StdioServer::connect(
            1,
            vec![stdin_write.into(), stdout_read.into(), stderr_read.into()],
            "scripted".into(),
            None,
        )
        .await
        .unwrap();
        (server, script)
    }

    const LONG: Duration = Duration::from_secs(600);

    /// Calls `echo` with `text` and returns what came back.
    async fn echo(server: &StdioServer, text: &str) -> String {
        let mut arguments = JsonObject::new();
        arguments.insert("text".into(), text.into());
        let result = server.call("echo", arguments, LONG).await.unwrap().unwrap();
        assert_eq!(result.is_error, Some(false));
        let content = serde_json::to_value(&result.content).unwrap();
        content[0]["text"].as_str().unwrap().to_owned()
    }

    /// Closing the client closes the server's stdin, which ends the script.
    async fn finish(server: StdioServer, script: std::thread::JoinHandle<()>) {
        drop(server);
        tokio::task::spawn_blocking(move || script.join().unwrap())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn tool_results_errors_and_stray_lines_from_a_server() {
        let (server, script) = scripted().await;
        for text in ["one", "two"] {
            assert_eq!(echo(&server, text).await, text);
        }
        let failed = server.call("fail", JsonObject::new(), LONG).await;
        assert!(failed.unwrap_err().contains("no such tool"));
        assert!(server.is_alive());
        finish(server, script).await;
    }

    #[tokio::test]
    async fn the_client_follows_its_callers_to_another_runtime_and_back() {
        let (server, script) = scripted().await;
        let server = Arc::new(server);
        let here = tokio::runtime::Handle::current().id();
        assert_eq!(server.runtime().await, here);
        let other = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The first calls from the other runtime cross over; then the client moves there.
        for n in 0..MOVE_AFTER + 2 {
            let caller = server.clone();
            let text = format!("over {n}");
            let echoed = other
                .spawn(async move { echo(&caller, &text).await })
                .await
                .unwrap();
            assert_eq!(echoed, format!("over {n}"));
        }
        assert_eq!(server.runtime().await, other.handle().id());
        // Calls from here bring it back, with nothing lost on the way.
        for n in 0..MOVE_AFTER + 2 {
            assert_eq!(
                echo(&server, &format!("back {n}")).await,
                format!("back {n}")
            );
        }
        assert_eq!(server.runtime().await, here);
        assert!(server.is_alive());
        let server = Arc::into_inner(server).unwrap();
        finish(server, script).await;
        other.shutdown_background();
    }
}
