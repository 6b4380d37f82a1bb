//! The local sandbox backend: each runner is a `chiron runner-agent` process started in new
//! user, mount, network, IPC, UTS and PID namespaces (see [`crate::agent`] for what it builds
//! inside). The gateway writes its uid/gid maps — sandbox root and uid 1000 map to two
//! unprivileged host ids of the principal's own ([`crate::host_ids`]) — puts it in cgroup v1 memory and pids
//! groups when the host allows, and then talks to it over its stdin and stdout, plus a control
//! socket over which the agent hands out the proxy listener and `mcp-stdio` server pipes.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use chiron_core::PrincipalId;
use chiron_tools::ToolPackage;

use crate::agent::{AgentSpec, Request, Response, RunRequest, StdioRequest};
use crate::control::{self, ControlMessage};
use crate::egress::{
    CredentialGuard, Credentials, DenyEgress, EgressHook, ProcessIdentity, RunnerEgress,
};
use crate::host_ids::HostIds;
use crate::pool::{Runner, RunnerBackend};
use crate::stdio::StdioServer;
use crate::tool::{CommandCall, CommandOutcome, RunnerError, StdioCall, StdioOutcome};

/// How long the gateway waits for an agent's answer past when it is due (a call's timeout and
/// output grace; at once for a server start) before it declares the runner broken and stops it.
const UNANSWERED_GRACE: Duration = Duration::from_secs(5);
const STOPPED_ANSWERING: &str = "the runner stopped answering; it was stopped";

/// The installed sources of packages, and the packages themselves, mounted into runners.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    /// Tool packages by name (`/tools/<name>`).
    pub tools: BTreeMap<String, PathBuf>,
    /// Installed `source`s by package name (`/sources/<name>`), with their ecosystem.
    pub sources: BTreeMap<String, (SourceKind, PathBuf)>,
}

/// The ecosystem of an installed source, which decides how processes find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `pip install --target`: on `PYTHONPATH`.
    Pypi,
    /// `npm install --prefix`: `node_modules/.bin` on `PATH`, `node_modules` on `NODE_PATH`.
    Npm,
}

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The program that runs the agent (the chiron binary) and the arguments before the spec.
    pub agent: Vec<String>,
    /// Where runner roots and principal homes live (`<data_dir>/runners`, `<data_dir>/homes`).
    pub data_dir: PathBuf,
    /// Tool packages and installed sources to mount.
    pub mounts: Mounts,
    /// A CA bundle (system roots plus the egress proxy's CA) for tool processes to trust.
    pub ca_bundle: Option<PathBuf>,
    /// Memory limit per runner in bytes (cgroup v1, when available).
    pub memory_limit: u64,
    /// Process limit per runner (cgroups, when available; else an rlimit).
    pub pids_limit: u64,
    /// CPUs' worth of time per runner (cgroups, when available).
    pub cpus: f64,
    /// Use cgroups when the host allows (false: always the rlimit fallback).
    pub cgroups: bool,
}

/// Starts sandboxed runners on this host.
pub struct LocalBackend {
    config: LocalConfig,
    /// The packages mounted into runners started from now on; replaced on reload.
    mounts: Mutex<Mounts>,
    /// Serves each runner's proxy listener.
    egress: Arc<dyn EgressHook>,
    /// Each principal's pair of host ids.
    host_ids: HostIds,
}

impl LocalBackend {
    /// A backend with `config` whose runners' egress is refused.
    pub fn new(config: LocalConfig) -> Self {
        Self::with_egress(config, Arc::new(DenyEgress))
    }

    /// A backend whose runners' proxy listeners are served by `egress`.
    pub fn with_egress(config: LocalConfig, egress: Arc<dyn EgressHook>) -> Self {
        // Each sandbox's PID 1 is orphaned by its outer stage and adopted by this process.
        // SAFETY: a plain prctl on this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let mounts = Mutex::new(config.mounts.clone());
        let host_ids = HostIds::load(&config.data_dir.join("homes"));
        Self {
            config,
            mounts,
            egress,
            host_ids,
        }
    }

