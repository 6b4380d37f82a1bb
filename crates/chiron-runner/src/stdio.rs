//! A warm `mcp-stdio` server inside a runner, seen from the gateway: the agent started it and
//! handed over its pipes (see [`crate::control`]); the gateway speaks MCP to it directly over
//! them with the rmcp client, so a call crosses no extra process. Initialised once, kept while
//! it lives; the runner starts a new one when it has died.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject, Tool};
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use tokio::io::AsyncBufReadExt;

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
        let client = tokio::time::timeout(INITIALIZE_TIMEOUT, ().serve((reader, writer)))
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
