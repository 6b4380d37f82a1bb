//! What one audit row costs to store, in CPU time of the whole process (the async side and
//! SQLite's worker thread), for the two tables written on every request: `egress_requests`
//! (one row per proxied request) and `tool_calls` (one row per MCP tool call). Rows are
//! written the way the gateway's batch writers write them: many rows per call, one
//! transaction each. SQLite in WAL mode, as a gateway has it by default.
//!
//! Run: `cargo bench -p chiron-store --bench audit`; `CHIRON_BENCH_ROWS` (default 100000)
//! sets the rows per table, `CHIRON_BENCH_BATCH` (default 512) the rows per call.

use std::time::{Duration, Instant};

use chiron_core::{PrincipalId, TokenId};
use chiron_store::secrets::EgressRecord;
use chiron_store::tool_calls::ToolCallRecord;
use chiron_store::{ConnectOptions, Store};

#[path = "../../../benches/common.rs"]
mod common;

fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the call only writes to the local passed by pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) == 0 };
    assert!(ok, "cannot read the process CPU clock");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The CPU time (whole process) and wall time `work` takes.
async fn timed(work: impl std::future::Future<Output = ()>) -> (Duration, Duration) {
    let (cpu, wall) = (process_cpu(), Instant::now());
    work.await;
    (process_cpu() - cpu, wall.elapsed())
}

fn egress_row(principal: PrincipalId, call: &str) -> EgressRecord {
    EgressRecord {
        at: time::OffsetDateTime::now_utc(),
        principal_id: principal,
        runner_id: "runner-0196f2c4a1b27c3e".into(),
        package: "github".into(),
        call_id: Some(call.to_owned()),
        method: "GET".into(),
        host: "api.github.com".into(),
        path: "/repos/acme/widgets/issues".into(),
        status: 200,
        bytes_out: 0,
        bytes_in: 5120,
        duration_ms: 84,
        injected: vec!["GITHUB_TOKEN".into()],
        outcome: "ok".into(),
    }
}

fn call_row(principal: PrincipalId, call: &str) -> ToolCallRecord {
    ToolCallRecord {
        call_id: call.to_owned(),
        at: time::OffsetDateTime::now_utc(),
        principal_id: principal,
        token_id: TokenId::new(),
        tool: "github_list_issues".into(),
        package: "github".into(),
        arg_keys: vec!["repo".into(), "state".into()],
        arg_bytes: 38,
        arg_values: None,
        outcome: "ok".into(),
        duration_ms: 91,
        runner_id: Some("runner-0196f2c4a1b27c3e".into()),
    }
}

fn main() {
    let rows: usize = common::setting("CHIRON_BENCH_ROWS", 100_000);
    let batch: usize = common::setting("CHIRON_BENCH_BATCH", 512);
    let runtime = common::runtime();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&ConnectOptions {
            url: format!("sqlite:{}", dir.path().join("bench.db").display()),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let principal = store.create_principal("alice").await.unwrap().id;
        let call = uuid::Uuid::now_v7().to_string();

        println!("audit storage benchmark: {rows} rows per table, {batch} per transaction");
        // Twice each, alternating: the first pass of each warms the statement cache and
        // the file; the second is reported.
        for pass in 0..2 {
            let egress: Vec<EgressRecord> =
                (0..rows).map(|_| egress_row(principal, &call)).collect();
            let calls: Vec<ToolCallRecord> =
                (0..rows).map(|_| call_row(principal, &call)).collect();
            let measured = [
                (
                    "egress_requests",
                    timed(async {
                        for chunk in egress.chunks(batch) {
                            store.record_egress_batch(chunk).await.unwrap();
                        }
                    })
                    .await,
                ),
                (
                    "tool_calls",
                    timed(async {
                        for chunk in calls.chunks(batch) {
                            store.record_tool_calls(chunk).await.unwrap();
                        }
                    })
                    .await,
                ),
            ];
            if pass == 1 {
                let per_row = |d: Duration| d.as_secs_f64() * 1e6 / rows as f64;
                for (table, (cpu, wall)) in measured {
                    println!(
                        "{table:<16} CPU {:>6.2} µs/row  wall {:>6.2} µs/row",
                        per_row(cpu),
                        per_row(wall)
                    );
                }
            }
        }
    });
}