    /// Replaces the packages mounted into runners started from now on.
    pub fn set_mounts(&self, mounts: Mounts) {
        *self.mounts.lock().expect("invariant: mounts lock") = mounts;
    }

    /// Discovers the tools of an `mcp-stdio` package: starts its server in a runner that
    /// belongs to no principal and has no egress at all, initialises it, lists its tools and
    /// stops the runner.
    pub async fn discover(&self, package: &ToolPackage) -> Result<Vec<rmcp::model::Tool>, String> {
        let nobody = PrincipalId(uuid::Uuid::nil());
        let runner = self
            .launch(nobody, false)
            .await
            .map_err(|e| e.to_string())?;
        let result = async {
            let server = runner.start_server(package).await?;
            server.list_tools().await
        }
        .await;
        runner.stop().await;
        result
    }

    /// Removes what runners of an earlier gateway left behind: their processes are gone (each
    /// sandbox exits when the gateway holding its stdin dies), so their cgroups are empty and
    /// their root directories unused. Returns how many leftovers were removed.
    pub fn clean_leftovers(&self) -> usize {
        let mut removed = 0;
        for parent in crate::limits::Limits::leftover_parents() {
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
    /// The sandbox's PID 1, adopted from the outer agent stage; killed on stop and drop.
    sandbox: Arc<Sandbox>,
    cgroups: Vec<PathBuf>,
    root: PathBuf,
    /// The gateway's end of the control socket; one exchange at a time (the servers lock).
    control: Arc<OwnedFd>,
    /// Warm `mcp-stdio` servers by package name; held while one is being started.
    servers: tokio::sync::Mutex<HashMap<String, Arc<StdioServer>>>,
    /// Proxy credentials of this runner's processes.
    credentials: Arc<Credentials>,
    /// Stops serving the proxy listener.
    stop_egress: CancellationToken,
    /// Serves the proxy listener; told when the runner stops.
    egress: Arc<dyn EgressHook>,
    /// Installed sources of the mounted packages.
    sources: BTreeMap<String, (SourceKind, PathBuf)>,
    /// Whether a CA bundle is mounted.
    ca_bundle: bool,
}

#[async_trait]
impl RunnerBackend for LocalBackend {
    async fn start(&self, principal: PrincipalId) -> Result<Arc<dyn Runner>, RunnerError> {
        let runner: Arc<dyn Runner> = self.launch(principal, true).await?;
        Ok(runner)
    }
}

impl LocalBackend {
    /// Starts a sandbox for `principal`; with `egress`, its proxy listener is served.
    async fn launch(
        &self,
        principal: PrincipalId,
        egress: bool,
    ) -> Result<Arc<LocalRunner>, RunnerError> {
        let start_err =
            |what: &str, err: std::io::Error| RunnerError::Start(format!("{what}: {err}"));
        let id = format!("runner-{}", uuid_like());
        let base = self.host_ids.base(principal);
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

        let mounts = self.mounts.lock().expect("invariant: mounts lock").clone();
        let spec = AgentSpec {
            root: root.clone(),
            home,
            tools: mounts.tools.clone(),
            sources: mounts
                .sources
                .iter()
                .map(|(name, (_, dir))| (name.clone(), dir.clone()))
                .collect(),
            ca_bundle: self.config.ca_bundle.clone(),
            egress,
        };
        let spec = serde_json::to_string(&spec).map_err(|e| RunnerError::Start(e.to_string()))?;
        let (program, args) = self
            .config
            .agent
            .split_first()
            .ok_or_else(|| RunnerError::Start("no agent program".into()))?;
        let limits = if self.config.cgroups {
            crate::limits::Limits {
                memory: self.config.memory_limit,
                pids: self.config.pids_limit,
                cpus: self.config.cpus,
            }
            .prepare(&id)
        } else {
            crate::limits::Applied::default()
        };
        let rlimits = limits
            .cgroups
            .is_empty()
            .then_some((self.config.memory_limit, self.config.pids_limit));
        if rlimits.is_some() {
            tracing::warn!(runner = %id, "cgroups unavailable: limiting memory and processes with rlimits");
        }
        let (control_end, agent_end) =
            control::pair().map_err(|e| start_err("control socket", e))?;
        let agent_fd = agent_end.as_raw_fd();
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
                // The control socket becomes the agent's descriptor 3 (dup2 clears
                // close-on-exec on the copy).
                if libc::dup2(agent_fd, control::CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
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
                if let Some((memory, pids)) = rlimits {
                    crate::limits::Limits::apply_rlimits(memory, pids)?;
                }
                if libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The sandbox dies with the gateway.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| start_err("spawn agent", e))?;
        drop(agent_end);
        let control = Arc::new(control_end);
        let pid = child
            .id()
            .ok_or_else(|| RunnerError::Start("agent exited at once".into()))?;
        let map = format!("0 {base} 1\n1000 {} 1\n", base + 1);
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)
            .map_err(|e| start_err("uid_map", e))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)
            .map_err(|e| start_err("gid_map", e))?;
        if !crate::limits::Limits::join(&limits, pid) {
            tracing::warn!(runner = %id, "could not join the runner's cgroups");
        }
        let cgroups = limits.cgroups;

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
        // The outer stage reports the sandbox's PID 1 and exits; the gateway adopts it. With
        // egress, PID 1 then hands over the proxy listener.
        let mut inner_pid = None;
        let mut listener = None;
        while inner_pid.is_none() || (egress && listener.is_none()) {
            let control = control.clone();
            let received = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::task::spawn_blocking(move || control::recv(&*control)),
            )
            .await;
            let failure = match received {
                Ok(Ok(Ok((message, mut fds)))) => {
                    if let Some(pid) = message.pid {
                        inner_pid = Some(pid);
                    } else if message.listener {
                        listener = fds.pop();
                    }
                    continue;
                }
                Ok(Ok(Err(err))) => {
                    format!("the sandbox did not come up ({err}; see the runner agent log)")
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => "the sandbox did not come up in time".to_owned(),
            };
            // Leave nothing behind: the outer stage and, if it already forked, PID 1.
            let _ = child.start_kill();
            if let Some(sandbox) = inner_pid.and_then(|pid| Sandbox::adopt(pid).ok()) {
                sandbox.kill();
            }
            return Err(RunnerError::Start(failure));
        }
        let inner_pid = inner_pid.expect("invariant: the loop ends with a pid");
        let sandbox =
            Arc::new(Sandbox::adopt(inner_pid).map_err(|e| start_err("adopt sandbox", e))?);
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| RunnerError::Start("no agent stderr".into()))?;
        // Reap the outer stage, then PID 1 when it exits.
        {
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                let _ = child.wait().await;
                sandbox.reap().await;
            });
        }

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
            sandbox: sandbox.clone(),
            cgroups,
            root,
            control,
            servers: tokio::sync::Mutex::new(HashMap::new()),
            credentials: Arc::default(),
            stop_egress: CancellationToken::new(),
            egress: self.egress.clone(),
            sources: mounts.sources,
            ca_bundle: self.config.ca_bundle.is_some(),
        });
        if let Some(fd) = listener {
            let listener = std::net::TcpListener::from(fd);
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|e| start_err("proxy listener", e));
            match listener {
                Ok(listener) => self.egress.serve(
                    Arc::new(RunnerEgress {
                        runner_id: runner.id.clone(),
                        principal,
                        credentials: runner.credentials.clone(),
                    }),
                    listener,
                    runner.stop_egress.clone(),
                ),
                Err(err) => {
                    runner.stop().await;
                    return Err(err);
                }
            }
        }
        let ping = Request {
            id: 0,
            ping: Some(serde_json::json!({})),
            ..Default::default()
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
    /// Receives one control message (blocking on a worker thread).
    async fn receive(&self) -> Result<(ControlMessage, Vec<OwnedFd>), String> {
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || control::recv(&*control))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Writes one request line without waiting for a response line.
    async fn send(&self, request: &Request) -> Result<(), RunnerError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| RunnerError::Exited(e.to_string()))?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            self.alive.store(false, Ordering::SeqCst);
            return Err(RunnerError::Exited("the agent stopped reading".into()));
        }
        Ok(())
    }

    /// The environment of a process of `package`: built from scratch, with the process's
    /// own proxy credential and the CA bundle when there is one.
    fn process_env(
        &self,
        package: &ToolPackage,
        credential: Option<&CredentialGuard>,
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = package.env.clone().into_iter().collect();
        let mut path = String::from("/usr/local/bin:/usr/bin:/bin");
        match self.sources.get(&package.name) {
            Some((SourceKind::Pypi, _)) => {
                env.insert("PYTHONPATH".into(), format!("/sources/{}", package.name));
            }
            Some((SourceKind::Npm, _)) => {
                path = format!("/sources/{}/node_modules/.bin:{path}", package.name);
                env.insert(
                    "NODE_PATH".into(),
                    format!("/sources/{}/node_modules", package.name),
                );
            }
            None => {}
        }
        env.insert("PATH".into(), path);
        env.insert("HOME".into(), "/home/chiron".into());
        env.insert("LANG".into(), "C.UTF-8".into());
        if let Some(credential) = credential {
            let url = credential.proxy_url();
            for name in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ] {
                env.insert(name.into(), url.clone());
            }
            env.insert("NO_PROXY".into(), String::new());
            // Node's built-in fetch and http(s) ignore the variables above unless told.
            env.insert("NODE_USE_ENV_PROXY".into(), "1".into());
        }
        if self.ca_bundle {
            for name in [
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS",
                "GIT_SSL_CAINFO",
            ] {
                env.insert(name.into(), crate::agent::CA_BUNDLE.into());
            }
        }
        env
    }

    /// The program path of `package`'s command inside the sandbox.
    fn argv(package: &ToolPackage) -> Vec<String> {
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
        argv
    }

    /// Starts `package`'s stdio server in this sandbox and initialises it.
    async fn start_server(&self, package: &ToolPackage) -> Result<StdioServer, String> {
        let credential = (!self.principal.0.is_nil()).then(|| {
            self.credentials.issue(ProcessIdentity {
                package: package.name.clone(),
                call_id: None,
            })
        });
        let request = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            stdio: Some(StdioRequest {
                argv: Self::argv(package),
                cwd: format!("/tools/{}", package.name),
                env: self.process_env(package, credential.as_ref()),
            }),
            ..Default::default()
        };
        self.send(&request).await.map_err(|e| e.to_string())?;
        let Ok(received) = tokio::time::timeout(UNANSWERED_GRACE, self.receive()).await else {
            // The receive stays pending until the control socket closes, which killing the
            // sandbox does.
            self.abandon("start a server");
            return Err(STOPPED_ANSWERING.into());
        };
        let (message, fds) = received?;
        if message.id != request.id {
            return Err("the agent answered another request".into());
        }
        if let Some(error) = message.error {
            return Err(error);
        }
        let pid = message.pid.ok_or("the agent sent no pid")?;
        let label = format!("{}/{}", self.id, package.name);
        StdioServer::connect(pid, fds, label, credential).await
    }

    /// Gives up on a runner whose agent did not `what` in time: it is marked dead (the pool
    /// replaces it) and its sandbox killed, which ends the agent's pipes and so every call
    /// still waiting; dropping the runner removes what is left.
    fn abandon(&self, what: &str) {
        tracing::warn!(runner = %self.id, "runner agent did not {what} in time; stopping the runner");
        self.alive.store(false, Ordering::SeqCst);
        self.stop_egress.cancel();
        self.egress.stopped(self.principal);
        self.sandbox.kill();
    }

    async fn request(&self, request: Request) -> Result<Response, RunnerError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("invariant: waiters lock")
            .insert(request.id, tx);
        self.send(&request).await?;
        rx.await
            .map_err(|_| RunnerError::Exited("the sandbox went away during the call".into()))
    }
}

