//! Real sandboxes: the local backend behind the runner pool, running tools through
//! `chiron runner-agent`. Escape attempts are each paired with a positive control.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chiron_core::PrincipalId;
use chiron_runner::egress::{DenyEgress, EgressHook, RunnerEgress};
use chiron_runner::local::{LocalBackend, LocalConfig, Mounts};
use chiron_runner::{CommandCall, CommandOutcome, PoolConfig, RunnerPool, StdioCall, ToolRunner};
use chiron_tools::{PackageKind, ToolPackage};

struct Sandbox {
    pool: Arc<RunnerPool>,
    backend: Arc<LocalBackend>,
    data: tempfile::TempDir,
    package: Arc<ToolPackage>,
    /// An `mcp-stdio` package: a small stdio MCP server (see [`FAKE_SERVER`]).
    stdio: Arc<ToolPackage>,
}

/// A minimal stdio MCP server for the runner tests: `pid` answers with its pid and proxy
/// variable, `die` exits, `hang` never answers.
const FAKE_SERVER: &str = r#"
import json, os, sys, time
def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    message = json.loads(line)
    method, ident = message.get("method"), message.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": ident, "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "fake", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": ident, "result": {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("pid", "die", "hang")]}})
    elif method == "tools/call":
        name = message["params"]["name"]
        if name == "die":
            os._exit(3)
        if name == "hang":
            time.sleep(3600)
        text = json.dumps({"pid": os.getpid(), "proxy": os.environ.get("HTTPS_PROXY", "")})
        send({"jsonrpc": "2.0", "id": ident, "result": {"content": [{"type": "text", "text": text}]}})
    elif ident is not None:
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": "unknown method"}})
"#;

/// A package whose one tool runs `python3 -c <code>` with the call's arguments on stdin.
fn sandbox() -> Sandbox {
    sandbox_with(true, Arc::new(DenyEgress))
}

