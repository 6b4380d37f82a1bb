//! Warm tool calls end to end through `/mcp` of a real `chiron serve` (bearer check, gate,
//! session, grants, schema validation, runner pool, sandbox, call audit), in the session
//! (2025-11-25) and stateless (2026-07-28) protocol forms, for a `command` tool (`/bin/true`)
//! and an `mcp-stdio` tool, against baselines measured in the same run: plain exec of the same
//! program on the host, and the same stdio server called directly. Also the gateway's CPU time
//! per call (the server process's CPU clock, in nanoseconds), against the floor under any HTTP
//! server here: hyper alone on one thread, parsing the same requests and answering them with
//! a fixed result (its thread's CPU clock).
//!
//! Run: `cargo bench -p chiron --bench e2e` (as root, like the sandboxes need);
//! `CHIRON_BENCH_CALLS` (default 1000); `CHIRON_BENCH_ONLY=stateless/stdio_ping` (form/tool)
//! runs one row, for profiling the server while it runs.
//!
//! `CHIRON_BENCH_AGAINST=<another chiron binary>` runs a second gateway from that binary next
//! to this one, set up the same way, and alternates the calls of each row between the two in
//! chunks of [`CHUNK`]: both see the same phases of a machine whose speed drifts, so their
//! figures compare (each gateway's `chiron-runner-agent` is the one next to its binary).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "../../../benches/common.rs"]
mod common;

/// The small stdio MCP server both sides of the mcp-stdio rows call.
const STDIO_SERVER: &str = include_str!("../tests/fixtures/stdio_server.py");

fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * 0.99) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time a process (all its threads, live or gone) has used, in nanoseconds: its CPU
/// clock, not `/proc/<pid>/stat`, whose 10 ms ticks would round 300 calls to 33 µs steps.
fn cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes only to the local passed by pointer.
    let ok = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0 };
    assert!(ok, "cannot find the server's CPU clock");
    clock_ns(clock)
}

/// The time on a CPU clock (a process's or a thread's), in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes only to the local passed by pointer.
    let ok = unsafe { libc::clock_gettime(clock, &mut now) == 0 };
    assert!(ok, "cannot read a CPU clock");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The floor under any HTTP server on this machine: hyper alone, on one thread with its own
/// runtime (as each of a gateway's HTTP threads is), answering each POST by parsing its JSON
/// and returning a fixed JSON-RPC result with the request's id. No MCP, no authentication,
/// no tool. Returns its port and the thread's CPU clock.
fn http_floor() -> (u16, libc::clockid_t) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (clock_tx, clock_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: this thread's own id; writes only to the local passed by pointer.
        assert_eq!(
            unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) },
            0
        );
        clock_tx.send(clock).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(floor_answer);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (port, clock_rx.recv().unwrap())
}

/// The floor server's answer: the request's JSON parsed, a fixed result with its id.
async fn floor_answer(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
    use http_body_util::BodyExt;
    let body = request.into_body().collect().await?.to_bytes();
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|request| request.get("id").cloned());
    let answer = json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {"content": [{"type": "text", "text": "pong"}], "isError": false},
    });
    let mut response = hyper::Response::new(answer.to_string().into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Calls made on one gateway before the other takes its turn (with `CHIRON_BENCH_AGAINST`).
const CHUNK: usize = 100;

struct Chiron {
    dir: tempfile::TempDir,
    binary: std::path::PathBuf,
}

impl Chiron {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("CHIRON_LOG__FILTER", "warn");
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    session: Option<String>,
    next_id: u64,
}

impl Client {
    /// A client of `url` with its own HTTP client (connection pool), in the stateless form
    /// until it initializes a session.
    fn new(http: reqwest::Client, url: String, token: String) -> Self {
        Self {
            http,
            url,
            token,
            session: None,
            next_id: 0,
        }
    }

    async fn post(
        &mut self,
        method: &str,
        params: Value,
        name: Option<&str>,
    ) -> (reqwest::header::HeaderMap, String) {
        self.next_id += 1;
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        let mut params = params;
        match &self.session {
            Some(session) => {
                request = request
                    .header("mcp-protocol-version", "2025-11-25")
                    .header("mcp-session-id", session);
            }
            None if method != "initialize" => {
                request = request
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", method);
                if let Some(name) = name {
                    request = request.header("mcp-name", name);
                }
                params["_meta"] = json!({
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}
                });
            }
            None => {}
        }
        let body =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        let response = request.json(&body).send().await.unwrap();
        let headers = response.headers().clone();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method}: {status} {text}");
        (headers, text)
    }

    async fn call(&mut self, tool: &str) {
        let (_, text) = self
            .post(
                "tools/call",
                json!({"name": tool, "arguments": {}}),
                Some(tool),
            )
            .await;
        assert!(
            text.contains("\"result\"") && !text.contains("\"isError\":true"),
            "{text}"
        );
    }
}

