//! Throughput and latency of `tools/list` and `tools/call whoami` through chiron (token check,
//! gate, session binding, whoami) against a bare rmcp server serving the same tool in the same
//! process with a plain bearer comparison in front (the baseline DESIGN.md measured), in session (2025-11-25) and stateless (2026-07-28) form, measured with wrk and a
//! Lua script that gives every request a unique JSON-RPC id.
//!
//! Run: `cargo bench -p chiron-server --bench mcp` (needs `wrk`; scripts/bench-mcp installs it).
//! Set `CHIRON_BENCH_SECONDS` to change the duration of each cell (default 5), and
//! `CHIRON_BENCH_ONLY="<form> <method> <connections>"` to run one cell.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::Router;
use chiron_auth::IssueRequest;
use chiron_core::{Actor, Config, CreatedVia, Scope, Scopes};
use chiron_server::{router, serve, setup, AppState};
use chiron_store::testing::store;
use chiron_store::Backend;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;

const LUA: &str = r#"
local counter = 0
local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json, text/event-stream" }
local method, meta

function init(args)
  method = args[1]
  local session, token, form = args[2], args[3], args[4]
  if token ~= "-" then headers["Authorization"] = "Bearer " .. token end
  meta = ""
  if form == "stateless" then
    headers["MCP-Protocol-Version"] = "2026-07-28"
    headers["Mcp-Method"] = method
    if method == "tools/call" then headers["Mcp-Name"] = "whoami" end
    meta = '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}'
  else
    headers["MCP-Protocol-Version"] = "2025-11-25"
    headers["Mcp-Session-Id"] = session
  end
end

function request()
  counter = counter + 1
  local params
  if method == "tools/call" then
    params = '{"name":"whoami","arguments":{}' .. (meta ~= "" and ("," .. meta) or "") .. '}'
  else
    params = '{' .. meta .. '}'
  end
  local body = string.format('{"jsonrpc":"2.0","id":%d,"method":"%s","params":%s}', counter, method, params)
  return wrk.format("POST", nil, headers, body)
end
"#;

/// The bare baseline: rmcp alone, serving a `whoami` that returns the same shape.
#[derive(Clone)]
struct Bare;

impl ServerHandler for Bare {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema: JsonObject =
            serde_json::from_value(json!({"type": "object", "properties": {}})).unwrap();
        Ok(ListToolsResult {
            tools: vec![Tool::new("whoami", "who am I", Arc::new(schema))],
            ..Default::default()
        })
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::structured(json!({
            "principal_id": "01a214b4-9015-77cc-bdf6-2b91eba8cb0b", "principal_name": "bench",
            "token_id": "01a214b4-ccb1-740a-9718-a1e6e7f552dc", "token_name": "bench",
            "token_expires_at": "2026-12-25T21:55:22.929Z", "scopes": ["mcp:tools"]
        }))
        .into())
    }
}

async fn start(app: Router) -> SocketAddr {
    let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve::serve(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
        chiron_core::config::ServerConfig::default().http_thread_count(),
    ));
    addr
}

