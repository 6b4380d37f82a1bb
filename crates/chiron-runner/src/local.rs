//! The local sandbox backend: each runner is a `chiron runner-agent` process started in new
//! user, mount, network, IPC, UTS and PID namespaces (see [`crate::agent`] for what it builds
//! inside). The gateway writes its uid/gid maps — sandbox root and uid 1000 map to two
//! unprivileged host ids derived from the principal — puts it in cgroup v1 memory and pids
//! groups when the host allows, and then talks to it over its stdin and stdout.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use chiron_core::PrincipalId;

use crate::agent::{AgentSpec, Request, Response, RunRequest};
use crate::pool::{Runner, RunnerBackend};
use crate::tool::{CommandCall, CommandOutcome, RunnerError};

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The program that runs the agent (the chiron binary) and the arguments before the spec.
    pub agent: Vec<String>,
    /// Where runner roots and principal homes live (`<data_dir>/runners`, `<data_dir>/homes`).
    pub data_dir: PathBuf,
    /// Tool packages to mount, by name.
    pub tools: BTreeMap<String, PathBuf>,
    /// Memory limit per runner in bytes (cgroup v1, when available).
    pub memory_limit: u64,
    /// Process limit per runner (cgroup v1, when available).
    pub pids_limit: u64,
}

/// Starts sandboxed runners on this host.
pub struct LocalBackend {
    config: LocalConfig,
    /// The packages mounted into runners started from now on; replaced on reload.
    tools: Mutex<BTreeMap<String, PathBuf>>,
}

impl LocalBackend {
    /// A backend with `config`.
    pub fn new(config: LocalConfig) -> Self {
        let tools = Mutex::new(config.tools.clone());
        Self { config, tools }
    }

    /// Replaces the packages mounted into runners started from now on.
    pub fn set_tools(&self, tools: BTreeMap<String, PathBuf>) {
        *self.tools.lock().expect("invariant: tools lock") = tools;
    }

