//! The egress proxy end to end: tools in real sandboxes reach local HTTPS upstreams (their
//! certificates generated here, their names resolved by chiron's `resolve` map) through the
//! proxy, with Python `urllib`, `curl` and Node's `fetch`; secrets are injected only as manifests declare
//! and scrubbed from what comes back; every refusal is audited; with trace logging, no secret
//! byte reaches logs, tool output, audit rows or any table.

use std::io::Write;
use std::process::Stdio;

use serde_json::{json, Value};

use crate::mcp_sdk::{bearer, http_get, probe, shipped_tools};
use crate::support::Chiron;
use crate::upstream::{self, Upstream};

const ALICE_GITHUB: &str = "ghp_AliceOwnSecretValue0123456789";
const ALICE_GITHUB_NEW: &str = "ghp_AliceRotatedValue9876543210";
const TEAM_SLACK: &str = "xoxb-team-wide-secret-value-42";

/// A command package whose tool runs the Python code it is given.
fn code_package(chiron: &Chiron, name: &str, egress: &str) {
    let dir = chiron.dir.path().join("pkgs").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("chiron-tool.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"python3\", \"run.py\"]\n\n[[tools]]\nname = \"run\"\ninput_schema = {{ type = \"object\", properties = {{ code = {{ type = \"string\" }} }}, required = [\"code\"] }}\n\n[egress]\nhosts = [\n{egress}\n]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("run.py"),
        "import json, sys\nexec(json.load(sys.stdin)['arguments']['code'])\n",
    )
    .unwrap();
}

