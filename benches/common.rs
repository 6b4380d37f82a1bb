//! What every benchmark binary of the workspace shares. Benches of several crates include this
//! file by path (`#[path = "../../../benches/common.rs"] mod common;`).

/// A setting from the environment, or its default.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime a benchmark drives its side on: two workers (`CHIRON_BENCH_WORKERS` sets
/// another number, to see what the second core adds), every driver enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(setting("CHIRON_BENCH_WORKERS", 2))
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}