    /// Removes what runners of an earlier gateway left behind: their processes are gone (each
    /// sandbox exits when the gateway holding its stdin dies), so their cgroups are empty and
    /// their root directories unused. Returns how many leftovers were removed.
    pub fn clean_leftovers(&self) -> usize {
        let mut removed = 0;
        for controller in ["memory", "pids"] {
            let parent = PathBuf::from("/sys/fs/cgroup")
                .join(controller)
                .join("chiron");
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let empty = std::fs::read_to_string(path.join("cgroup.procs"))
                    .is_ok_and(|p| p.trim().is_empty());
                if path.is_dir() && empty && std::fs::remove_dir(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("runners")) {
            for entry in entries.filter_map(Result::ok) {
                if std::fs::remove_dir(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// The first of the two host ids a principal's sandbox maps to (root, then uid 1000).
fn host_id_base(principal: PrincipalId) -> u32 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    principal.hash(&mut hasher);
    200_000 + (hasher.finish() % 100_000) as u32 * 2
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// A running local sandbox.
pub struct LocalRunner {
    id: String,
    principal: PrincipalId,
    /// Requests are written one line at a time under this lock.
    stdin: tokio::sync::Mutex<ChildStdin>,
    /// Calls waiting for their response line; drained with an error when the agent exits.
    waiters: Waiters,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
    child: Mutex<Option<Child>>,
    cgroups: Vec<PathBuf>,
    root: PathBuf,
}

fn write_cgroup(
    controller: &str,
    id: &str,
    settings: &[(&str, String)],
    pid: u32,
) -> Option<PathBuf> {
    let dir = PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join("chiron")
        .join(id);
    std::fs::create_dir_all(&dir).ok()?;
    for (file, value) in settings {
        if std::fs::write(dir.join(file), value).is_err() {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).ok()?;
    Some(dir)
}

#[async_trait]
impl RunnerBackend for LocalBackend {
    async fn start(&self, principal: PrincipalId) -> Result<Arc<dyn Runner>, RunnerError> {
        let start_err =
            |what: &str, err: std::io::Error| RunnerError::Start(format!("{what}: {err}"));
        let id = format!("runner-{}", uuid_like());
        let base = host_id_base(principal);
        use std::os::unix::fs::PermissionsExt;
        // The agent runs as an unprivileged host id: it may pass through these directories
        // (mode 0711) but list none of them.
        for dir in ["runners", "homes"] {
            let dir = self.config.data_dir.join(dir);
            std::fs::create_dir_all(&dir).map_err(|e| start_err("runner directories", e))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| start_err("runner directories", e))?;
        }
        let root = self.config.data_dir.join("runners").join(&id);
        std::fs::create_dir_all(&root).map_err(|e| start_err("runner root", e))?;
        let home = self
            .config
            .data_dir
            .join("homes")
            .join(principal.to_string());
        std::fs::create_dir_all(&home).map_err(|e| start_err("home", e))?;
        std::os::unix::fs::chown(&home, Some(base + 1), Some(base + 1))
            .map_err(|e| start_err("chown home", e))?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| start_err("chmod home", e))?;

        let tools = self.tools.lock().expect("invariant: tools lock").clone();
        let spec = AgentSpec {
            root: root.clone(),
            home,
            tools,
        };
        let spec = serde_json::to_string(&spec).map_err(|e| RunnerError::Start(e.to_string()))?;
        let (program, args) = self
            .config
            .agent
            .split_first()
            .ok_or_else(|| RunnerError::Start("no agent program".into()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .arg(spec)
            .env_clear()
            .envs(std::env::var_os("CHIRON_AGENT_TRACE").map(|v| ("CHIRON_AGENT_TRACE", v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: runs in the forked child before exec; only async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || {
                // Become the unprivileged host id that the sandbox's root maps to, so nothing
                // in the sandbox is ever the host's root.
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(base, base, base) != 0
                    || libc::setresuid(base, base, base) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                let flags = libc::CLONE_NEWUSER
                    | libc::CLONE_NEWNS
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS
                    | libc::CLONE_NEWPID;
                if libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The sandbox dies with the gateway.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| start_err("spawn agent", e))?;
        let pid = child
            .id()
            .ok_or_else(|| RunnerError::Start("agent exited at once".into()))?;
        let map = format!("0 {base} 1\n1000 {} 1\n", base + 1);
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)
            .map_err(|e| start_err("uid_map", e))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)
            .map_err(|e| start_err("gid_map", e))?;
        let mut cgroups = Vec::new();
        cgroups.extend(
            write_cgroup(
                "memory",
                &id,
                &[
                    (
                        "memory.limit_in_bytes",
                        self.config.memory_limit.to_string(),
                    ),
                    (
                        "memory.memsw.limit_in_bytes",
                        self.config.memory_limit.to_string(),
                    ),
                ],
                pid,
            )
            .or_else(|| {
                write_cgroup(
                    "memory",
                    &id,
                    &[(
                        "memory.limit_in_bytes",
                        self.config.memory_limit.to_string(),
                    )],
                    pid,
                )
            }),
        );
        cgroups.extend(write_cgroup(
            "pids",
            &id,
            &[("pids.max", self.config.pids_limit.to_string())],
            pid,
        ));
        if cgroups.len() < 2 {
            tracing::warn!(runner = %id, "cgroup limits not applied on this host");
        }

        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| RunnerError::Start("no agent stdin".into()))?;
        stdin
            .write_all(b"go\n")
            .await
            .map_err(|e| start_err("start agent", e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| RunnerError::Start("no agent stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| RunnerError::Start("no agent stderr".into()))?;

        let waiters: Waiters = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (reader_waiters, reader_alive, reader_id) =
            (waiters.clone(), alive.clone(), id.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Response>(&line) {
                    Ok(response) => {
                        if let Some(tx) = reader_waiters
                            .lock()
                            .expect("invariant: waiters lock")
                            .remove(&response.id)
                        {
                            let _ = tx.send(response);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(runner = %reader_id, error = %err, "bad line from runner agent")
                    }
                }
            }
            reader_alive.store(false, Ordering::SeqCst);
            // Dropping the senders tells every waiting call that the runner is gone.
            reader_waiters
                .lock()
                .expect("invariant: waiters lock")
                .clear();
        });
        let log_id = id.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(runner = %log_id, message = %line, "runner agent");
            }
        });

        let runner = Arc::new(LocalRunner {
            id,
            principal,
            stdin: tokio::sync::Mutex::new(stdin),
            waiters,
            alive,
            next_id: AtomicU64::new(1),
            child: Mutex::new(Some(child)),
            cgroups,
            root,
        });
        let ping = Request {
            id: 0,
            ping: Some(serde_json::json!({})),
            run: None,
        };
        match tokio::time::timeout(Duration::from_secs(20), runner.request(ping)).await {
            Ok(Ok(response)) if response.pong => Ok(runner),
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                runner.stop().await;
                Err(RunnerError::Start(
                    "the sandbox did not come up (see the runner agent log)".into(),
                ))
            }
        }
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

impl LocalRunner {
    async fn request(&self, mut request: Request) -> Result<Response, RunnerError> {
        if request.id == 0 && request.run.is_some() {
            request.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("invariant: waiters lock")
            .insert(request.id, tx);
        let mut line =
            serde_json::to_vec(&request).map_err(|e| RunnerError::Exited(e.to_string()))?;
        line.push(b'\n');
        {
            let mut stdin = self.stdin.lock().await;
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                self.alive.store(false, Ordering::SeqCst);
                return Err(RunnerError::Exited("the agent stopped reading".into()));
            }
        }
        rx.await
            .map_err(|_| RunnerError::Exited("the sandbox went away during the call".into()))
    }
}

impl LocalRunner {
    /// Kills the sandbox: its PID 1 (the outer agent's only child; a namespace init ignores
    /// the parent-death signal, so it is killed directly, and everything else in its PID
    /// namespace dies with it), then the outer agent.
    fn kill_sandbox(child: &mut Child) {
        if let Some(pid) = child.id() {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for inner in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: signalling a process this runner started.
                unsafe { libc::kill(inner, libc::SIGKILL) };
            }
        }
        let _ = child.start_kill();
    }
}

impl Drop for LocalRunner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().expect("invariant: child lock").take() {
            Self::kill_sandbox(&mut child);
        }
        for dir in &self.cgroups {
            // Succeeds once the killed processes are gone; otherwise `clean_leftovers` will.
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[async_trait]
impl Runner for LocalRunner {
    fn id(&self) -> &str {
        &self.id
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn run_command(&self, call: CommandCall) -> Result<CommandOutcome, RunnerError> {
        let package = &call.package;
        let mut argv = package.command.clone();
        if let Some(program) = argv.first_mut() {
            if program.contains('/') {
                *program = format!(
                    "/tools/{}/{}",
                    package.name,
                    program.trim_start_matches("./")
                );
            }
        }
        let mut env: BTreeMap<String, String> = package.env.clone().into_iter().collect();
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
        env.insert("HOME".into(), "/home/chiron".into());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("CHIRON_CALL_ID".into(), call.call_id.clone());
        let stdin =
            serde_json::json!({ "tool": call.tool, "arguments": call.arguments }).to_string();
        let request = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ping: None,
            run: Some(RunRequest {
                argv,
                cwd: format!("/tools/{}", package.name),
                env,
                stdin,
                timeout_ms: call.timeout.as_millis() as u64,
            }),
        };
        let response = self.request(request).await?;
        // A process that could not be started reports like a shell does: status 127.
        let (exit_code, stderr_tail) = match response.error {
            Some(error) => (Some(127), error),
            None => (response.exit_code, response.stderr_tail),
        };
        Ok(CommandOutcome {
            exit_code,
            stdout: response.stdout.into_bytes(),
            stderr_tail,
            timed_out: response.timed_out,
            runner_id: self.id.clone(),
        })
    }

    async fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let child = self.child.lock().expect("invariant: child lock").take();
        if let Some(mut child) = child {
            Self::kill_sandbox(&mut child);
            let _ = child.wait().await;
        }
        for dir in &self.cgroups {
            // The group empties once the sandbox's PID 1 is gone; rmdir fails until then.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = std::fs::remove_dir(&self.root);
        tracing::debug!(runner = %self.id, principal_id = %self.principal, "runner stopped");
    }
}