fn set_secret(chiron: &mut Chiron, name: &str, owner: &[&str], value: &str) {
    let mut args = vec!["secret", "set", name];
    args.extend_from_slice(owner);
    let mut child = chiron
        .command(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    chiron
        .logs
        .push_str(&String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "secret set failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Python for a tool: GET `url` with urllib (through the proxy from the environment) and print
/// `status|x-echo header|body`, or the error.
fn urllib_get(url: &str, headers: &str) -> String {
    format!(
        r#"
import urllib.request, urllib.error
request = urllib.request.Request({url:?}, headers={headers})
try:
    with urllib.request.urlopen(request, timeout=20) as response:
        print(response.status, "|", response.headers.get("x-echo"), "|", response.read().decode())
except urllib.error.HTTPError as err:
    print("HTTPError", err.code, "|", err.headers.get("proxy-status"), "|", err.read().decode())
except Exception as err:
    print("Error", "|", repr(err))
"#
    )
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| result.to_string())
}

struct Setup {
    chiron: Chiron,
    upstream: Upstream,
    alice: String,
    bob: String,
}

fn setup() -> Setup {
    let upstream = upstream::start(&["api.github.com", "slack.com", "denied.test", "private.test"]);
    let mut chiron = Chiron::new();
    chiron.set_env("RUST_LOG", "trace");
    let ca = chiron.dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, &upstream.ca_pem).unwrap();
    code_package(
        &chiron,
        "net",
        r#"  { host = "api.github.com", secrets = [ { name = "GITHUB_TOKEN", inject = "header", header = "Authorization", template = "token {value}" } ] },
  { host = "slack.com", secrets = [ { name = "SLACK_TOKEN", inject = "placeholder" } ] },
  { host = "private.test" },"#,
    );
    code_package(&chiron, "bare", r#"  { host = "api.github.com" },"#);
    // Node's fetch, for the `net` tool to run: a link to (or a copy of) a Node.js 22 in the
    // package, which the sandbox mounts.
    let node = chiron.dir.path().join("pkgs/net/node");
    if std::fs::hard_link(crate::support::node(), &node).is_err() {
        std::fs::copy(crate::support::node(), &node).unwrap();
    }
    let pkgs = chiron.dir.path().join("pkgs").canonicalize().unwrap();
    let port = upstream.addr.port();
    std::fs::write(
        chiron.dir.path().join("chiron.toml"),
        format!(
            r#"[tools]
dirs = ["{shipped}", "{pkgs}"]
watch = false

[egress]
allowed_networks = ["127.0.0.1/32"]
extra_ca = "{ca}"

[egress.resolve]
"api.github.com:80" = "127.0.0.1:{plain}"
"api.github.com" = "127.0.0.1:{port}"
"slack.com" = "127.0.0.1:{port}"
"denied.test" = "127.0.0.1:{port}"
"private.test" = "127.0.0.2:{port}"
"#,
            shipped = shipped_tools(),
            pkgs = pkgs.display(),
            ca = ca.display(),
            plain = upstream.plain_addr.port(),
        ),
    )
    .unwrap();
    chiron.ok(&["init"]);
    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["principal", "add", "bob"]);
    for package in ["github", "slack", "net", "bare"] {
        chiron.ok(&["grant", "add", package, "--principal", "alice"]);
    }
    chiron.ok(&["grant", "add", "net", "--principal", "bob"]);
    set_secret(
        &mut chiron,
        "GITHUB_TOKEN",
        &["--principal", "alice"],
        ALICE_GITHUB,
    );
    set_secret(&mut chiron, "SLACK_TOKEN", &["--team"], TEAM_SLACK);
    let alice = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();
    let bob = chiron
        .ok(&["token", "issue", "--principal", "bob"])
        .trim()
        .to_owned();
    Setup {
        chiron,
        upstream,
        alice,
        bob,
    }
}

fn run(url: &str, token: &str, tool: &str, code: &str) -> Value {
    let results = probe(
        url,
        bearer(token),
        "legacy",
        json!([{"op": "call", "name": tool, "arguments": {"code": code}}]),
    );
    results[0].clone()
}

#[test]
fn egress_injects_only_declared_secrets_scrubs_them_and_audits_everything() {
    let Setup {
        mut chiron,
        upstream,
        alice,
        bob,
    } = setup();
    let server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());
    let mut outputs = Vec::new();

    // The shipped github package, end to end: the upstream gets alice's token.
    let results = probe(
        &url,
        bearer(&alice),
        "legacy",
        json!([
            {"op": "call", "name": "github_get_issue", "arguments": {"owner": "o", "repo": "r", "number": 1}},
            {"op": "call", "name": "slack_list_channels", "arguments": {}},
        ]),
    );
    assert_eq!(results[0]["isError"], false, "{results:?}");
    assert_eq!(results[0]["structuredContent"]["title"], "Proxy works");
    let github = upstream.seen_at("/repos/o/r/issues/1");
    assert_eq!(github.len(), 1);
    assert_eq!(
        github[0].authorization.as_deref(),
        Some(format!("Bearer {ALICE_GITHUB}").as_str())
    );
    assert_eq!(
        results[1]["structuredContent"]["channels"][0]["name"], "general",
        "{results:?}"
    );
    let slack = upstream.seen_at("/api/conversations.list");
    assert_eq!(
        slack[0].authorization.as_deref(),
        Some(format!("Bearer {TEAM_SLACK}").as_str())
    );
    assert!(github[0]
        .headers
        .iter()
        .all(|(k, _)| k != "proxy-authorization"));
    assert!(
        github[0].host.starts_with("api.github.com"),
        "{:?}",
        github[0]
    );
    outputs.push(results.clone());

    // urllib: the upstream echoes the injected header back raw (split across chunks), base64-
    // and URL-encoded and in a header; the tool sees none of it.
    let echoed = run(
        &url,
        &alice,
        "net_run",
        &urllib_get("https://api.github.com/echo", "{}"),
    );
    let out = text(&echoed);
    assert!(out.starts_with("200 |"), "{out}");
    assert!(
        !out.contains(ALICE_GITHUB),
        "secret reached the tool: {out}"
    );
    assert_eq!(out.matches("[redacted by chiron]").count(), 4, "{out}");
    assert_eq!(
        upstream.seen_at("/echo")[0].authorization.as_deref(),
        Some(format!("token {ALICE_GITHUB}").as_str())
    );
    outputs.push(vec![echoed]);

    // curl, with the proxy and CA bundle from the environment chiron sets. It offers HTTP/2
    // and HTTP/1.1, and is answered in HTTP/1.1 (the tunnel's own upstream connection).
    let curl = run(
        &url,
        &alice,
        "net_run",
        "import subprocess\nr = subprocess.run(['curl', '-sS', '-D', '-', 'https://api.github.com/curl-echo'], capture_output=True, text=True)\nprint(r.returncode, r.stdout, r.stderr)",
    );
    let out = text(&curl);
    assert!(
        out.starts_with("0 ") && out.contains("\"path\":\"/curl-echo\""),
        "{out}"
    );
    assert!(!out.contains("HTTP/2"), "{out}");
    assert_eq!(
        upstream.seen_at("/curl-echo")[0].authorization.as_deref(),
        Some(format!("token {ALICE_GITHUB}").as_str())
    );
    outputs.push(vec![curl]);

    // A placeholder is replaced only for the host and package that declare it.
    let placed = run(
        &url,
        &alice,
        "net_run",
        &urllib_get(
            "https://slack.com/api/placed",
            "{'Authorization': 'Bearer chiron-secret:SLACK_TOKEN'}",
        ),
    );
    assert!(text(&placed).starts_with("200 |"), "{placed}");
    assert_eq!(
        upstream.seen_at("/api/placed")[0].authorization.as_deref(),
        Some(format!("Bearer {TEAM_SLACK}").as_str())
    );
    for (tool, target) in [
        ("net_run", "https://api.github.com/misplaced"),
        ("bare_run", "https://api.github.com/bare-placeholder"),
    ] {
        let refused = run(
            &url,
            &alice,
            tool,
            &urllib_get(target, "{'X-Key': 'chiron-secret:SLACK_TOKEN'}"),
        );
        assert!(
            text(&refused).starts_with("HTTPError 403"),
            "{tool}: {refused}"
        );
        outputs.push(vec![refused]);
    }
    assert!(upstream.seen_at("/misplaced").is_empty());
    assert!(upstream.seen_at("/bare-placeholder").is_empty());

    // Node's built-in fetch goes through the proxy too (chiron sets NODE_USE_ENV_PROXY).
    let fetched = run(
        &url,
        &alice,
        "net_run",
        r#"
import subprocess
script = "const r = await fetch('https://api.github.com/from-node'); console.log(r.status, await r.text())"
done = subprocess.run(["/tools/net/node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
print(done.returncode, "|", done.stdout.strip(), "|", done.stderr.strip()[-400:])
"#,
    );
    assert!(text(&fetched).starts_with("0 | 200 "), "{fetched}");
    assert_eq!(
        upstream.seen_at("/from-node")[0].authorization.as_deref(),
        Some(format!("token {ALICE_GITHUB}").as_str())
    );
    outputs.push(vec![fetched]);

    // Plain http:// to a declared host is forwarded, but never with a secret.
    let plain = run(
        &url,
        &alice,
        "net_run",
        &urllib_get("http://api.github.com/plain-http", "{}"),
    );
    assert!(text(&plain).starts_with("200 |"), "{plain}");
    let seen = upstream.seen_at("/plain-http");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, None);
    assert!(seen[0]
        .headers
        .iter()
        .all(|(k, _)| k != "proxy-authorization"));

    // A package that does not declare the secret never gets it, even on a host another of
    // the principal's packages declares it for.
    let bare = run(
        &url,
        &alice,
        "bare_run",
        &urllib_get("https://api.github.com/bare", "{}"),
    );
    assert!(text(&bare).starts_with("200 |"), "{bare}");
    assert_eq!(upstream.seen_at("/bare")[0].authorization, None);

    // Undeclared host: 403 at CONNECT. Internal address: refused at dial.
    let denied = run(
        &url,
        &alice,
        "net_run",
        &urllib_get("https://denied.test/x", "{}"),
    );
    assert!(text(&denied).contains("403"), "{denied}");
    let private = run(
        &url,
        &alice,
        "net_run",
        &urllib_get("https://private.test/x", "{}"),
    );
    let out = text(&private);
    assert!(
        out.starts_with("HTTPError 403") && out.contains("destination_ip_prohibited"),
        "{out}"
    );
    assert!(upstream.seen_at("/x").is_empty());

    // SNI and Host must agree with the CONNECT target.
    let mismatch = run(
        &url,
        &alice,
        "net_run",
        r#"
import base64, os, socket, ssl, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
def tunnel():
    s = socket.create_connection((proxy.hostname, proxy.port))
    s.sendall(f"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    assert b" 200 " in s.recv(4096)
    return s
context = ssl.create_default_context()
try:
    context.wrap_socket(tunnel(), server_hostname="slack.com")
    print("sni-accepted")
except ssl.SSLError:
    print("sni-refused")
t = context.wrap_socket(tunnel(), server_hostname="api.github.com")
t.sendall(b"GET /host-mismatch HTTP/1.1\r\nHost: slack.com\r\nConnection: close\r\n\r\n")
print(t.recv(4096).decode().splitlines()[0])
"#,
    );
    let out = text(&mismatch);
    assert!(out.contains("sni-refused") && out.contains("421"), "{out}");
    assert!(upstream.seen_at("/host-mismatch").is_empty());

    // Bob runs the same package: alice's secret never reaches his requests.
    let bobs = run(
        &url,
        &bob,
        "net_run",
        &urllib_get("https://api.github.com/bob", "{}"),
    );
    assert!(text(&bobs).starts_with("200 |"), "{bobs}");
    assert_eq!(upstream.seen_at("/bob")[0].authorization, None);

    // A changed secret is used on the next request; a deleted one is gone.
    set_secret(
        &mut chiron,
        "GITHUB_TOKEN",
        &["--principal", "alice"],
        ALICE_GITHUB_NEW,
    );
    run(
        &url,
        &alice,
        "net_run",
        &urllib_get("https://api.github.com/changed", "{}"),
    );
    assert_eq!(
        upstream.seen_at("/changed")[0].authorization.as_deref(),
        Some(format!("token {ALICE_GITHUB_NEW}").as_str())
    );
    chiron.ok(&["secret", "delete", "GITHUB_TOKEN", "--principal", "alice"]);
    run(
        &url,
        &alice,
        "net_run",
        &urllib_get("https://api.github.com/deleted", "{}"),
    );
    assert_eq!(upstream.seen_at("/deleted")[0].authorization, None);

    // The proxy's counts are metrics.
    let metrics = http_get(&format!("{}/metrics", chiron.base()));
    let counted = |outcome: &str| -> u64 {
        let line = format!("chiron_egress_requests{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line}in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(counted("ok") >= 8, "{metrics}");
    assert!(
        counted("denied_host") >= 1 && counted("mismatch") >= 2,
        "{metrics}"
    );
    assert_eq!(counted("secrets_unavailable"), 0, "{metrics}");
    // Storage took every audit row.
    for table in ["egress_requests", "tool_calls"] {
        let line = format!("chiron_audit_rows_dropped{{table=\"{table}\"}} 0");
        assert!(metrics.lines().any(|l| l == line), "no {line} in {metrics}");
    }

    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0));

    // The audit: refusals and successes, linked to their tool calls, names but no values.
    let egress: Vec<Value> = chiron
        .ok(&["audit", "egress", "--json", "--limit", "200"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcome = |o: &str| egress.iter().filter(|r| r["outcome"] == o).count();
    assert!(outcome("ok") >= 8, "{egress:?}");
    assert!(outcome("denied_host") >= 1, "{egress:?}");
    assert!(outcome("denied_address") >= 1, "{egress:?}");
    assert!(outcome("placeholder_refused") >= 2, "{egress:?}");
    assert!(outcome("mismatch") >= 2, "{egress:?}");
    // The text form shows the outcome, time and sizes of each request.
    let text = chiron.ok(&["audit", "egress", "--limit", "200"]);
    assert!(
        text.lines()
            .any(|l| l.contains("-> 200 ok ") && l.contains("ms out=") && l.contains("B in=")),
        "{text}"
    );
    let calls: Vec<Value> = chiron
        .ok(&["audit", "search", "--json", "--tool", "github_get_issue"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let linked: Vec<&Value> = egress
        .iter()
        .filter(|r| r["call_id"] == calls[0]["call_id"])
        .collect();
    assert_eq!(linked.len(), 1, "{egress:?}");
    assert_eq!(linked[0]["injected"], json!(["GITHUB_TOKEN"]));
    assert_eq!(linked[0]["host"], "api.github.com");
    assert_eq!(linked[0]["path"], "/repos/o/r/issues/1");

    // No secret byte anywhere: logs (trace level), tool outputs, audit, every table.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tables = runtime.block_on(async {
        let url = format!("sqlite:{}", chiron.data_dir().join("chiron.db").display());
        let store = chiron_store::Store::connect(&chiron_store::ConnectOptions {
            url,
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .unwrap();
        let dump = chiron_store::testing::dump_all_tables(&store).await;
        store.close().await;
        dump
    });
    let tail = chiron.ok(&["audit", "tail", "--limit", "500"]);
    let everything = format!(
        "{logs}\n{}\n{outputs:?}\n{egress:?}\n{tables}\n{tail}",
        chiron.logs
    );
    for secret in [ALICE_GITHUB, ALICE_GITHUB_NEW, TEAM_SLACK] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    assert!(
        tables.contains("secrets"),
        "the dump covers the secrets table"
    );
}

#[test]
fn without_the_right_master_key_nothing_is_forwarded() {
    let Setup {
        mut chiron,
        upstream,
        alice,
        ..
    } = setup();
    // A different, well-formed key: the stored values cannot be opened.
    chiron.set_env(
        "CHIRON_MASTER_KEY",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let server = chiron.serve(&["serve"]);
    let url = format!("{}/mcp", chiron.base());
    let refused = run(
        &url,
        &alice,
        "bare_run",
        &urllib_get("https://api.github.com/no-key", "{}"),
    );
    let out = text(&refused);
    assert!(out.starts_with("HTTPError 503"), "{out}");
    assert!(out.contains("master key"), "the refusal says why: {out}");
    assert!(upstream.seen_at("/no-key").is_empty());
    server.terminate();

    // No key at all (the key file removed): the same.
    std::fs::remove_file(chiron.data_dir().join("master.key")).unwrap();
    let mut chiron = chiron;
    chiron.set_env("CHIRON_MASTER_KEY", "");
    let server = chiron.serve(&["serve"]);
    let refused = run(
        &url,
        &alice,
        "bare_run",
        &urllib_get("https://api.github.com/no-key", "{}"),
    );
    let out = text(&refused);
    assert!(
        out.starts_with("HTTPError 503") && out.contains("master key"),
        "{out}"
    );
    assert!(upstream.seen_at("/no-key").is_empty());
    server.terminate();
}

#[test]
fn the_standalone_proxy_serves_a_runner_credential_and_refuses_a_revoked_one() {
    let Setup {
        mut chiron,
        upstream,
        ..
    } = setup();
    // The standalone proxy listens where the harness expects a server.
    let listen = format!("127.0.0.1:{}", chiron.port);
    chiron.set_env("CHIRON_EGRESS__LISTEN", &listen);
    let issued = chiron.run(&[
        "egress",
        "issue",
        "--principal",
        "alice",
        "--package",
        "net",
    ]);
    assert!(issued.status.success());
    let credential = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    let id = String::from_utf8_lossy(&issued.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("egress credential "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let proxy = chiron.serve(&["egress", "serve"]);
    let ca = std::fs::read(chiron.data_dir().join("egress/ca.pem")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let get = |credential: &str, path: &str| {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .proxy(reqwest::Proxy::all(format!("http://chiron:{credential}@{listen}")).unwrap())
            .build()
            .unwrap();
        let url = format!("https://api.github.com{path}");
        runtime.block_on(async move {
            match client.get(url).send().await {
                Ok(response) => response.status().as_u16().to_string(),
                Err(err) => format!("error: {err:?}"),
            }
        })
    };
    assert_eq!(get(&credential, "/standalone"), "200");
    assert_eq!(
        upstream.seen_at("/standalone")[0].authorization.as_deref(),
        Some(format!("token {ALICE_GITHUB}").as_str())
    );
    chiron.ok(&["egress", "revoke", &id]);
    let refused = get(&credential, "/after-revoke");
    let auth_required =
        |answer: &str| answer.contains("407") || answer.contains("ProxyAuthRequired");
    assert!(auth_required(&refused), "{refused}");
    assert!(auth_required(&get("chre_madeup", "/made-up")));
    assert!(upstream.seen_at("/after-revoke").is_empty());
    let (code, logs) = proxy.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(!logs.contains(&credential) && !logs.contains(ALICE_GITHUB));
}
