//! The runner agent: the process that is the sandbox. The gateway starts it (as
//! `chiron runner-agent <spec>`) in new user, mount, network, IPC, UTS and PID namespaces and
//! maps its user ids; then:
//!
//! 1. The outer stage waits for `go` on stdin (sent once the id maps are written), re-executes
//!    itself as the namespace's root, forks, reports the child's pid to the gateway and exits;
//!    the gateway (a child subreaper) adopts the child.
//! 2. The inner stage is PID 1 of the new PID namespace. It builds a minimal root on tmpfs —
//!    system directories and tool packages bound read-only, the principal's home read-write,
//!    a private `/tmp`, a fresh `/proc`, a minimal `/dev` — pivots into it, brings `lo` up,
//!    drops to uid 1000 with no capabilities and `no_new_privs`, applies Landlock and a seccomp
//!    filter, and only then serves requests. Every tool process is its child and inherits all
//!    of it, and starts in a Landlock domain of its own (see [`TOOL_DOMAIN`]); nothing ever
//!    joins the sandbox from outside.
//!
//! Set `CHIRON_AGENT_TRACE=1` in the gateway's environment to have each stage report on stderr
//! (relayed to the gateway's log).
//!
//! Protocol: one JSON object per line. Requests `{"id", "ping": {}}`,
//! `{"id", "run": {argv, cwd, env, stdin, timeout_ms}}`, `{"id", "stdio": {argv, cwd, env}}` and
//! `{"id", "kill": pid}`; responses on stdout `{"id", "pong": true}` or
//! `{"id", "exit_code", "signal", "stdout", "stderr_tail", "timed_out"}`. A started `stdio`
//! server's pipes, and at start-up the proxy listener, go to the gateway over the control
//! socket (see [`crate::control`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The uid and gid tool processes run as inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// Largest stdout kept per call.
pub const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// Bytes of stderr kept (the tail).
pub const STDERR_TAIL: usize = 4096;
/// How long output is still collected after the tool's process group is gone.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What the gateway tells the agent about the sandbox to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSpec {
    /// An empty directory on the host; the new root is a tmpfs mounted on it.
    pub root: PathBuf,
    /// The principal's home on the host, mounted read-write at `/home/chiron`.
    pub home: PathBuf,
    /// Tool packages by name, mounted read-only at `/tools/<name>`.
    pub tools: BTreeMap<String, PathBuf>,
    /// Installed package sources by name, mounted read-only at `/sources/<name>`.
    #[serde(default)]
    pub sources: BTreeMap<String, PathBuf>,
    /// A CA bundle mounted read-only at [`CA_BUNDLE`].
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Whether to bind the proxy listener (discovery runners have no egress at all).
    #[serde(default)]
    pub egress: bool,
}

/// Where the CA bundle the proxy's certificates verify against appears in the sandbox.
pub const CA_BUNDLE: &str = "/etc/chiron/ca-bundle.pem";

/// The proxy listener's address inside every runner's network namespace.
pub const PROXY_ADDR: &str = "127.0.0.1:3128";

/// The search path for a request whose environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A request from the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Request {
    /// Correlates the response.
    pub id: u64,
    /// Health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<serde_json::Value>,
    /// Run a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRequest>,
    /// Start a long-lived server and hand its stdio pipes to the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioRequest>,
    /// Kill the process group of a server started with `stdio` (its pid in the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<i32>,
}

/// Start a long-lived process whose stdin, stdout and stderr the gateway keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StdioRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// The whole environment.
    pub env: BTreeMap<String, String>,
}

/// Run one process to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// Program and arguments (program resolved on the sandbox's PATH unless it has a `/`).
    pub argv: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// The whole environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// Bytes for stdin.
    pub stdin: String,
    /// Kill the process group after this long.
    pub timeout_ms: u64,
}

