//! Per-principal tool runners. This crate will own the `RunnerBackend` trait, the runner pool
//! and the local namespace sandbox; today it holds [`host`], which probes what the host
//! offers a sandbox (user namespaces, Landlock, cgroups) so `chiron doctor` can report it and
//! the local backend can pick its limits mechanism.

pub mod host;
