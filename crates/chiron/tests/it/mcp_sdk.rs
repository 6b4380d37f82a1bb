//! The MCP endpoint driven by the official Python SDK (`mcp==2.3.0`, installed by
//! scripts/test) over real HTTP, in both protocol eras.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::Chiron;

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("CHIRON_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the MCP SDK: run scripts/test (it creates .venv) or set CHIRON_TEST_PYTHON"
    );
    venv
}

/// Runs the SDK probe and returns one JSON result per step.
pub(crate) fn probe(url: &str, headers: Value, mode: &str, steps: Value) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_probe.py");
    let spec = json!({ "url": url, "headers": headers, "mode": mode, "steps": steps });
    let output = Command::new(python())
        .arg(script)
        .arg(spec.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| panic!("probe printed no JSON ({err}): {stdout}"))
}

/// The packages shipped in the repository (`tools/`).
pub(crate) fn shipped_tools() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

pub(crate) fn bearer(token: &str) -> Value {
    json!({ "Authorization": format!("Bearer {token}") })
}

#[test]
fn sdk_lists_and_calls_whoami_in_both_protocol_eras() {
    let mut chiron = Chiron::new();
    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["principal", "add", "bob"]);
    let alice = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();
    let bob = chiron
        .ok(&["token", "issue", "--principal", "bob"])
        .trim()
        .to_owned();
    let server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());
    let steps = json!([
        {"op": "list"},
        {"op": "call", "name": "whoami"},
        {"op": "call", "name": "no_such_tool"},
    ]);

    for mode in ["legacy", "2026-07-28"] {
        let results = probe(&url, bearer(&alice), mode, steps.clone());
        assert_eq!(results[0]["tools"], json!(["whoami"]), "{mode}");
        let who = &results[1]["structuredContent"];
        assert_eq!(who["principal_name"], "alice", "{mode}: {results:?}");
        assert_eq!(results[1]["isError"], false);
        assert!(
            results[2]["error"]
                .as_str()
                .unwrap()
                .contains("unknown tool"),
            "{mode}: {results:?}"
        );

        let results = probe(
            &url,
            bearer(&bob),
            mode,
            json!([{"op": "call", "name": "whoami"}]),
        );
        assert_eq!(
            results[0]["structuredContent"]["principal_name"], "bob",
            "{mode}"
        );
    }
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn the_demo_handover_connects_verbatim() {
    // No tool directory configured, and none in the working directory: the demo writes the
    // packages built into the binary to its data directory and serves those.
    let chiron = Chiron::new();
    let server = chiron.serve(&["serve", "--demo"]);
    let handover = &server.handover;

    // The VS Code JSON block: from its heading to the first line that is exactly "}".
    let start = handover
        .find("VS Code (.vscode/mcp.json):\n")
        .expect("VS Code block")
        + "VS Code (.vscode/mcp.json):\n".len();
    let end = start + handover[start..].find("\n}\n").expect("end of JSON") + 2;
    let config: Value = serde_json::from_str(&handover[start..end]).unwrap();
    let entry = &config["servers"]["chiron"];
    assert_eq!(entry["type"], "http");
    let url = entry["url"].as_str().unwrap();
    let headers = entry["headers"].clone();

    let results = probe(
        url,
        headers,
        "legacy",
        json!([
            {"op": "call", "name": "whoami"},
            {"op": "list"},
            {"op": "call", "name": "time_get_current_time", "arguments": {"timezone": "UTC"}},
        ]),
    );
    assert_eq!(
        results[0]["structuredContent"]["principal_name"], "demo",
        "{results:?}"
    );
    // The demo installed the example stdio server (showing pip's progress) and granted it
    // with echo.
    assert!(
        handover.contains("installing time: pypi:mcp-server-time==2026.10.19")
            && handover.contains("  Successfully installed"),
        "{handover}"
    );
    assert_eq!(
        results[1]["tools"],
        json!([
            "whoami",
            "echo_echo",
            "time_convert_time",
            "time_get_current_time"
        ])
    );
    assert_eq!(results[2]["isError"], false, "{results:?}");
    assert!(handover.contains(&format!(
        "claude mcp add --transport http chiron {url} --header \"Authorization: Bearer chi_"
    )));
    drop(server);
}