/// A response to the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// Answer to a ping.
    #[serde(default)]
    pub pong: bool,
    /// Exit status, if it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal, if killed.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Stdout (lossy UTF-8), bounded.
    #[serde(default)]
    pub stdout: String,
    /// The end of stderr.
    #[serde(default)]
    pub stderr_tail: String,
    /// Killed by the timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// The process could not be started.
    #[serde(default)]
    pub error: Option<String>,
}

fn fail(what: &str) -> ! {
    let err = std::io::Error::last_os_error();
    eprintln!("runner-agent: {what}: {err}");
    std::process::exit(120);
}

fn check(ret: libc::c_int, what: &str) {
    if ret != 0 {
        fail(what);
    }
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_else(|_| fail("path with NUL"))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) {
    let source = source.map(cstr);
    let target_c = cstr(target);
    let fstype = fstype.map(|f| CString::new(f).unwrap_or_default());
    let data = data.map(|d| CString::new(d).unwrap_or_default());
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive for the call.
    let ret = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if ret != 0 {
        fail(&format!("mount {}", target.display()));
    }
}

/// Binds `source` at `target` read-only (or read-write), creating the mount point.
fn bind(source: &Path, target: &Path, writable: bool) {
    if source.is_dir() {
        std::fs::create_dir_all(target).unwrap_or_else(|_| fail("mkdir mount point"));
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|_| fail("mkdir mount parent"));
        }
        std::fs::write(target, b"").unwrap_or_else(|_| fail("create mount point file"));
    }
    mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    );
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    mount(None, target, None, flags, None);
}

/// The environment marker of the second exec (see [`run`]).
const MAPPED: &str = "CHIRON_AGENT_MAPPED";

