//! A warm `mcp-stdio` server inside a runner, seen from the gateway: the agent started it and
//! handed over its pipes (see [`crate::control`]); the gateway speaks MCP to it directly over
//! them with the rmcp client, so a call crosses no extra process. Initialised once, kept while
//! it lives; the runner starts a new one when it has died.

use std::collections::HashSet;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, JsonObject, JsonRpcMessage,
    JsonRpcResponse, JsonRpcVersion2_0, RequestId, ServerResult, Tool,
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
pub struct StdioServer {
    /// Its pid inside the sandbox (for the agent's `kill`).
    pub pid: i32,
    client: RunningService<RoleClient, ()>,
    /// The server process's proxy credential, valid while it runs.
    _credential: Option<CredentialGuard>,
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
        let writer = tokio::net::unix::pipe::Sender::from_owned_fd(stdin).map_err(pipe_err)?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).map_err(pipe_err)?;
        let errors = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr).map_err(pipe_err)?;
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(errors).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %label, message = %line, "mcp-stdio server");
            }
        });
        let client = tokio::time::timeout(INITIALIZE_TIMEOUT, ().serve(Pipes::new(reader, writer)))
            .await
            .map_err(|_| "the server did not answer initialize in time".to_owned())?
            .map_err(|e| format!("initialize failed: {e}"))?;
        Ok(Self {
            pid,
            client,
            _credential: credential,
        })
    }

    /// Whether the server is still connected.
    pub fn is_alive(&self) -> bool {
        !self.client.is_closed()
    }

    /// Every tool the server offers.
    pub async fn list_tools(&self) -> Result<Vec<Tool>, String> {
        self.client
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
        match tokio::time::timeout(timeout, self.client.peer().call_tool(params)).await {
            Ok(Ok(result)) => Ok(Some(result)),
            Ok(Err(err)) => Err(format!("tools/call failed: {err}")),
            Err(_) => Ok(None),
        }
    }
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
    lines: FramedRead<pipe::Receiver, LinesCodec>,
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    /// Ids of the `tools/call` requests sent and not answered yet.
    calls: Arc<Mutex<HashSet<RequestId>>>,
}

impl Pipes {
    fn new(reader: pipe::Receiver, writer: pipe::Sender) -> Self {
        Self {
            lines: FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE)),
            writer: Arc::new(tokio::sync::Mutex::new(Some(FramedWrite::new(
                writer,
                JsonRpcMessageCodec::default(),
            )))),
            calls: Arc::default(),
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
            let line = match self.lines.next().await? {
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
        self.writer.lock().await.take();
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

    #[tokio::test]
    async fn tool_results_errors_and_stray_lines_from_a_server() {
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
        let long = Duration::from_secs(600);
        for text in ["one", "two"] {
            let mut arguments = JsonObject::new();
            arguments.insert("text".into(), text.into());
            let result = server.call("echo", arguments, long).await.unwrap().unwrap();
            assert_eq!(result.is_error, Some(false));
            let content = serde_json::to_value(&result.content).unwrap();
            assert_eq!(content[0]["text"], text);
        }
        let failed = server.call("fail", JsonObject::new(), long).await;
        assert!(failed.unwrap_err().contains("no such tool"));
        assert!(server.is_alive());
        // Closing the client closes the server's stdin, which ends the script.
        drop(server);
        tokio::task::spawn_blocking(move || script.join().unwrap())
            .await
            .unwrap();
    }
}