/// A sandbox's PID 1, held by a pidfd so no signal can reach a recycled pid. Killing it ends
/// everything in its PID namespace.
struct Sandbox {
    pidfd: OwnedFd,
    exited: tokio::sync::watch::Sender<bool>,
}

impl Sandbox {
    fn adopt(pid: i32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open has no libc wrapper; the result is a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just gave us, owned from here on.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        Ok(Self {
            pidfd,
            exited: tokio::sync::watch::channel(false).0,
        })
    }

    fn kill(&self) {
        // SAFETY: pidfd_send_signal on our own pidfd, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Waits for PID 1 to exit and reaps it (it is the gateway's child once the outer stage
    /// has exited, the gateway being a child subreaper).
    async fn reap(&self) {
        // SAFETY: the pidfd is owned by `self`, which outlives this registration.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self.pidfd.as_raw_fd(),
                tokio::io::Interest::READABLE,
            )
        };
        if let Ok(fd) = registered {
            let _ = fd.readable().await;
        }
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd with a zeroed siginfo to fill.
        unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        self.exited.send_replace(true);
    }

    async fn wait_exited(&self) {
        let mut exited = self.exited.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e)).await;
    }
}

impl Drop for LocalRunner {
    fn drop(&mut self) {
        self.stop_egress.cancel();
        self.sandbox.kill();
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
        let argv = Self::argv(package);
        let credential = self.credentials.issue(ProcessIdentity {
            package: package.name.clone(),
            call_id: Some(call.call_id.clone()),
        });
        let mut env = self.process_env(package, Some(&credential));
        env.insert("CHIRON_CALL_ID".into(), call.call_id.clone());
        let stdin =
            serde_json::json!({ "tool": call.tool, "arguments": call.arguments }).to_string();
        let request = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            run: Some(RunRequest {
                argv,
                cwd: format!("/tools/{}", package.name),
                env,
                stdin,
                timeout_ms: call.timeout.as_millis() as u64,
            }),
            ..Default::default()
        };
        // The agent answers by the call's timeout plus its output grace. A runner that has not
        // answered well after that is broken: it is stopped, and the next call gets a new one.
        let answered = tokio::time::timeout(
            call.timeout + crate::agent::OUTPUT_GRACE + UNANSWERED_GRACE,
            self.request(request),
        )
        .await;
        drop(credential);
        let Ok(response) = answered else {
            self.abandon("answer a call");
            return Err(RunnerError::Exited(STOPPED_ANSWERING.into()));
        };
        let response = response?;
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

