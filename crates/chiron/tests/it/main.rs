//! The `chiron` binary as a user runs it: real processes, real sockets, real storage.

mod cli;
mod egress;
mod leak;
mod mcp_sdk;
mod sandbox;
mod serve;
mod slack;
mod support;
mod upstream;
