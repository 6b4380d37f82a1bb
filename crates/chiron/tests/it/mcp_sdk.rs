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
fn probe(url: &str, headers: Value, mode: &str, steps: Value) -> Vec<Value> {
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

fn bearer(token: &str) -> Value {
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
        json!([{"op": "call", "name": "whoami"}]),
    );
    assert_eq!(
        results[0]["structuredContent"]["principal_name"], "demo",
        "{results:?}"
    );
    assert!(handover.contains(&format!(
        "claude mcp add --transport http chiron {url} --header \"Authorization: Bearer chi_"
    )));
    drop(server);
}