/// Entry point of `chiron runner-agent` and `chiron-runner-agent` (named `program` in
/// errors): runs the agent described by the JSON `spec`, or says why it cannot and returns
/// the exit code for a usage error.
pub fn run_json(program: &str, spec: &str) -> std::process::ExitCode {
    match serde_json::from_str(spec) {
        Ok(spec) => run(spec),
        Err(err) => {
            eprintln!("{program}: bad spec: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the agent. Never returns.
pub fn run(spec: AgentSpec) -> ! {
    if std::env::var_os(MAPPED).is_none() {
        // Outer stage, first exec: the gateway writes our id maps, then says `go`. Our first
        // exec happened before the maps existed, so it dropped every capability; executing
        // ourselves again, now as the namespace's root, restores them.
        // Read exactly these three bytes from fd 0, unbuffered: requests may follow in the
        // same pipe read and belong to the re-executed agent.
        let mut go = [0u8; 3];
        let mut got = 0;
        while got < go.len() {
            // SAFETY: reading into the unfilled tail of a live buffer.
            let n = unsafe { libc::read(0, go[got..].as_mut_ptr().cast(), go.len() - got) };
            if n <= 0 {
                fail("no go from the gateway");
            }
            got += n as usize;
        }
        if &go != b"go\n" {
            fail("no go from the gateway");
        }
        step("go received");
        // The same program and arguments, under the name it was started with (what `ps`
        // shows, and what finds a runner's processes).
        let mut args = std::env::args_os();
        let mut again = Command::new("/proc/self/exe");
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        let err = again.args(args).env(MAPPED, "1").exec();
        eprintln!("runner-agent: re-exec: {err}");
        std::process::exit(120);
    }
    std::env::remove_var(MAPPED);
    // SAFETY: the outer stage is single-threaded here; the child continues in `inner`.
    match unsafe { libc::fork() } {
        -1 => fail("fork"),
        0 => inner(spec),
        child => {
            // Tell the gateway the sandbox's PID 1 (as the host sees it), then leave: the
            // gateway, a child subreaper, adopts it, so no waiting process stays resident.
            let message = crate::control::ControlMessage {
                pid: Some(child),
                ..Default::default()
            };
            // SAFETY: the control socket is open for the agent's whole life.
            let control =
                unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::control::CONTROL_FD) };
            if crate::control::send(control, &message, &[]).is_err() {
                // SAFETY: killing the child this process just forked.
                unsafe { libc::kill(child, libc::SIGKILL) };
                fail("report the sandbox pid");
            }
            std::process::exit(0);
        }
    }
}

fn step(what: &str) {
    if std::env::var_os("CHIRON_AGENT_TRACE").is_some() {
        eprintln!("runner-agent: {what}");
    }
}

fn inner(spec: AgentSpec) -> ! {
    step("inner started");
    // The outer stage exits at once, so there is no parent-death signal to rely on: the agent
    // ends when the gateway closes its stdin, which a dying gateway always does.
    // SAFETY: a plain fcntl call on this process.
    unsafe {
        // No tool process may inherit the control socket.
        libc::fcntl(crate::control::CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    build_root(&spec);
    step("root built");
    bring_up_loopback();
    if spec.egress {
        hand_over_proxy_listener();
    }
    let hostname = b"chiron-runner";
    // SAFETY: valid buffer and length.
    unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    drop_privileges();
    restrict_filesystem();
    install_seccomp();
    step("serving");
    serve();
}

fn build_root(spec: &AgentSpec) {
    let root = &spec.root;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    );
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=16m,mode=755"),
    );
    for dir in ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"] {
        let host = Path::new(dir);
        let target = root.join(dir.trim_start_matches('/'));
        match std::fs::read_link(host) {
            Ok(link) => {
                std::os::unix::fs::symlink(link, &target).unwrap_or_else(|_| fail("symlink"))
            }
            Err(_) if host.is_dir() => bind(host, &target, false),
            Err(_) => {}
        }
    }
    for path in [
        "/etc/ssl",
        "/etc/ca-certificates",
        "/etc/alternatives",
        "/etc/ld.so.cache",
        "/etc/localtime",
    ] {
        let host = Path::new(path);
        if host.exists() {
            bind(host, &root.join(path.trim_start_matches('/')), false);
        }
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap_or_else(|_| fail("mkdir etc"));
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\nchiron:x:1000:1000:chiron:/home/chiron:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        .unwrap_or_else(|_| fail("write passwd"));
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nchiron:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap_or_else(|_| fail("write group"));
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost chiron-runner\n")
        .unwrap_or_else(|_| fail("write hosts"));
    for (name, dir) in &spec.tools {
        bind(dir, &root.join("tools").join(name), false);
    }
    for (name, dir) in &spec.sources {
        bind(dir, &root.join("sources").join(name), false);
    }
    if let Some(bundle) = &spec.ca_bundle {
        bind(bundle, &root.join(CA_BUNDLE.trim_start_matches('/')), false);
    }
    bind(&spec.home, &root.join("home/chiron"), true);
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap_or_else(|_| fail("mkdir tmp"));
    mount(
        Some(Path::new("tmpfs")),
        &tmp,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=64m,mode=1777"),
    );
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).unwrap_or_else(|_| fail("mkdir dev"));
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=64k,mode=755"),
    );
    for node in ["null", "zero", "full", "random", "urandom"] {
        bind(&Path::new("/dev").join(node), &dev.join(node), true);
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).unwrap_or_else(|_| fail("symlink dev"));
    }
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).unwrap_or_else(|_| fail("mkdir proc"));
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );

    let old = root.join(".old");
    std::fs::create_dir_all(&old).unwrap_or_else(|_| fail("mkdir .old"));
    let (root_c, old_c) = (cstr(root), cstr(&old));
    // SAFETY: valid paths; pivot_root has no libc wrapper.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, root_c.as_ptr(), old_c.as_ptr()) };
    if ret != 0 {
        fail("pivot_root");
    }
    std::env::set_current_dir("/").unwrap_or_else(|_| fail("chdir /"));
    let old_c = CString::new("/.old").unwrap_or_default();
    // SAFETY: valid path.
    check(
        unsafe { libc::umount2(old_c.as_ptr(), libc::MNT_DETACH) },
        "umount old root",
    );
    let _ = std::fs::remove_dir("/.old");
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    );
}