/// With `cgroups` false, limits fall back to rlimits; that sandbox's agent is also started the
/// other way, as `chiron runner-agent` (the slim `chiron-runner-agent` everywhere else).
fn sandbox_with(cgroups: bool, egress: Arc<dyn EgressHook>) -> Sandbox {
    // Agent failures are logged by the backend; show them in the test output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let data = tempfile::tempdir().unwrap();
    // The sandbox runs as an unprivileged host id that must pass through to its home.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::create_dir_all(data.path().join("data")).unwrap();
    std::fs::set_permissions(
        data.path().join("data"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let tools = data.path().join("tools/probe");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(
        tools.join("probe.py"),
        "import json, sys\nrequest = json.load(sys.stdin)\nexec(request['arguments']['code'])\n",
    )
    .unwrap();
    let package = Arc::new(ToolPackage {
        dir: tools.clone(),
        name: "probe".into(),
        version: "1".into(),
        description: String::new(),
        kind: PackageKind::Command,
        command: vec!["python3".into(), "probe.py".into()],
        env: Default::default(),
        source: None,
        timeout: Duration::from_secs(120),
        tools: vec![],
        egress: vec![],
    });
    let stdio_dir = data.path().join("tools/fake");
    std::fs::create_dir_all(&stdio_dir).unwrap();
    std::fs::write(stdio_dir.join("server.py"), FAKE_SERVER).unwrap();
    let stdio = Arc::new(ToolPackage {
        dir: stdio_dir.clone(),
        name: "fake".into(),
        kind: PackageKind::McpStdio,
        command: vec!["python3".into(), "server.py".into()],
        ..(*package).clone()
    });
    let config = LocalConfig {
        agent: if cgroups {
            vec![env!("CARGO_BIN_EXE_chiron-runner-agent").into()]
        } else {
            vec![env!("CARGO_BIN_EXE_chiron").into(), "runner-agent".into()]
        },
        data_dir: data.path().join("data"),
        mounts: Mounts {
            tools: BTreeMap::from([("probe".to_owned(), tools), ("fake".to_owned(), stdio_dir)]),
            ..Default::default()
        },
        ca_bundle: None,
        memory_limit: 256 * 1024 * 1024,
        pids_limit: 64,
        cpus: 1.0,
        cgroups,
    };
    let backend = Arc::new(LocalBackend::with_egress(config, egress));
    let pool = Arc::new(RunnerPool::new(backend.clone(), PoolConfig::default()));
    Sandbox {
        pool,
        backend,
        data,
        package,
        stdio,
    }
}

impl Sandbox {
    async fn run(&self, principal: PrincipalId, code: &str) -> CommandOutcome {
        self.run_with_timeout(principal, code, Duration::from_secs(30))
            .await
    }

    async fn run_with_timeout(
        &self,
        principal: PrincipalId,
        code: &str,
        timeout: Duration,
    ) -> CommandOutcome {
        self.pool
            .run_command(CommandCall {
                principal,
                package: self.package.clone(),
                tool: "probe".into(),
                arguments: serde_json::json!({ "code": code }),
                timeout,
                call_id: "test".into(),
            })
            .await
            .unwrap()
    }
}

impl Sandbox {
    /// Calls a tool of the fake stdio server; `None` when the timeout passed.
    async fn call_stdio(
        &self,
        principal: PrincipalId,
        tool: &str,
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, chiron_runner::RunnerError> {
        let outcome = self
            .pool
            .call_stdio(StdioCall {
                principal,
                package: self.stdio.clone(),
                tool: tool.into(),
                arguments: serde_json::Map::new(),
                timeout,
                call_id: "test".into(),
            })
            .await?;
        Ok(outcome.result.map(|result| {
            let text = serde_json::to_value(&result.content).unwrap()[0]["text"]
                .as_str()
                .unwrap()
                .to_owned();
            serde_json::from_str(&text).unwrap()
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_servers_are_discovered_kept_warm_and_restarted() {
    let s = sandbox();
    let tools = s.backend.discover(&s.stdio).await.unwrap();
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["pid", "die", "hang"]);

    let alice = PrincipalId::new();
    let long = Duration::from_secs(30);
    let first = s.call_stdio(alice, "pid", long).await.unwrap().unwrap();
    let second = s.call_stdio(alice, "pid", long).await.unwrap().unwrap();
    assert_eq!(first["pid"], second["pid"], "the server was not kept warm");
    assert!(first["pid"].as_u64().unwrap() < 100, "not in the sandbox");
    assert!(
        first["proxy"]
            .as_str()
            .unwrap()
            .starts_with("http://chiron:"),
        "{first}"
    );

    // A server that dies fails its call; the next call starts it again in the same runner.
    assert!(s.call_stdio(alice, "die", long).await.is_err());
    let third = s.call_stdio(alice, "pid", long).await.unwrap().unwrap();
    assert_ne!(third["pid"], first["pid"]);
    // A server that hangs past the timeout is stopped; the next call gets a fresh one.
    let hung = s
        .call_stdio(alice, "hang", Duration::from_millis(500))
        .await
        .unwrap();
    assert!(hung.is_none());
    let fourth = s.call_stdio(alice, "pid", long).await.unwrap().unwrap();
    assert_ne!(fourth["pid"], third["pid"]);
    assert_eq!(
        s.pool
            .stats()
            .created
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_gets_its_own_proxy_credential_and_the_listener_answers() {
    let s = sandbox();
    let alice = PrincipalId::new();
    // Positive control for egress: the runner's proxy listener is reachable from inside
    // (without an egress proxy configured it refuses with 403 and Proxy-Status).
    let code = "import os, socket\ns = socket.create_connection(('127.0.0.1', 3128))\ns.sendall(b'CONNECT example.com:443 HTTP/1.1\\r\\nHost: example.com:443\\r\\n\\r\\n')\nreply = s.recv(4096).decode()\nprint(reply.splitlines()[0], '|', [l for l in reply.splitlines() if l.startswith('Proxy-Status')][0], '|', os.environ['HTTPS_PROXY'], os.environ['http_proxy'] == os.environ['HTTPS_PROXY'])";
    let first = stdout(&s.run(alice, code).await);
    let second = stdout(&s.run(alice, code).await);
    let fields: Vec<&str> = first.split(" | ").collect();
    assert_eq!(fields[0], "HTTP/1.1 403 Forbidden", "{first}");
    assert!(fields[1].contains("destination_not_allowed"), "{first}");
    assert!(
        fields[2].starts_with("http://chiron:") && fields[2].ends_with("@127.0.0.1:3128 True"),
        "{first}"
    );
    let credential = |line: &str| line.split(" | ").nth(2).unwrap().to_owned();
    assert_ne!(
        credential(&first),
        credential(&second),
        "credentials are per process"
    );
}

/// Refuses egress like [`DenyEgress`] and records whose runners stopped.
#[derive(Default)]
struct RecordingEgress {
    stopped: std::sync::Mutex<Vec<PrincipalId>>,
}

impl EgressHook for RecordingEgress {
    fn serve(
        &self,
        runner: Arc<RunnerEgress>,
        listener: tokio::net::TcpListener,
        stop: tokio_util::sync::CancellationToken,
    ) {
        DenyEgress.serve(runner, listener, stop);
    }

    fn stopped(&self, principal: PrincipalId) {
        self.stopped.lock().unwrap().push(principal);
    }
}

#[tokio::test]
async fn the_egress_hook_hears_when_a_runner_stops() {
    let egress = Arc::new(RecordingEgress::default());
    let s = sandbox_with(true, egress.clone());
    let alice = PrincipalId::new();
    stdout(&s.run(alice, "print('up')").await);
    assert!(egress.stopped.lock().unwrap().is_empty());
    assert!(s.pool.stop(alice).await);
    assert_eq!(*egress.stopped.lock().unwrap(), [alice]);
}

fn stdout(outcome: &CommandOutcome) -> String {
    assert_eq!(
        outcome.exit_code,
        Some(0),
        "tool failed: {}",
        outcome.stderr_tail
    );
    String::from_utf8_lossy(&outcome.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_runs_in_a_persistent_sandbox() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let first = s.run(alice, "import os; open(os.path.expanduser('~/note'), 'w').write('kept'); print(os.getpid(), os.getuid())").await;
    let out = stdout(&first);
    let (pid, uid) = out.split_once(' ').unwrap();
    assert!(
        pid.parse::<u32>().unwrap() < 100,
        "not in a fresh pid namespace: {out}"
    );
    assert_eq!(uid, "1000");
    let second = s
        .run(
            alice,
            "import os; print(open(os.path.expanduser('~/note')).read())",
        )
        .await;
    assert_eq!(stdout(&second), "kept");
    assert_eq!(
        first.runner_id, second.runner_id,
        "the runner was not reused"
    );
    assert_eq!(
        s.pool
            .stats()
            .created
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let _ = PathBuf::from(s.data.path());
}

/// Runs `code` and returns what it printed, requiring success.
async fn probe(s: &Sandbox, principal: PrincipalId, code: &str) -> String {
    stdout(&s.run(principal, code).await)
}

const LIBC: &str = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_is_confined() {
    let s = sandbox();
    let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
    // Something secret on the host, next to where the gateway keeps its database.
    let secret = s.data.path().join("data/chiron.db");
    std::fs::write(&secret, "TOP-SECRET-DB").unwrap();

    // Positive controls: own home and /tmp are writable, the tool package is readable.
    assert_eq!(probe(&s, alice, "import os; open(os.path.expanduser('~/mine'), 'w').write('alice-data'); open('/tmp/t', 'w').write('x'); print(open('/tools/probe/probe.py').read()[:6])").await, "import");
    // The host's files are simply not there.
    // The gateway's config, master key and egress CA key, where the gateway keeps them.
    std::fs::create_dir_all(s.data.path().join("data/egress")).unwrap();
    let ca_key = s.data.path().join("data/egress/ca.key");
    std::fs::write(&ca_key, "CA-PRIVATE-KEY").unwrap();
    let master_key = s.data.path().join("data/master.key");
    std::fs::write(&master_key, "MASTER-KEY").unwrap();
    let config = s.data.path().join("chiron.toml");
    std::fs::write(&config, "[server]\n").unwrap();
    for host_file in [&secret, &ca_key, &master_key, &config] {
        let code = format!("import os\ntry:\n    open({:?}).read(); print('READ')\nexcept OSError as e: print(type(e).__name__)", host_file.display().to_string());
        assert_eq!(
            probe(&s, alice, &code).await,
            "FileNotFoundError",
            "{}",
            host_file.display()
        );
    }
    for path in [
        "/root",
        "/work",
        "/var/lib/postgresql",
        "/home/chiron/../../etc/shadow",
    ] {
        let code = format!("import os\nprint(os.path.exists({path:?}))");
        assert_eq!(probe(&s, alice, &code).await, "False", "{path} is visible");
    }
    // Writing outside home and /tmp fails.
    for path in ["/usr/evil", "/etc/evil", "/evil", "/tools/probe/evil"] {
        let code = format!("try:\n    open({path:?}, 'w').write('x'); print('WROTE')\nexcept OSError as e: print(e.errno)");
        let errno: i32 = probe(&s, alice, &code).await.parse().unwrap();
        assert!(
            [libc::EROFS, libc::EACCES, libc::EPERM].contains(&errno),
            "{path}: errno {errno}"
        );
    }
    // Another principal sees its own, empty home.
    assert_eq!(
        probe(
            &s,
            bob,
            "import os; print(sorted(os.listdir(os.path.expanduser('~'))))"
        )
        .await,
        "[]"
    );
    assert_eq!(
        probe(
            &s,
            alice,
            "import os; print(sorted(os.listdir(os.path.expanduser('~'))))"
        )
        .await,
        "['mine']"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_environment_and_network_are_private() {
    // Set before the sandbox starts, so the runner would inherit it if anything leaked.
    std::env::set_var("CHIRON_TEST_LEAK", "gateway-env");
    let s = sandbox();
    let alice = PrincipalId::new();
    // Host processes are invisible: only the sandbox's own few pids exist.
    let pids = probe(
        &s,
        alice,
        "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
    )
    .await;
    let pids: Vec<u32> = serde_json::from_str(&pids).unwrap();
    assert!(pids.len() < 10 && pids.contains(&1), "{pids:?}");
    assert!(!pids.contains(&std::process::id()) || std::process::id() < 10);
    // The environment is built from scratch.
    let env = probe(&s, alice, "import os; print(sorted(os.environ))").await;
    assert!(
        !env.contains("CHIRON_TEST_LEAK") && !env.contains("CARGO"),
        "{env}"
    );
    assert!(env.contains("HOME") && env.contains("PATH"));
    // The host's loopback is unreachable; the sandbox's own lo works (positive control).
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let code = format!(
        "import socket\nown = socket.socket(); own.bind(('127.0.0.1', 0)); own.listen(); c = socket.create_connection(own.getsockname(), timeout=5); print('own-ok')\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('HOST')\nexcept OSError as e: print(type(e).__name__)"
    );
    assert_eq!(
        probe(&s, alice, &code).await,
        "own-ok\nConnectionRefusedError"
    );
    let interfaces = probe(
        &s,
        alice,
        "import socket; print(sorted(n for _, n in socket.if_nameindex()))",
    )
    .await;
    assert_eq!(interfaces, "['lo']");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_operations_are_refused() {
    let s = sandbox();
    let alice = PrincipalId::new();
    // Positive control: fork works.
    assert_eq!(probe(&s, alice, "import os\npid = os.fork()\nif pid == 0: os._exit(7)\nprint(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))").await, "7");
    let attempts = [
        (
            "user namespace",
            "print(libc.unshare(0x10000000), ctypes.get_errno())",
        ),
        (
            "mount",
            "print(libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())",
        ),
        (
            "ptrace",
            "print(libc.ptrace(0, 0, None, None), ctypes.get_errno())",
        ),
        ("setuid root", "print(libc.setuid(0), ctypes.get_errno())"),
        (
            "bpf",
            "print(libc.syscall(321, 0, None, 0), ctypes.get_errno())",
        ),
        (
            "io_uring",
            "print(libc.syscall(425, 1, ctypes.create_string_buffer(120)), ctypes.get_errno())",
        ),
    ];
    for (what, code) in attempts {
        let out = probe(&s, alice, &format!("{LIBC}{code}")).await;
        let (ret, errno) = out.split_once(' ').unwrap();
        assert_eq!(ret, "-1", "{what} succeeded");
        assert_eq!(errno.parse::<i32>().unwrap(), libc::EPERM, "{what}: {out}");
    }
    // No capabilities at all.
    let caps = probe(&s, alice, "print([l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapBnd', 'NoNewPrivs'))])").await;
    assert_eq!(
        caps,
        "['0000000000000000', '0000000000000000', '0000000000000000', '1']"
    );
}

/// Prints, for each attempt on process `SERVER`, on the agent (PID 1) and on its own child,
/// `ok` or the errno's name; then the kernel's Landlock ABI.
const REACH: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def attempt(act):
    try:
        act()
        return 'ok'
    except OSError as err:
        return errno.errorcode[err.errno]
def read(path):
    with open(path, 'rb') as f:
        f.read(1)
def getfd(pid):
    pidfd = os.pidfd_open(pid)
    if libc.syscall(438, pidfd, 0, 0) < 0:
        raise OSError(ctypes.get_errno(), 'pidfd_getfd')
def reach(pid):
    return [attempt(lambda: read(f'/proc/{pid}/cmdline')),
            attempt(lambda: read(f'/proc/{pid}/environ')),
            attempt(lambda: open(f'/proc/{pid}/mem', 'rb').close()),
            attempt(lambda: os.readlink(f'/proc/{pid}/fd/0')),
            attempt(lambda: getfd(pid)),
            attempt(lambda: os.kill(pid, 0))]
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.read(r, 1)
    os._exit(0)
own = reach(child)
os.write(w, b'x')
os.waitpid(child, 0)
abi = libc.syscall(444, None, 0, 1)
print(' '.join(reach(SERVER) + reach(1) + own + [str(abi)]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_cannot_reach_into_other_tools_or_the_agent() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let long = Duration::from_secs(30);
    // Another package's warm server, whose environment holds its own proxy credential.
    let server = s.call_stdio(alice, "pid", long).await.unwrap().unwrap();
    let pid = server["pid"].as_u64().unwrap();
    let out = stdout(
        &s.run(alice, &REACH.replace("SERVER", &pid.to_string()))
            .await,
    );
    let fields: Vec<&str> = out.split(' ').collect();
    let (other, rest) = fields.split_at(6);
    let (agent, rest) = rest.split_at(6);
    let (own, abi) = rest.split_at(6);
    let abi: i64 = abi[0].parse().unwrap();
    // Positive control: the tool may inspect and signal its own child.
    assert_eq!(own, ["ok"; 6], "{out}");
    // Other processes are visible (`ps` works) but their environment, memory and descriptors
    // are out of reach; so are their signals where the kernel can confine them.
    let signal = if abi >= 6 { "EPERM" } else { "ok" };
    let expected = ["ok", "EACCES", "EACCES", "EACCES", "EPERM", signal];
    assert_eq!(other, expected, "another tool: {out}");
    assert_eq!(agent, expected, "the agent: {out}");
    // The server was not disturbed.
    let again = s.call_stdio(alice, "pid", long).await.unwrap().unwrap();
    assert_eq!(again["pid"], server["pid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_runaway_tools_and_the_runner_recovers() {
    if chiron_runner::host::cgroup_version(std::path::Path::new("/sys/fs/cgroup"))
        == chiron_runner::host::CgroupVersion::None
    {
        panic!("these machines have cgroups; limits must be enforced");
    }
    let s = sandbox();
    let alice = PrincipalId::new();
    // Below the limits: fine (positive controls).
    assert_eq!(
        probe(
            &s,
            alice,
            "b = bytearray(64 * 1024 * 1024); print(len(b) // (1024 * 1024))"
        )
        .await,
        "64"
    );
    // A fork bomb hits the pids limit.
    let forks = probe(&s, alice, "import os\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept BlockingIOError: pass\nprint(n)").await;
    let forks: u32 = forks.parse().unwrap();
    assert!(forks < 64, "fork bomb made {forks} processes");
    // Past the memory limit the tool is killed, not the runner.
    let hog = s
        .run(
            alice,
            "b = bytearray(1024 * 1024 * 1024); print('survived')",
        )
        .await;
    assert_ne!(
        hog.exit_code,
        Some(0),
        "allocation past the limit succeeded"
    );
    let after = s.run(alice, "print('alive')").await;
    assert_eq!(stdout(&after), "alive");
    assert_eq!(
        after.runner_id, hog.runner_id,
        "the runner itself should survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_out_of_pids_fails_new_calls_and_keeps_serving() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let s = sandbox();
    let alice = PrincipalId::new();
    // Positive control, which also starts the runner and makes the home.
    let first = s.run(alice, "print('ok')").await;
    assert_eq!(stdout(&first), "ok");
    let home = s.data.path().join("data/homes").join(alice.to_string());
    let gate = home.join("gate");
    let path = std::ffi::CString::new(gate.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
    std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A tool takes every pid the runner may have, says so, and holds them until the gate
    // opens.
    let hog = "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(3600)\n        n += 1\nexcept BlockingIOError: pass\nopen(os.path.expanduser('~/full'), 'w').close()\nopen(os.path.expanduser('~/gate')).read()\nprint(n)";
    let (pool, package) = (s.pool.clone(), s.package.clone());
    let holding = tokio::spawn(async move {
        pool.run_command(CommandCall {
            principal: alice,
            package,
            tool: "probe".into(),
            arguments: serde_json::json!({ "code": hog }),
            timeout: Duration::from_secs(60),
            call_id: "hog".into(),
        })
        .await
        .unwrap()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !home.join("full").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the tool never filled the pids"
        );
        tokio::task::yield_now().await;
    }
    // No pid left for the agent's call thread: this call fails, the runner stays.
    let refused = s.run(alice, "print('no room')").await;
    assert_eq!(refused.exit_code, Some(127), "{refused:?}");
    assert!(refused.stderr_tail.contains("no thread"), "{refused:?}");
    assert_eq!(refused.runner_id, first.runner_id);
    // Nor for a server start.
    let server = s.call_stdio(alice, "pid", Duration::from_secs(30)).await;
    let err = server.expect_err("a server started without a pid to spare");
    assert!(err.to_string().contains("no thread"), "{err}");
    // The gate opens, the tool ends with its children, and calls run again.
    std::fs::write(&gate, b"go").unwrap();
    let held = holding.await.unwrap();
    assert_eq!(held.exit_code, Some(0), "{held:?}");
    let after = s.run(alice, "print('alive')").await;
    assert_eq!(stdout(&after), "alive");
    assert_eq!(after.runner_id, first.runner_id);
    let server = s.call_stdio(alice, "pid", Duration::from_secs(30)).await;
    assert!(server.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cgroups_rlimits_stop_runaway_tools() {
    let s = sandbox_with(false, Arc::new(DenyEgress));
    let alice = PrincipalId::new();
    // Positive controls below the limits.
    assert_eq!(
        probe(
            &s,
            alice,
            "b = bytearray(64 * 1024 * 1024); print(len(b) // (1024 * 1024))"
        )
        .await,
        "64"
    );
    assert_eq!(probe(&s, alice, "import os\npid = os.fork()\nif pid == 0: os._exit(0)\nos.waitpid(pid, 0); print('forked')").await, "forked");
    // A fork bomb hits RLIMIT_NPROC; an allocation past the limit fails (RLIMIT_AS).
    let forks = probe(&s, alice, "import os\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept BlockingIOError: pass\nprint(n)").await;
    let forks: u32 = forks.parse().unwrap();
    assert!(forks < 64, "fork bomb made {forks} processes");
    let hog = probe(
        &s,
        alice,
        "try:\n    b = bytearray(1024 * 1024 * 1024); print('survived')\nexcept MemoryError: print('MemoryError')",
    )
    .await;
    assert_eq!(hog, "MemoryError");
    assert_eq!(probe(&s, alice, "print('alive')").await, "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tool_is_killed_with_its_children() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let hung = s
        .run_with_timeout(
            alice,
            "import os, time\nif os.fork() == 0: time.sleep(600)\ntime.sleep(600)",
            Duration::from_secs(1),
        )
        .await;
    assert!(hung.timed_out);
    // The child was in the call's process group and is gone too.
    let left = probe(
        &s,
        alice,
        "import os; print(sum(1 for p in os.listdir('/proc') if p.isdigit()))",
    )
    .await;
    assert!(left.parse::<u32>().unwrap() <= 3, "processes left: {left}");
    assert_eq!(probe(&s, alice, "print('next')").await, "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_fails_the_call_and_the_next_call_gets_a_new_one() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let first = s.run(alice, "print('up')").await;
    // Kill the whole sandbox from inside: PID 1 (the agent) cannot be signalled by the tool,
    // so stop it through the pool while a call is in flight.
    let pool = s.pool.clone();
    let slow = tokio::spawn({
        let s_pool = pool.clone();
        let package = s.package.clone();
        async move {
            s_pool
                .run_command(CommandCall {
                    principal: alice,
                    package,
                    tool: "probe".into(),
                    arguments: serde_json::json!({"code": "import time; print('started', flush=True); time.sleep(60)"}),
                    timeout: Duration::from_secs(120),
                    call_id: "slow".into(),
                })
                .await
        }
    });
    // Wait until the call is running inside the runner.
    while pool.list().first().map(|r| r.running) != Some(1) {
        tokio::task::yield_now().await;
    }
    assert!(pool.stop(alice).await);
    let failed = slow.await.unwrap();
    assert!(
        matches!(failed, Err(chiron_runner::RunnerError::Exited(_))),
        "{failed:?}"
    );
    let next = s.run(alice, "print('again')").await;
    assert_eq!(stdout(&next), "again");
    assert_ne!(next.runner_id, first.runner_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_stops_answering_is_replaced() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let first = s.run(alice, "print('up')").await;
    // Freeze the agent: it neither runs calls nor answers, but it does not exit either.
    stop_process(sandbox_init(&first.runner_id));
    let stuck = s
        .pool
        .run_command(CommandCall {
            principal: alice,
            package: s.package.clone(),
            tool: "probe".into(),
            arguments: serde_json::json!({"code": "print('never')"}),
            timeout: Duration::from_secs(1),
            call_id: "stuck".into(),
        })
        .await;
    assert!(
        matches!(&stuck, Err(chiron_runner::RunnerError::Exited(why)) if why.contains("stopped answering")),
        "{stuck:?}"
    );
    let next = s.run(alice, "print('again')").await;
    assert_eq!(stdout(&next), "again");
    assert_ne!(next.runner_id, first.runner_id);

    // The same when the agent is frozen while it starts a stdio server.
    stop_process(sandbox_init(&next.runner_id));
    let stuck = s.call_stdio(alice, "pid", Duration::from_secs(30)).await;
    assert!(
        matches!(&stuck, Err(chiron_runner::RunnerError::Server(why)) if why.contains("stopped answering")),
        "{stuck:?}"
    );
    let served = s
        .call_stdio(alice, "pid", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(served["pid"].as_u64().is_some(), "{served}");
}

/// The host pids of a runner's sandbox processes, from its pids cgroup.
fn sandbox_pids(runner: &str) -> Vec<i32> {
    let cgroup = PathBuf::from("/sys/fs/cgroup/pids/chiron").join(runner);
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    procs
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The host pid of a runner's sandbox PID 1 (its agent).
fn sandbox_init(runner: &str) -> i32 {
    sandbox_pids(runner)
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .any(|line| line.starts_with("NSpid:") && line.ends_with("\t1"))
            })
        })
        .expect("the sandbox's PID 1")
}

/// Freezes a process: it stays alive but neither runs nor answers.
fn stop_process(pid: i32) {
    // SAFETY: stopping a process of this test's own sandbox.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_leaves_no_process_behind() {
    let s = sandbox();
    let alice = PrincipalId::new();
    assert_eq!(probe(&s, alice, "print('up')").await, "up");
    let pids = sandbox_pids(&s.pool.list()[0].runner_id);
    assert!(!pids.is_empty());
    drop(s);
    // Every process of the sandbox is gone once the pool (and its runners) are dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pids
        .iter()
        .any(|pid| PathBuf::from(format!("/proc/{pid}")).exists())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox processes survived: {pids:?}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_start_is_reported() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let mut package = (*s.package).clone();
    package.command = vec!["no-such-program".into()];
    let package = Arc::new(package);
    // A failed exec is collected by the spawning thread, and the agent's reaper must never
    // take it first. The reaper waits for any child only while one exists, so one call stays
    // running throughout (it is dropped, unfinished, when the rounds are done).
    let holder = s.run_with_timeout(
        alice,
        "import time\ntime.sleep(600)",
        Duration::from_secs(600),
    );
    let rounds = async {
        for round in 0..25 {
            let calls = (0..4).map(|i| {
                s.pool.run_command(CommandCall {
                    principal: alice,
                    package: package.clone(),
                    tool: "x".into(),
                    arguments: serde_json::json!({}),
                    timeout: Duration::from_secs(5),
                    call_id: format!("c{round}-{i}"),
                })
            });
            for outcome in futures_util::future::join_all(calls).await {
                let outcome = outcome.unwrap();
                assert_eq!(outcome.exit_code, Some(127));
                assert!(
                    outcome.stderr_tail.contains("no-such-program"),
                    "{}",
                    outcome.stderr_tail
                );
            }
        }
    };
    tokio::select! {
        () = rounds => {}
        outcome = holder => panic!("the holding call ended: {outcome:?}"),
    }
    assert_eq!(probe(&s, alice, "print('still fine')").await, "still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descendant_holding_the_output_open_cannot_hang_the_call() {
    let s = sandbox();
    let alice = PrincipalId::new();
    // The grandchild leaves the call's process group and keeps stdout open for a minute.
    let code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\nprint('parent done', flush=True)";
    let outcome = s.run(alice, code).await;
    assert_eq!(stdout(&outcome), "parent done");
    assert_eq!(probe(&s, alice, "print('next')").await, "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_first_calls_start_one_sandbox() {
    let s = Arc::new(sandbox());
    let alice = PrincipalId::new();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.run(alice, "print('ok')").await })
        })
        .collect();
    let mut runners = std::collections::HashSet::new();
    for call in calls {
        let outcome = call.await.unwrap();
        assert_eq!(stdout(&outcome), "ok");
        runners.insert(outcome.runner_id);
    }
    assert_eq!(runners.len(), 1, "{runners:?}");
    assert_eq!(
        s.pool
            .stats()
            .created
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_input_and_output_pass_through_both_pipes() {
    let s = sandbox();
    let alice = PrincipalId::new();
    // Input and outputs several times a pipe's buffer, stderr written before stdout: a call
    // that fed stdin or read one stream at a time would deadlock here.
    let pad = "x".repeat(300_000);
    let code = format!(
        "import sys\npad = '{pad}'\nsys.stderr.write('e' * 100000 + 'END')\nsys.stderr.flush()\nsys.stdout.write('o' * 1000000)\nprint(len(pad))"
    );
    let outcome = s.run(alice, &code).await;
    let out = String::from_utf8_lossy(&outcome.stdout).into_owned();
    assert_eq!(outcome.exit_code, Some(0), "{}", outcome.stderr_tail);
    assert_eq!(out.len(), 1_000_000 + "300000\n".len());
    assert!(out.ends_with("o300000\n"), "{}", &out[out.len() - 20..]);
    assert!(outcome.stderr_tail.ends_with("eeeEND"));
    assert!(outcome.stderr_tail.len() <= chiron_runner::agent::STDERR_TAIL);
}
