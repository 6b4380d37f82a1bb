//! The gateway's wiring. [`config::load`] builds the typed [`chiron_core::Config`] from a TOML
//! file and `CHIRON_*` environment overrides; [`setup`] prepares the data directory, storage
//! and the bootstrap admin; [`AppState`] holds the shared services; [`router`] builds the axum
//! app (health, metrics, admin API) with request ids, tracing and per-route metrics; and
//! [`serve::serve`] runs it until a shutdown signal, draining in-flight requests.

pub mod admin;
pub mod config;
pub mod egress;
pub mod error;
pub mod health;
pub mod metrics;
pub mod retention;
pub mod serve;
pub mod setup;
pub mod slack;
pub mod state;
pub mod tools;

mod bearer;
mod router;

pub use error::ApiError;
pub use router::router;
pub use state::AppState;