/// Binds the proxy listener in this network namespace and gives it to the gateway, which
/// accepts on it; the agent keeps no copy.
fn hand_over_proxy_listener() {
    let listener = std::net::TcpListener::bind(PROXY_ADDR).unwrap_or_else(|_| fail("bind proxy"));
    let message = crate::control::ControlMessage {
        listener: true,
        ..Default::default()
    };
    // SAFETY: the control socket is open for the agent's whole life.
    let control = unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::control::CONTROL_FD) };
    use std::os::fd::AsFd;
    if crate::control::send(control, &message, &[listener.as_fd()]).is_err() {
        fail("hand over proxy listener");
    }
}

fn bring_up_loopback() {
    // SAFETY: a plain datagram socket and the SIOC[GS]IFFLAGS ioctls on a zeroed ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            fail("socket");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            fail("SIOCGIFFLAGS lo");
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr) != 0 {
            fail("SIOCSIFFLAGS lo");
        }
        libc::close(sock);
    }
}

fn drop_privileges() {
    // SAFETY: plain prctl/setgroups/setres[ug]id calls on this process.
    unsafe {
        // Empty the bounding set so no exec can regain a capability.
        for cap in 0..=63 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        );
        check(libc::setgroups(0, std::ptr::null()), "setgroups");
        check(
            libc::setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID),
            "setresgid",
        );
        // Leaving uid 0 clears the permitted and effective capability sets.
        check(
            libc::setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID),
            "setresuid",
        );
    }
}

/// The Landlock ruleset each tool process starts in (see [`enter_tool_domain`]).
///
/// Its filesystem rules are the agent's own, so a tool's file access is unchanged; what it
/// adds is a domain of the tool's own. Landlock lets a process inspect another one
/// (`/proc/<pid>/environ`, `mem` and `fd`, `pidfd_getfd`) only when that one is in its domain
/// or below it, so a tool can read neither another tool's proxy credential and memory nor
/// the agent's, while it still can its own children's. Where the kernel has Landlock ABI 6,
/// signals and abstract Unix sockets are confined to the tool's own process tree as well.
/// `None` where the kernel has no Landlock.
static TOOL_DOMAIN: std::sync::OnceLock<Option<std::os::fd::OwnedFd>> = std::sync::OnceLock::new();

