//! Per-principal tool runners: [`pool::RunnerPool`] keeps one persistent runner per principal
//! over a [`pool::RunnerBackend`] (the local namespace sandbox backend is still to come);
//! [`tool::ToolRunner`] is the interface through which the catalog runs a `command` tool call
//! in a principal's runner; [`host`] which probes what the host
//! offers a sandbox (user namespaces, Landlock, cgroups) so `chiron doctor` can report it and
//! the local backend can pick its limits mechanism.

pub mod agent;
pub mod control;
pub mod egress;
pub mod host;
mod host_ids;
pub mod limits;
pub mod local;
pub mod pool;
pub mod stdio;
pub mod tool;

pub use pool::{PoolConfig, Runner, RunnerBackend, RunnerPool};
pub use tool::{CommandCall, CommandOutcome, RunnerError, StdioCall, StdioOutcome, ToolRunner};
