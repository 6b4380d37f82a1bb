//! Per-principal tool runners. This crate will own the runner pool and the local namespace
//! sandbox; today it holds [`tool::ToolRunner`], the interface through which the catalog runs
//! a `command` tool call in a principal's runner, and [`host`], which probes what the host
//! offers a sandbox (user namespaces, Landlock, cgroups) so `chiron doctor` can report it and
//! the local backend can pick its limits mechanism.

pub mod host;
pub mod tool;

pub use tool::{CommandCall, CommandOutcome, RunnerError, ToolRunner};