/// The sandbox's filesystem rules: everything readable, home and `/tmp` writable, devices
/// readable and writable.
fn filesystem_rules(
    ruleset: landlock::Ruleset,
) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    use landlock::{path_beneath_rules, Access, AccessFs, RulesetAttr, RulesetCreatedAttr};
    let abi = LANDLOCK_ABI;
    ruleset
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(
            ["/home/chiron", "/tmp"],
            AccessFs::from_all(abi),
        ))?
        .add_rules(path_beneath_rules(
            ["/dev"],
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
}

/// The Landlock ABI whose filesystem rights the sandbox handles.
const LANDLOCK_ABI: landlock::ABI = landlock::ABI::V3;

/// Puts the calling thread, and so the tool process it starts next, in a new Landlock domain
/// below the agent's (see [`TOOL_DOMAIN`]). Landlock restricts a thread, not its process:
/// each tool is started from a thread of its own (a `run` call's, or one for a `stdio`
/// server) that enters the domain first and ends with the call, so the standard library
/// still starts the tool with posix_spawn.
fn enter_tool_domain() -> std::io::Result<()> {
    let Some(Some(ruleset)) = TOOL_DOMAIN.get() else {
        return Ok(());
    };
    let ruleset = std::os::fd::AsRawFd::as_raw_fd(ruleset);
    // SAFETY: restricting the calling thread with a ruleset descriptor this process owns.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn restrict_filesystem() {
    use landlock::{Ruleset, RulesetAttr, Scope};
    let tools = Ruleset::default()
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .and_then(filesystem_rules);
    let result = tools.and_then(|tools| {
        let _ = TOOL_DOMAIN.set(tools.into());
        filesystem_rules(Ruleset::default())?.restrict_self()
    });
    if let Err(err) = result {
        eprintln!("runner-agent: landlock: {err}");
        std::process::exit(122);
    }
}

fn install_seccomp() {
    use seccompiler::{
        apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
        SeccompFilter, SeccompRule, TargetArch,
    };
    let arch = TargetArch::x86_64;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in [
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_syslog,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_fsconfig,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        // io_uring runs operations outside this filter, and is a large attack surface.
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        denied.insert(syscall, vec![]);
    }
    // clone is allowed, but not with any flag that makes a namespace.
    for flag in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ] {
        let flag = flag as u64;
        let rule = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .and_then(|c| SeccompRule::new(vec![c]));
        let Ok(rule) = rule else {
            fail("seccomp clone rule")
        };
        denied.entry(libc::SYS_clone).or_default().push(rule);
    }
    let filters = [
        SeccompFilter::new(
            denied,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        ),
        // clone3 passes its flags in memory the filter cannot read: make libc fall back to clone.
        SeccompFilter::new(
            [(libc::SYS_clone3, vec![])].into(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        ),
    ];
    for filter in filters {
        let program: Result<BpfProgram, _> = filter.map_err(|e| e.to_string()).and_then(|f| {
            f.try_into()
                .map_err(|e: seccompiler::BackendError| e.to_string())
        });
        match program {
            Ok(program) => {
                if let Err(err) = apply_filter(&program) {
                    eprintln!("runner-agent: seccomp: {err}");
                    std::process::exit(123);
                }
            }
            Err(err) => {
                eprintln!("runner-agent: seccomp: {err}");
                std::process::exit(123);
            }
        }
    }
}

/// The agent's children: every spawn goes through [`Children::spawn`], and one reaper thread
/// ([`Children::reap`]) collects every exit.
#[derive(Default)]
struct Children {
    /// Every spawn holds this lock.
    state: Mutex<ChildState>,
    /// Wakes the reaper when the spawn generation changes.
    started: std::sync::Condvar,
}

#[derive(Default)]
struct ChildState {
    /// Calls waiting for their process's exit, by pid.
    pending: HashMap<i32, Exit>,
    /// The spawn generation, so a spawn between the reaper's `ECHILD` and its wait is never
    /// missed.
    generation: u64,
}

/// Where the reaper reports a call's exit: the wait status on `status`, and dropping
/// `closed` (the write end of a pipe only this entry holds) wakes the call's poll loop.
struct Exit {
    status: mpsc::Sender<i32>,
    closed: std::os::fd::OwnedFd,
}

impl Children {
    /// Starts `command` under the lock, registering `exit` for the child before the reaper
    /// can see it exit, and wakes the reaper.
    fn spawn(
        &self,
        command: &mut Command,
        exit: Option<Exit>,
    ) -> std::io::Result<std::process::Child> {
        let mut state = self.lock();
        let child = command.spawn()?;
        if let Some(exit) = exit {
            state.pending.insert(child.id() as i32, exit);
        }
        state.generation += 1;
        drop(state);
        self.started.notify_one();
        Ok(child)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChildState> {
        self.state.lock().expect("invariant: children lock")
    }

    /// Reaps every child, for ever: ours are reported to their waiting call, orphans that were
    /// re-parented to PID 1 are simply collected so no zombie remains.
    ///
    /// A child is first seen without being collected (`WNOWAIT`), then collected by its pid
    /// under the lock, which every spawn holds. `Command::spawn` collects a child itself when
    /// its exec fails, and panics if something else got there first; taking the lock waits
    /// for such a spawn to finish, after which that child is simply gone.
    fn reap(&self) -> ! {
        loop {
            let seen = self.lock().generation;
            // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waiting for any child of this process to exit, leaving it waitable.
            let waited =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if waited < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // No children: sleep until the next spawn.
                let _unused = self
                    .started
                    .wait_while(self.lock(), |state| state.generation == seen);
                continue;
            }
            // SAFETY: waitid succeeded for an exited child, so the pid field is set.
            let pid = unsafe { info.si_pid() };
            let mut state = self.lock();
            let mut status = 0;
            // SAFETY: collecting one exited child, if nothing else collected it meanwhile.
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if reaped != pid {
                continue;
            }
            if let Some(exit) = state.pending.remove(&pid) {
                let _ = exit.status.send(status);
                drop(exit.closed);
            }
        }
    }
}

/// One call's pipes, served on the call's own thread with poll(2): the JSON input is fed to
/// stdin, stdout is kept up to [`MAX_STDOUT`] and stderr's last [`STDERR_TAIL`] bytes, while
/// the [`Exit`] pipe tells when the process exits. One thread per call instead of one per
/// pipe as well.
struct CallPipes {
    stdin: Option<std::process::ChildStdin>,
    input: Vec<u8>,
    written: usize,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    out: Vec<u8>,
    err: Vec<u8>,
}

/// How a [`CallPipes::pump`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// Both output streams ended (a pump that does not watch the exit).
    Done,
    /// The process exited (a pump that watches it); its streams may still be open.
    Exited,
    /// The deadline passed.
    TimedOut,
}