/// A running `chiron serve` with the bench's packages and a token for its principal.
struct Gateway {
    /// Its data directory (with the packages) and binary.
    chiron: Chiron,
    server: std::process::Child,
    port: u16,
    token: String,
}

impl Gateway {
    fn start(binary: std::path::PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let tools = dir.path().join("tools");
        std::fs::create_dir_all(tools.join("native")).unwrap();
        std::fs::write(
            tools.join("native/chiron-tool.toml"),
            "name = \"native\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n[[tools]]\nname = \"true\"\ninput_schema = { type = \"object\" }\n",
        )
        .unwrap();
        std::fs::create_dir_all(tools.join("stdio")).unwrap();
        std::fs::write(
            tools.join("stdio/chiron-tool.toml"),
            "name = \"stdio\"\nversion = \"1\"\nkind = \"mcp-stdio\"\ncommand = [\"python3\", \"server.py\"]\n",
        )
        .unwrap();
        std::fs::write(tools.join("stdio/server.py"), STDIO_SERVER).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.path().join("chiron.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n[tools]\ndirs = [\"{}\"]\nwatch = false\n[mcp]\ncalls_per_minute = 1000000\ncall_burst = 100000\n",
                tools.display()
            ),
        )
        .unwrap();
        let chiron = Chiron { dir, binary };
        chiron.ok(&["init"]);
        chiron.ok(&["principal", "add", "bench"]);
        chiron.ok(&["grant", "add", "native", "--principal", "bench"]);
        chiron.ok(&["grant", "add", "stdio", "--principal", "bench"]);
        let token = chiron
            .ok(&["token", "issue", "--principal", "bench"])
            .trim()
            .to_owned();
        let mut server = chiron
            .command(&["serve"])
            // The default log filter, as a deployment runs it.
            .env_remove("CHIRON_LOG__FILTER")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = server.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("listening listen=") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            chiron,
            server,
            port,
            token,
        }
    }

    fn pid(&self) -> u32 {
        self.server.id()
    }

    fn stop(mut self) {
        // SAFETY: signalling the server this bench started.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
    }
}