    async fn call_stdio(&self, call: StdioCall) -> Result<StdioOutcome, RunnerError> {
        let name = call.package.name.clone();
        let server = {
            let mut servers = self.servers.lock().await;
            match servers.get(&name).filter(|s| s.is_alive()) {
                Some(server) => server.clone(),
                None => {
                    if let Some(dead) = servers.remove(&name) {
                        tracing::info!(runner = %self.id, package = %name, pid = dead.pid, "mcp-stdio server exited; starting it again");
                    }
                    let server = Arc::new(
                        self.start_server(&call.package)
                            .await
                            .map_err(RunnerError::Server)?,
                    );
                    tracing::info!(runner = %self.id, package = %name, pid = server.pid, "mcp-stdio server started");
                    servers.insert(name.clone(), server.clone());
                    server
                }
            }
        };
        let result = server.call(&call.tool, call.arguments, call.timeout).await;
        if !matches!(result, Ok(Some(_))) {
            // Gone or stuck: forget it and stop what is left of it; the next call starts it
            // afresh.
            let mut servers = self.servers.lock().await;
            if servers.get(&name).is_some_and(|s| Arc::ptr_eq(s, &server)) {
                servers.remove(&name);
            }
            drop(servers);
            let kill = Request {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                kill: Some(server.pid),
                ..Default::default()
            };
            let _ = self.send(&kill).await;
        }
        let result = result.map_err(RunnerError::Server)?;
        Ok(StdioOutcome {
            result,
            runner_id: self.id.clone(),
        })
    }

    async fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.stop_egress.cancel();
        self.egress.stopped(self.principal);
        self.servers.lock().await.clear();
        self.sandbox.kill();
        self.sandbox.wait_exited().await;
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