impl CallPipes {
    fn new(child: &mut std::process::Child, input: String) -> Self {
        let stdin = child.stdin.take();
        if let Some(stdin) = &stdin {
            // A tool that never reads its input must not stall the call.
            let _ = rustix::io::ioctl_fionbio(stdin, true);
        }
        Self {
            stdin,
            input: input.into_bytes(),
            written: 0,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            out: Vec::new(),
            err: Vec::new(),
        }
    }

    /// Moves data until `deadline`, ending early: with `exit` (the read end of the call's
    /// exit pipe) as soon as the process exits, without it once both output streams ended.
    fn pump(&mut self, exit: Option<&std::os::fd::OwnedFd>, deadline: Instant) -> Pumped {
        use std::os::fd::AsRawFd;
        loop {
            if self.written >= self.input.len() {
                self.stdin = None;
            }
            let mut fds = Vec::with_capacity(4);
            let watch = |fds: &mut Vec<libc::pollfd>, fd: libc::c_int, events: libc::c_short| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                })
            };
            if let Some(stdin) = &self.stdin {
                watch(&mut fds, stdin.as_raw_fd(), libc::POLLOUT);
            }
            if let Some(stdout) = &self.stdout {
                watch(&mut fds, stdout.as_raw_fd(), libc::POLLIN);
            }
            if let Some(stderr) = &self.stderr {
                watch(&mut fds, stderr.as_raw_fd(), libc::POLLIN);
            }
            if let Some(exit) = exit {
                watch(&mut fds, exit.as_raw_fd(), libc::POLLIN);
            } else if self.stdout.is_none() && self.stderr.is_none() {
                return Pumped::Done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Pumped::TimedOut;
            }
            let timeout = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: `fds` is a live array of `fds.len()` pollfd entries.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Pumped::TimedOut;
            }
            for polled in &fds {
                if polled.revents == 0 {
                    continue;
                }
                let fd = polled.fd;
                if self.stdin.as_ref().is_some_and(|p| p.as_raw_fd() == fd) {
                    self.feed();
                } else if self.stdout.as_ref().is_some_and(|p| p.as_raw_fd() == fd) {
                    if !drain(&mut self.stdout, &mut self.out, MAX_STDOUT, false) {
                        self.stdout = None;
                    }
                } else if self.stderr.as_ref().is_some_and(|p| p.as_raw_fd() == fd) {
                    if !drain(&mut self.stderr, &mut self.err, STDERR_TAIL, true) {
                        self.stderr = None;
                    }
                } else {
                    return Pumped::Exited;
                }
            }
        }
    }

    /// Writes what stdin takes now; closes it when everything is written or the tool closed it.
    fn feed(&mut self) {
        let Some(stdin) = &mut self.stdin else { return };
        match stdin.write(&self.input[self.written..]) {
            Ok(n) => self.written += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.stdin = None,
        }
    }
}

