//! The interface between the tool catalog and the runners: run one `command`-kind tool call,
//! or call a tool of a warm `mcp-stdio` server, inside a principal's runner. The catalog
//! validates and audits; a [`ToolRunner`] only runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use chiron_core::PrincipalId;
use chiron_tools::ToolPackage;

/// One call of a `command` tool.
#[derive(Debug, Clone)]
pub struct CommandCall {
    /// Whose runner runs it.
    pub principal: PrincipalId,
    /// The package the tool belongs to.
    pub package: Arc<ToolPackage>,
    /// The tool's name within the package (what `{"tool"}` on stdin carries).
    pub tool: String,
    /// Validated arguments (`{"arguments"}` on stdin).
    pub arguments: Value,
    /// The call's timeout; the whole process group is killed when it passes.
    pub timeout: Duration,
    /// The call id, for the runner's proxy credential and the egress audit.
    pub call_id: String,
}

/// What a finished tool process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Exit status; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Everything written to stdout (bounded by the runner).
    pub stdout: Vec<u8>,
    /// The last lines of stderr.
    pub stderr_tail: String,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// The runner that ran it.
    pub runner_id: String,
}

/// One call of a tool of an `mcp-stdio` package.
#[derive(Debug, Clone)]
pub struct StdioCall {
    /// Whose runner runs it.
    pub principal: PrincipalId,
    /// The package (its server is started in the runner if it is not running).
    pub package: Arc<ToolPackage>,
    /// The tool's name as the server knows it (without the package prefix).
    pub tool: String,
    /// Validated arguments.
    pub arguments: serde_json::Map<String, Value>,
    /// The call's timeout; a server that passes it is stopped and started afresh next time.
    pub timeout: Duration,
    /// The call id, for the egress audit.
    pub call_id: String,
}

/// What an `mcp-stdio` call produced.
#[derive(Debug, Clone)]
pub struct StdioOutcome {
    /// The server's result; `None` when the timeout passed.
    pub result: Option<rmcp::model::CallToolResult>,
    /// The runner that ran it.
    pub runner_id: String,
}

/// Why a call could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The runner died while the call was in flight.
    #[error("runner exited: {0}")]
    Exited(String),
    /// The runner's queue is full.
    #[error("too many calls in flight for this principal; try again shortly")]
    Busy,
    /// The runner could not be started.
    #[error("runner could not start: {0}")]
    Start(String),
    /// The package's `mcp-stdio` server could not be started or did not answer.
    #[error("tool server failed: {0}")]
    Server(String),
}

/// Runs tool calls in principals' runners.
#[async_trait]
pub trait ToolRunner: Send + Sync + 'static {
    /// Runs one `command` tool call to completion (or timeout).
    async fn run_command(&self, call: CommandCall) -> Result<CommandOutcome, RunnerError>;
    /// Calls a tool of the package's warm `mcp-stdio` server in the principal's runner.
    async fn call_stdio(&self, call: StdioCall) -> Result<StdioOutcome, RunnerError>;
}