async fn open_session(addr: SocketAddr, token: Option<&str>) -> String {
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value, session: Option<String>| {
        let mut request = client
            .post(format!("http://{addr}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "wrk", "version": "1"}}});
    let response = post(init, None).await.unwrap();
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    response.text().await.unwrap();
    post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(session.clone()),
    )
    .await
    .unwrap();
    session
}

struct Cell {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
}

fn parse_ms(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(
    script: &std::path::Path,
    addr: SocketAddr,
    connections: u32,
    seconds: u32,
    args: [&str; 4],
) -> Cell {
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/mcp"))
        .arg("--")
        .args(args)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("nan")
            .to_owned()
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Cell {
        rps: field("Requests/sec:").parse().unwrap_or(f64::NAN),
        p50_ms: parse_ms(&field("50%")),
        p99_ms: parse_ms(&field("99%")),
        errors,
    }
}

fn main() {
    let seconds: u32 = std::env::var("CHIRON_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (chiron_addr, bare_addr, token, _db) = runtime.block_on(async {
        let (db_store, db) = store(Backend::Sqlite).await;
        // chiron checks Host against public_url, so it listens on a fixed free port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = Config::default();
        config.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.server.public_url = format!("http://127.0.0.1:{port}").parse().unwrap();
        // The benchmark measures overhead, not the rate limiter.
        config.mcp.calls_per_minute = u32::MAX / 2;
        config.mcp.call_burst = u32::MAX / 2;
        let auth = setup::auth_service(&config, db_store.clone()).unwrap();
        let principal = db_store.create_principal("bench").await.unwrap();
        let token = auth
            .issue(IssueRequest {
                principal_id: principal.id,
                name: "bench".into(),
                scopes: Scopes::new([Scope::McpTools]),
                ttl: None,
                created_via: CreatedVia::Cli,
                actor: Actor::cli(),
            })
            .await
            .unwrap()
            .secret
            .expose()
            .to_owned();
        let listen = config.server.listen;
        let state = AppState::new(config, db_store, auth);
        let listener = serve::bind(listen).await.unwrap();
        tokio::spawn(serve::serve(
            listener,
            router(state),
            std::future::pending(),
            Duration::from_secs(1),
            chiron_core::config::ServerConfig::default().http_thread_count(),
        ));

        let bare_service = StreamableHttpService::new(
            || Ok(Bare),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        // As in DESIGN.md's measurements: bare rmcp in axum with a bearer check in front.
        let expected = format!("Bearer {token}");
        let bare_app =
            Router::new()
                .route_service("/mcp", bare_service)
                .layer(axum::middleware::from_fn(
                    move |request: axum::extract::Request, next: axum::middleware::Next| {
                        let ok = request
                            .headers()
                            .get("authorization")
                            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                        async move {
                            if ok {
                                next.run(request).await
                            } else {
                                axum::http::StatusCode::UNAUTHORIZED.into_response()
                            }
                        }
                    },
                ));
        let bare_addr = start(bare_app).await;
        (listen, bare_addr, token, db)
    });

    let mut script = tempfile::NamedTempFile::new().unwrap();
    script.write_all(LUA.as_bytes()).unwrap();

    println!("MCP gateway benchmark: wrk -t1, {seconds}s per cell, same process, same machine");
    println!(
        "{:<11} {:<10} {:>3} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>6}",
        "form",
        "method",
        "c",
        "bare rps",
        "p50 ms",
        "p99 ms",
        "chiron rps",
        "p50 ms",
        "p99 ms",
        "ratio"
    );
    for form in ["session", "stateless"] {
        let (bare_session, chiron_session) = runtime.block_on(async {
            if form == "session" {
                (
                    open_session(bare_addr, Some(&token)).await,
                    open_session(chiron_addr, Some(&token)).await,
                )
            } else {
                ("-".to_owned(), "-".to_owned())
            }
        });
        for method in ["tools/list", "tools/call"] {
            for connections in [1, 32] {
                // CHIRON_BENCH_ONLY="session tools/call 32" runs one cell (for profiling).
                if let Ok(only) = std::env::var("CHIRON_BENCH_ONLY") {
                    if only != format!("{form} {method} {connections}") {
                        continue;
                    }
                }
                let bare = wrk(
                    script.path(),
                    bare_addr,
                    connections,
                    seconds,
                    [method, &bare_session, &token, form],
                );
                let chiron = wrk(
                    script.path(),
                    chiron_addr,
                    connections,
                    seconds,
                    [method, &chiron_session, &token, form],
                );
                println!(
                    "{form:<11} {method:<10} {connections:>3} | {:>10.0} {:>8.3} {:>8.3} | {:>10.0} {:>8.3} {:>8.3} | {:>6.2}",
                    bare.rps, bare.p50_ms, bare.p99_ms, chiron.rps, chiron.p50_ms, chiron.p99_ms, chiron.rps / bare.rps
                );
                for (label, cell) in [("bare", &bare), ("chiron", &chiron)] {
                    // Any failed request makes the cell meaningless: say so loudly.
                    if !cell.errors.is_empty() {
                        println!("    INVALID {label}: {}", cell.errors);
                    }
                }
            }
        }
    }
}