fn main() {
    let calls: usize = common::setting("CHIRON_BENCH_CALLS", 1000);
    let only = std::env::var("CHIRON_BENCH_ONLY").ok();
    let mut gateways = vec![("", Gateway::start(env!("CARGO_BIN_EXE_chiron").into()))];
    if let Ok(other) = std::env::var("CHIRON_BENCH_AGAINST") {
        gateways.push(("against ", Gateway::start(other.into())));
    }
    let stdio_server = gateways[0]
        .1
        .chiron
        .dir
        .path()
        .join("tools/stdio/server.py");

    // Baselines on the host.
    let mut host = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        assert!(Command::new("true").status().unwrap().success());
        host.push(started.elapsed());
    }

    let runtime = common::runtime();
    runtime.block_on(async {
        let mut child = tokio::process::Command::new("python3")
            .arg(&stdio_server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let direct = rmcp::ServiceExt::serve((), (child.stdout.take().unwrap(), child.stdin.take().unwrap()))
            .await
            .unwrap();
        let params = || rmcp::model::CallToolRequestParams::new("ping").with_arguments(serde_json::Map::new());
        for _ in 0..20 {
            direct.peer().call_tool(params()).await.unwrap();
        }
        let mut stdio_direct = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            direct.peer().call_tool(params()).await.unwrap();
            stdio_direct.push(started.elapsed());
        }
        drop(direct);

        // One HTTP client (one connection pool) per MCP client, as each real client has its
        // own: connections a client left open must not carry another client's requests.
        let new_http = || reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
        println!("end-to-end benchmark: {calls} warm calls per row through /mcp of `chiron serve`");
        println!("{:<52} p50 {:>7.3} ms  p99 {:>7.3} ms", "baseline: plain exec of /bin/true on the host", ms(p50(&mut host)), ms(p99(&mut host)));
        println!("{:<52} p50 {:>7.3} ms  p99 {:>7.3} ms", "baseline: the stdio server called directly", ms(p50(&mut stdio_direct)), ms(p99(&mut stdio_direct)));
        if only.is_none() {
            // The same requests as a stateless call, to a server that only parses and answers.
            let (port, clock) = http_floor();
            let url = format!("http://127.0.0.1:{port}/mcp");
            let mut client = Client::new(new_http(), url, String::new());
            for _ in 0..20 {
                client.call("whoami").await;
            }
            let mut samples = Vec::with_capacity(calls);
            let cpu = clock_ns(clock);
            for _ in 0..calls {
                let started = Instant::now();
                client.call("whoami").await;
                samples.push(started.elapsed());
            }
            let cpu_us = (clock_ns(clock) - cpu) as f64 / 1e3 / calls as f64;
            println!(
                "{:<52} p50 {:>7.3} ms  p99 {:>7.3} ms  server CPU {:>5.0} µs/request",
                "baseline: bare hyper answering the same requests",
                ms(p50(&mut samples)),
                ms(p99(&mut samples)),
                cpu_us
            );
        }
        for form in ["session", "stateless"] {
            let mut clients = Vec::new();
            for (label, gateway) in &gateways {
                let url = format!("http://127.0.0.1:{}/mcp", gateway.port);
                let http = new_http();
                let mut client = Client::new(http.clone(), url.clone(), gateway.token.clone());
                if form == "session" {
                    let (headers, _) = client
                        .post("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}), None)
                        .await;
                    client.session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let session = client.session.clone().unwrap();
                    let response = http
                        .post(&url)
                        .bearer_auth(&gateway.token)
                        .header("accept", "application/json, text/event-stream")
                        .header("mcp-protocol-version", "2025-11-25")
                        .header("mcp-session-id", &session)
                        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success());
                }
                clients.push((*label, gateway.pid(), client));
            }
            // `whoami` runs nothing: its row is the cost of the HTTP/MCP layer alone.
            for (tool, baseline) in [
                ("whoami", Duration::ZERO),
                ("native_true", p50(&mut host)),
                ("stdio_ping", p50(&mut stdio_direct)),
            ] {
                if only.as_deref().is_some_and(|only| only != format!("{form}/{tool}")) {
                    continue;
                }
                let mut rows = Vec::new();
                for (_, _, client) in &mut clients {
                    for _ in 0..20 {
                        client.call(tool).await;
                    }
                }
                // Each gateway's CPU clock spans the whole row, so what it does after a call
                // (the call audit is written in batches) counts even when it happens during
                // the other gateway's turn.
                for (_, pid, _) in &clients {
                    rows.push((Vec::with_capacity(calls), cpu_ns(*pid)));
                }
                // In turns, so that with two gateways both see the same phases of the machine.
                let chunk = if clients.len() > 1 { CHUNK } else { calls };
                let mut done = 0;
                while done < calls {
                    let n = chunk.min(calls - done);
                    for ((_, _, client), (samples, _)) in clients.iter_mut().zip(&mut rows) {
                        for _ in 0..n {
                            let started = Instant::now();
                            client.call(tool).await;
                            samples.push(started.elapsed());
                        }
                    }
                    done += n;
                }
                for ((_, pid, _), (_, cpu)) in clients.iter().zip(&mut rows) {
                    *cpu = cpu_ns(*pid) - *cpu;
                }
                for ((label, _, _), (mut samples, cpu)) in clients.iter().zip(rows) {
                    let cpu_us = cpu as f64 / 1e3 / calls as f64;
                    let (median, tail) = (p50(&mut samples), p99(&mut samples));
                    println!(
                        "{:<52} p50 {:>7.3} ms  p99 {:>7.3} ms  added {:>6.3} ms  gateway CPU {:>5.0} µs/call",
                        format!("/mcp {label}{form:<9} {tool}"),
                        ms(median),
                        ms(tail),
                        ms(median) - ms(baseline),
                        cpu_us
                    );
                }
            }
        }
    });
    for (_, gateway) in gateways {
        gateway.stop();
    }
}
