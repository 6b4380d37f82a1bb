//! Runner costs, measured in one run on the same machine with the same sandbox configuration:
//! a warm `command` tool call through the runner pool vs plain exec of the same program on the
//! host vs a fresh sandbox per call; runner cold start; idle runner memory (RSS and PSS of the
//! sandbox's processes).
//!
//! Run: `cargo bench -p chiron --bench runner` (as root). `CHIRON_BENCH_CALLS` sets the number of
//! calls per measurement (default 300).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chiron_core::PrincipalId;
use chiron_runner::local::{LocalBackend, LocalConfig, Mounts};
use chiron_runner::{CommandCall, PoolConfig, RunnerBackend, RunnerPool, StdioCall, ToolRunner};
use chiron_tools::{PackageKind, ToolPackage};

#[path = "../../../benches/common.rs"]
mod common;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, samples: &mut [Duration]) -> Duration {
    let p50 = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "{label:<44} p50 {:>9.3} ms   p99 {:>9.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    p50
}

/// This process's CPU time (user + system) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills a zeroed struct for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The small stdio MCP server both sides of the mcp-stdio rows call.
const STDIO_SERVER: &str = include_str!("../tests/fixtures/stdio_server.py");

fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn main() {
    let calls: usize = common::setting("CHIRON_BENCH_CALLS", 300);
    let data = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let tools = data.path().join("tools/native");
    std::fs::create_dir_all(&tools).unwrap();
    let package = Arc::new(ToolPackage {
        dir: tools.clone(),
        name: "native".into(),
        version: "1".into(),
        description: String::new(),
        kind: PackageKind::Command,
        command: vec!["true".into()],
        env: Default::default(),
        source: None,
        timeout: Duration::from_secs(120),
        tools: vec![],
        egress: vec![],
    });
    let stdio_dir = data.path().join("tools/stdio");
    std::fs::create_dir_all(&stdio_dir).unwrap();
    std::fs::write(stdio_dir.join("server.py"), STDIO_SERVER).unwrap();
    let stdio = Arc::new(ToolPackage {
        dir: stdio_dir.clone(),
        name: "stdio".into(),
        kind: PackageKind::McpStdio,
        command: vec!["python3".into(), "server.py".into()],
        ..(*package).clone()
    });
    let config = LocalConfig {
        agent: vec![env!("CARGO_BIN_EXE_chiron-runner-agent").into()],
        data_dir: data.path().join("data"),
        mounts: Mounts {
            tools: BTreeMap::from([
                ("native".to_owned(), tools),
                ("stdio".to_owned(), stdio_dir.clone()),
            ]),
            ..Default::default()
        },
        ca_bundle: None,
        memory_limit: 512 * 1024 * 1024,
        pids_limit: 128,
        cpus: 1.0,
        cgroups: true,
    };
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let runtime = common::runtime();
    let call = |principal| CommandCall {
        principal,
        package: package.clone(),
        tool: "true".into(),
        arguments: serde_json::json!({}),
        timeout: Duration::from_secs(10),
        call_id: "bench".into(),
    };

    println!("runner benchmark: {calls} calls per row, /bin/true as the tool");
    // Baseline: plain exec on the host.
    let mut host = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let status = std::process::Command::new("true").status().unwrap();
        host.push(started.elapsed());
        assert!(status.success());
    }
    let host_p50 = report("plain exec on the host", &mut host);

    runtime.block_on(async {
        // Warm runner through the pool.
        let pool = RunnerPool::new(
            Arc::new(LocalBackend::new(config.clone())),
            PoolConfig::default(),
        );
        let alice = PrincipalId::new();
        pool.run_command(call(alice)).await.unwrap();
        let mut warm = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let outcome = pool.run_command(call(alice)).await.unwrap();
            warm.push(started.elapsed());
            assert_eq!(outcome.exit_code, Some(0));
        }
        let warm_p50 = report("warm runner (pool → agent → exec)", &mut warm);

        // Idle memory of the warm runner: every process in its pids cgroup.
        let runner_id = pool.list()[0].runner_id.clone();
        let procs = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/pids/chiron/{runner_id}/cgroup.procs"
        ))
        .unwrap_or_default();
        let (mut rss, mut pss) = (0, 0);
        let mut count = 0;
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let (r, p) = memory_kib(pid);
            let name = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            let name: String = name.chars().take(40).collect();
            println!("  pid {pid:>7}  RSS {r:>6} KiB  PSS {p:>6} KiB  {name}");
            rss += r;
            pss += p;
            count += 1;
        }
        println!(
            "idle runner memory ({count} processes)            RSS {:.1} MiB   PSS {:.1} MiB",
            rss as f64 / 1024.0,
            pss as f64 / 1024.0
        );
        pool.stop_all().await;

        // Fresh sandbox per call (the slow path persistent runners avoid), which also gives the
        // cold start: sandbox up and the agent answering its ping.
        let backend = LocalBackend::new(config.clone());
        let fresh_calls = (calls / 3).max(20);
        let (mut fresh, mut cold) = (Vec::new(), Vec::new());
        for _ in 0..fresh_calls {
            let started = Instant::now();
            let runner = backend.start(PrincipalId::new()).await.unwrap();
            cold.push(started.elapsed());
            runner.run_command(call(alice)).await.unwrap();
            fresh.push(started.elapsed());
            runner.stop().await;
        }
        report("runner cold start (sandbox up, agent answers)", &mut cold);
        let fresh_p50 = report("fresh sandbox per call", &mut fresh);

        // mcp-stdio: the same small server called directly over stdio on the host, then warm
        // in a runner through the pool, then with sandbox + server start + initialize per call.
        let stdio_call = |principal| StdioCall {
            principal,
            package: stdio.clone(),
            tool: "ping".into(),
            arguments: serde_json::Map::new(),
            timeout: Duration::from_secs(10),
            call_id: "bench".into(),
        };
        let direct_server = {
            let mut child = tokio::process::Command::new("python3")
                .arg(stdio_dir.join("server.py"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
            (child, rmcp::ServiceExt::serve((), transport).await.unwrap())
        };
        let params = || rmcp::model::CallToolRequestParams::new("ping").with_arguments(serde_json::Map::new());
        for _ in 0..20 {
            direct_server.1.peer().call_tool(params()).await.unwrap();
        }
        let cpu_before = cpu_time();
        let mut direct = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            direct_server.1.peer().call_tool(params()).await.unwrap();
            direct.push(started.elapsed());
        }
        let direct_cpu = (cpu_time() - cpu_before) / calls as u32;
        let direct_p50 = report("mcp-stdio: direct stdio on the host", &mut direct);
        drop(direct_server);

        let pool = RunnerPool::new(Arc::new(LocalBackend::new(config.clone())), PoolConfig::default());
        let bob = PrincipalId::new();
        for _ in 0..20 {
            pool.call_stdio(stdio_call(bob)).await.unwrap();
        }
        let cpu_before = cpu_time();
        let mut warm_stdio = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let outcome = pool.call_stdio(stdio_call(bob)).await.unwrap();
            warm_stdio.push(started.elapsed());
            assert!(outcome.result.is_some());
        }
        let pool_cpu = (cpu_time() - cpu_before) / calls as u32;
        let warm_stdio_p50 = report("mcp-stdio: warm in a runner (pool)", &mut warm_stdio);
        pool.stop_all().await;

        let mut per_call = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let pool = RunnerPool::new(Arc::new(LocalBackend::new(config.clone())), PoolConfig::default());
            pool.call_stdio(stdio_call(PrincipalId::new())).await.unwrap();
            pool.stop_all().await;
            per_call.push(started.elapsed());
        }
        let per_call_p50 = report("mcp-stdio: sandbox + start + initialize per call", &mut per_call);

        // How many idle runners fit: start some, measure what each keeps resident.
        let count = 30;
        let backend = LocalBackend::new(config.clone());
        let mut idle = Vec::new();
        for _ in 0..count {
            idle.push(backend.start(PrincipalId::new()).await.unwrap());
        }
        let (mut rss, mut pss) = (0u64, 0u64);
        for runner in &idle {
            let procs = std::fs::read_to_string(format!(
                "/sys/fs/cgroup/pids/chiron/{}/cgroup.procs",
                runner.id()
            ))
            .unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                let (r, p) = memory_kib(pid);
                rss += r;
                pss += p;
            }
        }
        for runner in &idle {
            runner.stop().await;
        }
        let available_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let (avg_rss, avg_pss) = (rss / count, pss / count);

        println!();
        println!(
            "added over plain exec (p50):   {:.3} ms",
            (warm_p50.as_secs_f64() - host_p50.as_secs_f64()) * 1e3
        );
        println!(
            "fresh sandbox / warm runner:   {:.1}x",
            fresh_p50.as_secs_f64() / warm_p50.as_secs_f64()
        );
        println!(
            "mcp-stdio added over direct (p50): {:.3} ms; gateway CPU per warm call {} µs (direct client {} µs); per-call start / warm: {:.0}x",
            (warm_stdio_p50.as_secs_f64() - direct_p50.as_secs_f64()) * 1e3,
            pool_cpu.as_micros(),
            direct_cpu.as_micros(),
            per_call_p50.as_secs_f64() / warm_stdio_p50.as_secs_f64()
        );
        println!(
            "{count} idle runners: {:.1} MiB RSS / {:.1} MiB PSS each; MemAvailable {:.1} GiB fits about {} by RSS, {} by PSS",
            avg_rss as f64 / 1024.0,
            avg_pss as f64 / 1024.0,
            available_kib as f64 / 1024.0 / 1024.0,
            available_kib / avg_rss.max(1),
            available_kib / avg_pss.max(1)
        );
    });
}