/// Reads what `pipe` holds now into `kept` (the first `limit` bytes, or with `tail` the last);
/// false at end of file or on error.
fn drain<R: Read>(pipe: &mut Option<R>, kept: &mut Vec<u8>, limit: usize, tail: bool) -> bool {
    let Some(reader) = pipe else { return false };
    let mut buffer = [0u8; 8192];
    match reader.read(&mut buffer) {
        Ok(0) => false,
        Ok(n) => {
            if tail {
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > limit {
                    let excess = kept.len() - limit;
                    kept.drain(..excess);
                }
            } else {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
            true
        }
        Err(err) => err.kind() == std::io::ErrorKind::Interrupted,
    }
}

/// A command for `argv` with nothing inherited: the program is looked up on the call's own
/// `PATH` here, so the standard library can start it with posix_spawn (a vfork) instead of
/// fork, which copied the agent's page tables on every call; `argv[0]` stays as given.
fn command(program: &str, args: &[String], env: &BTreeMap<String, String>, cwd: &str) -> Command {
    let mut command = Command::new(resolve(program, env));
    command
        .arg0(program)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    command
}

/// `program` itself when it names a path; else the first executable file of that name in the
/// absolute directories of `PATH`; else `program`, left to the usual search (and its error).
fn resolve(program: &str, env: &BTreeMap<String, String>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

/// Runs one `run` call to its end. Runs on a thread of its own, which enters the tool's
/// Landlock domain.
fn run_one(id: u64, run: RunRequest, children: &Children) -> Response {
    let mut response = Response {
        id,
        ..Default::default()
    };
    let Some((program, args)) = run.argv.split_first() else {
        response.error = Some("empty argv".into());
        return response;
    };
    let mut command = command(program, args, &run.env, &run.cwd);
    let started = Instant::now();
    let (exited, closed) = match std::io::pipe() {
        Ok((read, write)) => (
            std::os::fd::OwnedFd::from(read),
            std::os::fd::OwnedFd::from(write),
        ),
        Err(err) => {
            response.error = Some(format!("cannot start {program}: {err}"));
            return response;
        }
    };
    if let Err(err) = enter_tool_domain() {
        response.error = Some(format!("cannot start {program}: sandbox domain: {err}"));
        return response;
    }
    let (tx, rx) = mpsc::channel();
    let exit = Exit { status: tx, closed };
    let mut child = match children.spawn(&mut command, Some(exit)) {
        Ok(child) => child,
        Err(err) => {
            response.error = Some(format!("cannot start {program}: {err}"));
            return response;
        }
    };
    let pid = child.id() as i32;

    let mut pipes = CallPipes::new(&mut child, run.stdin);
    let deadline = started + Duration::from_millis(run.timeout_ms);
    let pumped = pipes.pump(Some(&exited), deadline);
    response.timed_out = pumped == Pumped::TimedOut;
    // The whole group goes, so pipes held open by descendants close too (and a timed-out
    // call's process is killed with its children).
    // SAFETY: signalling the call's own process group; harmless if it is already gone.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = rx.recv().unwrap_or(0);
    // Output written before the exit may still be in the pipes: collect it, waiting at most a
    // short grace for descendants that escaped the group.
    let _ = pipes.pump(None, Instant::now() + OUTPUT_GRACE);
    if libc::WIFEXITED(status) {
        response.exit_code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        response.signal = Some(libc::WTERMSIG(status));
    }
    response.stdout = String::from_utf8_lossy(&pipes.out).into_owned();
    response.stderr_tail = String::from_utf8_lossy(&pipes.err).into_owned();
    response
}

/// Starts a long-lived server in its own process group and hands its stdin, stdout and stderr
/// to the gateway. The reaper collects it when it exits, like any orphan. Runs on a thread of
/// its own, which enters the server's Landlock domain and ends once the server has started.
fn start_stdio(id: u64, request: StdioRequest, children: &Children) {
    use std::os::fd::AsFd;
    let Some((program, args)) = request.argv.split_first() else {
        return stdio_failed(id, "empty argv".into());
    };
    let mut command = command(program, args, &request.env, &request.cwd);
    let mut child = match enter_tool_domain().and_then(|()| children.spawn(&mut command, None)) {
        Ok(child) => child,
        Err(err) => return stdio_failed(id, format!("cannot start {program}: {err}")),
    };
    match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => answer_stdio(
            &crate::control::ControlMessage {
                id,
                pid: Some(child.id() as i32),
                ..Default::default()
            },
            &[stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
        ),
        _ => stdio_failed(id, "no pipes".into()),
    }
}

/// Answers a `stdio` request over the control socket (with the server's pipes, if started).
fn answer_stdio(message: &crate::control::ControlMessage, fds: &[std::os::fd::BorrowedFd<'_>]) {
    // SAFETY: the control socket is open for the agent's whole life.
    let control = unsafe { std::os::fd::BorrowedFd::borrow_raw(crate::control::CONTROL_FD) };
    if let Err(err) = crate::control::send(control, message, fds) {
        eprintln!("runner-agent: control socket: {err}");
    }
}

/// Answers a `stdio` request that started no server.
fn stdio_failed(id: u64, error: String) {
    let message = crate::control::ControlMessage {
        id,
        error: Some(error),
        ..Default::default()
    };
    answer_stdio(&message, &[]);
}

fn serve() -> ! {
    // A panic on any thread ends the agent, and with it the sandbox: the gateway sees the
    // runner exit, fails its calls with `isError` and starts a new one. A thread left dead
    // behind a poisoned lock would instead leave calls waiting forever.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // SAFETY: ending the process at once, without running anything else.
        unsafe { libc::_exit(101) };
    }));
    let children = Arc::new(Children::default());
    let reaped = children.clone();
    std::thread::spawn(move || reaped.reap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let reply = move |response: &Response| {
        let mut line = serde_json::to_vec(response).unwrap_or_default();
        line.push(b'\n');
        let mut out = out.lock().expect("invariant: stdout lock");
        let _ = out.write_all(&line);
        let _ = out.flush();
    };
    let reply = Arc::new(reply);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(err) => {
                eprintln!("runner-agent: bad request: {err}");
                continue;
            }
        };
        if request.ping.is_some() {
            reply(&Response {
                id: request.id,
                pong: true,
                ..Default::default()
            });
            continue;
        }
        // Calls and server starts run on threads of their own (which enter the tool's
        // Landlock domain). A thread the pids limit refuses fails that request only.
        let id = request.id;
        if let Some(stdio) = request.stdio {
            let children = children.clone();
            let thread =
                std::thread::Builder::new().spawn(move || start_stdio(id, stdio, &children));
            if let Err(err) = thread {
                stdio_failed(id, format!("cannot start the server: no thread: {err}"));
            }
            continue;
        }
        if let Some(pid) = request.kill {
            if pid > 1 {
                // SAFETY: signalling the process group of a server this agent started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            continue;
        }
        if let Some(run) = request.run {
            let (children, replies) = (children.clone(), reply.clone());
            let thread =
                std::thread::Builder::new().spawn(move || replies(&run_one(id, run, &children)));
            if let Err(err) = thread {
                reply(&Response {
                    id,
                    error: Some(format!("cannot start the call: no thread: {err}")),
                    ..Default::default()
                });
            }
        }
    }
    // The gateway closed our stdin: stop everything (PID 1 exiting ends the namespace).
    std::process::exit(0);
}
