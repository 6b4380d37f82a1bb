//! The HTTP app: health, metrics, request ids, the admin API (on SQLite and PostgreSQL),
//! readiness against a database that goes away, and graceful draining.

mod admin;
mod drain;
mod health;
mod mcp;
mod readyz;
mod support;