#[test]
fn granted_package_tools_run_in_the_principals_sandbox() {
    let mut chiron = Chiron::new();
    // A package that reports the pid namespace it runs in, beside the shipped echo.
    let probe_dir = chiron.dir.path().join("pkgs/nsprobe");
    std::fs::create_dir_all(&probe_dir).unwrap();
    std::fs::write(
        probe_dir.join("chiron-tool.toml"),
        "name = \"nsprobe\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"python3\", \"probe.py\"]\n\n[[tools]]\nname = \"pidns\"\ninput_schema = { type = \"object\" }\n\n[[tools]]\nname = \"fail\"\ninput_schema = { type = \"object\" }\n\n[[tools]]\nname = \"hang\"\ninput_schema = { type = \"object\" }\ntimeout = \"1s\"\n",
    )
    .unwrap();
    std::fs::write(probe_dir.join("probe.py"), "import json, os, sys, time\ntool = json.load(sys.stdin)['tool']\nif tool == 'fail':\n    sys.stderr.write('first line\\nthe real reason: quota exceeded\\n')\n    sys.exit(3)\nif tool == 'hang':\n    os.fork()\n    time.sleep(3600)\nprint(json.dumps({'pidns': os.readlink('/proc/self/ns/pid'), 'pid': os.getpid()}))\n").unwrap();
    let pkgs = chiron.dir.path().join("pkgs").canonicalize().unwrap();
    chiron.set_env(
        "CHIRON_TOOLS__DIRS",
        &format!("[\"{}\", \"{}\"]", shipped_tools(), pkgs.display()),
    );

    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["principal", "add", "bob"]);
    chiron.ok(&["grant", "add", "echo", "--principal", "alice"]);
    chiron.ok(&["grant", "add", "nsprobe", "--principal", "alice"]);
    // The third-party stdio server (mcp-server-time from PyPI, offline from local wheels).
    let installed = chiron.ok(&["tool", "install", "time"]);
    assert!(installed.contains("installed time"), "{installed}");
    chiron.ok(&["grant", "add", "time", "--principal", "alice"]);
    let alice = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();
    let bob = chiron
        .ok(&["token", "issue", "--principal", "bob"])
        .trim()
        .to_owned();
    let server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());

    let results = probe(
        &url,
        bearer(&alice),
        "legacy",
        json!([
            {"op": "list"},
            {"op": "call", "name": "echo_echo", "arguments": {"text": "hi"}},
            {"op": "call", "name": "echo_echo", "arguments": {"text": 7}},
            {"op": "call", "name": "nsprobe_pidns"},
            {"op": "call", "name": "time_get_current_time", "arguments": {"timezone": "Europe/Paris"}},
            {"op": "call", "name": "time_convert_time", "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}},
            {"op": "call", "name": "time_get_current_time", "arguments": {"timezone": 5}},
            {"op": "call", "name": "nsprobe_fail"},
            {"op": "call", "name": "nsprobe_hang"},
            {"op": "call", "name": "echo_echo", "arguments": {"text": "after"}},
        ]),
    );
    // A failing tool: isError with the end of its stderr. A hanging one (and the child it
    // forked): killed at its 1 s timeout, and the runner keeps serving.
    assert_eq!(results[7]["isError"], true);
    let failed = results[7]["content"][0]["text"].as_str().unwrap();
    assert!(
        failed.contains("status 3") && failed.contains("the real reason: quota exceeded"),
        "{failed}"
    );
    assert_eq!(results[8]["isError"], true);
    assert!(
        results[8]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{results:?}"
    );
    assert_eq!(
        results[9]["structuredContent"]["arguments"],
        json!({"text": "after"})
    );
    assert_eq!(
        results[0]["tools"],
        json!([
            "whoami",
            "echo_echo",
            "nsprobe_fail",
            "nsprobe_hang",
            "nsprobe_pidns",
            "time_convert_time",
            "time_get_current_time"
        ])
    );
    // Real answers from the real server.
    let now = results[4]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        now.contains("Europe/Paris") && now.contains("datetime"),
        "{results:?}"
    );
    assert_eq!(results[4]["isError"], false);
    let converted = results[5]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(converted.contains("21:00"), "{converted}");
    assert_eq!(results[6]["isError"], true);
    assert!(results[6]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("/timezone"));
    // The server runs inside alice's runner: another pid namespace, an unprivileged host id.
    let gateway_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let servers = crate::support::processes_matching("mcp_server_time");
    assert_eq!(servers.len(), 1, "one warm server: {servers:?}");
    assert_ne!(servers[0].1, gateway_ns.to_string_lossy());
    assert_ne!(servers[0].2, 0, "the server runs as host root");
    assert_eq!(
        results[1]["structuredContent"]["arguments"],
        json!({"text": "hi"}),
        "{results:?}"
    );
    assert_eq!(results[2]["isError"], true);
    assert!(results[2]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("/text"));
    let tool_ns = results[3]["structuredContent"]["pidns"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        tool_ns,
        gateway_ns.to_string_lossy(),
        "the tool ran in the gateway's pid namespace"
    );
    assert!(results[3]["structuredContent"]["pid"].as_u64().unwrap() < 100);

    // A 2026-07-28 client needs `resultType` on every result, also on those the stdio server
    // (speaking an older revision) produced, its own errors included.
    let results = probe(
        &url,
        bearer(&alice),
        "2026-07-28",
        json!([
            {"op": "call", "name": "time_get_current_time", "arguments": {"timezone": "Europe/Paris"}},
            {"op": "call", "name": "time_get_current_time", "arguments": {"timezone": "Mars/Olympus"}},
        ]),
    );
    assert_eq!(results[0]["isError"], false, "{results:?}");
    assert_eq!(results[1]["isError"], true, "{results:?}");
    assert!(
        results[1]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Mars/Olympus")),
        "{results:?}"
    );

    // Bob sees only whoami, and alice's tool looks exactly like a made-up one.
    let results = probe(
        &url,
        bearer(&bob),
        "2026-07-28",
        json!([
            {"op": "list"},
            {"op": "call", "name": "echo_echo", "arguments": {"text": "hi"}},
            {"op": "call", "name": "echo_nothing", "arguments": {"text": "hi"}},
        ]),
    );
    assert_eq!(results[0]["tools"], json!(["whoami"]));
    let hidden = results[1]["error"]
        .as_str()
        .unwrap()
        .replace("echo_echo", "X");
    let missing = results[2]["error"]
        .as_str()
        .unwrap()
        .replace("echo_nothing", "X");
    assert_eq!(hidden, missing);

    // The runner is visible in the metrics, with the duration of every call it ran.
    let metrics = http_get(&format!("{}/metrics", chiron.base()));
    assert!(metrics.contains("chiron_runners_active 1"), "{metrics}");
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chiron_runner_call_duration_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // Nine calls reached a runner (the two with invalid arguments never did).
    assert_eq!(count, 9, "{metrics}");

    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0));
    // Alice's nine calls started one runner, reused after.
    let created: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("persistent_tool_runner_created"))
        .collect();
    assert_eq!(created.len(), 1, "{logs}");
    assert!(
        created[0].contains("principal_id=") && created[0].contains("runner=\"runner-"),
        "{logs}"
    );
    // Every call was audited; echo is safe to log, nsprobe is not.
    let audit = chiron.ok(&["audit", "search", "--json", "--limit", "20"]);
    let calls: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 13, "{audit}");
    // Newest first in the audit; oldest first here.
    let outcomes: Vec<&str> = calls
        .iter()
        .rev()
        .map(|c| c["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "invalid_arguments",
            "ok",
            "ok",
            "ok",
            "invalid_arguments",
            "tool_error",
            "timeout",
            "ok",
            "ok",
            "tool_error",
            "unknown_tool",
            "unknown_tool"
        ]
    );
    assert!(
        calls
            .iter()
            .filter(|c| c["tool"] == "echo_echo" && c["outcome"] == "ok")
            .all(|c| c["arg_values"] == r#"{"text":"hi"}"#
                || c["arg_values"] == r#"{"text":"after"}"#)
    );
    assert!(calls
        .iter()
        .filter(|c| c["tool"] != "echo_echo")
        .all(|c| c["arg_values"].is_null()));
    assert!(calls
        .iter()
        .filter(|c| c["tool"] == "time_get_current_time" && c["outcome"] == "ok")
        .all(|c| c["runner_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("runner-"))));
}

/// The host pids of every running `chiron runner-agent` whose command line mentions `marker`.
fn agents_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("runner-agent") && c.contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Calls `echo_echo` with `text` as the token's principal and checks it comes back.
fn echoes(url: &str, token: &str, text: &str) {
    let results = probe(
        url,
        bearer(token),
        "legacy",
        json!([{"op": "call", "name": "echo_echo", "arguments": {"text": text}}]),
    );
    assert_eq!(
        results[0]["structuredContent"]["arguments"]["text"], text,
        "{results:?}"
    );
}

#[test]
fn no_runner_survives_a_killed_gateway() {
    let mut chiron = Chiron::new();
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools")
        .canonicalize()
        .unwrap();
    chiron.set_env(
        "CHIRON_TOOLS__DIRS",
        &format!("[\"{}\"]", shipped.display()),
    );
    let init = chiron.ok(&["init"]);
    let admin = init
        .split_whitespace()
        .find(|w| w.starts_with("chi_"))
        .unwrap()
        .to_owned();
    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["grant", "add", "echo", "--principal", "alice"]);
    let alice = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();
    let mut server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());
    let results = probe(
        &url,
        bearer(&alice),
        "legacy",
        json!([{"op": "call", "name": "echo_echo", "arguments": {"text": "x"}}]),
    );
    assert_eq!(results[0]["isError"], false, "{results:?}");
    // The runner's spec names this test's data directory.
    let marker = chiron.dir.path().to_string_lossy().into_owned();
    assert!(!agents_with(&marker).is_empty(), "no runner is running");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGKILL) };
    server.child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !agents_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "runner agents survived the gateway: {:?}",
            agents_with(&marker)
        );
        std::thread::yield_now();
    }
    // A restarted gateway serves again with a new runner.
    drop(server);
    let server = chiron.serve(&["serve"]);
    echoes(&url, &alice, "y");

    // Operators see it and can stop it.
    chiron.set_env("CHIRON_ADMIN_TOKEN", &admin);
    let listed = chiron.ok(&["runner", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let metrics = http_get(&format!("{}/metrics", chiron.base()));
    assert!(metrics.contains("chiron_runners_active 1"), "{metrics}");
    assert!(chiron.ok(&["runner", "stop", "alice"]).contains("stopped"));
    assert_eq!(chiron.ok(&["runner", "list"]).lines().count(), 1);
    assert!(!chiron.run(&["runner", "stop", "alice"]).status.success());

    // A graceful stop with a live runner (its tasks live on the HTTP thread that started it)
    // stops it too.
    echoes(&url, &alice, "z");
    assert!(!agents_with(&marker).is_empty(), "no runner is running");
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(
        agents_with(&marker).is_empty(),
        "a graceful stop left runners behind"
    );
}

/// A plain GET from synchronous test code.
pub fn http_get(url: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

#[test]
fn packages_added_while_serving_appear_after_reload() {
    packages_added_while_serving_appear(true);
}

#[test]
fn packages_added_while_serving_appear_when_the_directory_changes() {
    packages_added_while_serving_appear(false);
}

/// With `signal`, the directory is not watched and `chiron tool reload` (SIGHUP) does it;
/// without, the file change alone must.
fn packages_added_while_serving_appear(signal: bool) {
    let mut chiron = Chiron::new();
    chiron.set_env("CHIRON_TOOLS__WATCH", if signal { "false" } else { "true" });
    let pkgs = chiron.dir.path().join("pkgs");
    let package = |name: &str, text: &str| {
        let dir = pkgs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("chiron-tool.toml"),
            format!("name = \"{name}\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"python3\", \"run.py\"]\n\n[[tools]]\nname = \"say\"\ninput_schema = {{ type = \"object\" }}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("run.py"), format!("print({text:?})\n")).unwrap();
    };
    package("first", "one");
    chiron.set_env(
        "CHIRON_TOOLS__DIRS",
        &format!("[\"{}\"]", pkgs.canonicalize().unwrap().display()),
    );
    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["grant", "add", "first", "--principal", "alice"]);
    chiron.ok(&["grant", "add", "later", "--principal", "alice"]);
    let alice = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();
    let server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());
    // Alice's runner starts before the new package exists.
    let results = probe(
        &url,
        bearer(&alice),
        "legacy",
        json!([{"op": "list"}, {"op": "call", "name": "first_say"}]),
    );
    assert_eq!(results[0]["tools"], json!(["whoami", "first_say"]));
    assert_eq!(results[1]["content"][0]["text"], "one\n", "{results:?}");

    package("later", "two");
    if signal {
        assert!(chiron.ok(&["tool", "reload"]).contains("reload"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed = probe(&url, bearer(&alice), "legacy", json!([{"op": "list"}]));
        if listed[0]["tools"] == json!(["whoami", "first_say", "later_say"]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "later_say never appeared: {listed:?}"
        );
    }
    // The new package is mounted in alice's (renewed) runner.
    let results = probe(
        &url,
        bearer(&alice),
        "2026-07-28",
        json!([{"op": "call", "name": "later_say"}]),
    );
    assert_eq!(results[0]["content"][0]["text"], "two\n", "{results:?}");
    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(logs.contains("tool packages reloaded"), "{logs}");
}

#[test]
fn grants_made_with_the_cli_are_announced_to_open_sessions() {
    let mut chiron = Chiron::new();
    chiron.set_env("CHIRON_TOOLS__DIRS", &format!("[\"{}\"]", shipped_tools()));
    chiron.set_env("CHIRON_TOOLS__ACCESS_POLL_INTERVAL", "100ms");
    chiron.ok(&["principal", "add", "alice"]);
    let alice = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();
    let server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());
    // Legacy sessions hear it on their stream; 2026-07-28 clients through subscriptions/listen.
    for (mode, verb) in [("legacy", "add"), ("2026-07-28", "remove")] {
        let grant = chiron.command_spec(&["grant", verb, "echo", "--principal", "alice"]);
        let results = probe(
            &url,
            bearer(&alice),
            mode,
            json!([
                {"op": "list"},
                {"op": "exec_and_await_list_changed", "command": grant, "timeout": 30},
                {"op": "list"},
            ]),
        );
        assert_eq!(results[1]["changed"], true, "{mode}: {results:?}");
        let (before, after) = if verb == "add" {
            (json!(["whoami"]), json!(["whoami", "echo_echo"]))
        } else {
            (json!(["whoami", "echo_echo"]), json!(["whoami"]))
        };
        assert_eq!(results[0]["tools"], before, "{mode}");
        assert_eq!(results[2]["tools"], after, "{mode}");
    }
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}
