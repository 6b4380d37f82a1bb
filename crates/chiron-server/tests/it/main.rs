//! The HTTP app: health, metrics, request ids, the admin API (on SQLite and PostgreSQL),
//! readiness against a database that goes away, graceful draining, and which HTTP thread
//! serves a connection.

mod admin;
mod drain;
mod health;
mod mcp;
mod readyz;
mod support;
mod threads;
