//! Probes of the host's sandboxing features. Each probe really exercises the feature (creates
//! a user namespace in a child, asks the kernel for the Landlock ABI, creates and removes a
//! cgroup) instead of guessing from version numbers.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Whether the feature is usable.
    pub ok: bool,
    /// What was found, or why it is not usable.
    pub detail: String,
}

impl Probe {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn missing(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// The cgroup hierarchy mounted at `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// The unified hierarchy only.
    V2,
    /// Legacy per-controller hierarchies (possibly with a partial v2 mount beside them).
    V1,
    /// No cgroup filesystem found.
    None,
}

/// Everything `chiron doctor` reports about the host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Creating a user namespace in a child process.
    pub user_namespaces: Probe,
    /// The Landlock ABI version.
    pub landlock: Probe,
    /// Which cgroup hierarchy is mounted.
    pub cgroup_version: CgroupVersion,
    /// Whether memory and pids limits can be applied by creating a cgroup.
    pub cgroup_limits: Probe,
}

/// Runs every probe.
pub fn probe_host() -> HostReport {
    let cgroup_version = cgroup_version(Path::new("/sys/fs/cgroup"));
    HostReport {
        user_namespaces: probe_user_namespaces(),
        landlock: probe_landlock(),
        cgroup_version,
        cgroup_limits: probe_cgroup_limits(cgroup_version),
    }
}

/// Spawns `true` in a new user namespace.
pub fn probe_user_namespaces() -> Probe {
    let program = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(program) = program else {
        return Probe::missing("no `true` binary to probe with");
    };
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.status() {
        Ok(status) if status.success() => Probe::ok("a child created a user namespace"),
        Ok(status) => Probe::missing(format!("probe child exited with {status}")),
        Err(err) => Probe::missing(format!("unshare(CLONE_NEWUSER) failed: {err}")),
    }
}

/// Asks the kernel for its Landlock ABI version.
pub fn probe_landlock() -> Probe {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only returns
    // the ABI version; it reads and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi >= 1 {
        Probe::ok(format!("ABI {abi}"))
    } else {
        let err = io::Error::last_os_error();
        Probe::missing(format!("not available: {err}"))
    }
}

/// Reads which cgroup hierarchy is mounted at `root`.
pub fn cgroup_version(root: &Path) -> CgroupVersion {
    if root.join("cgroup.controllers").exists() {
        CgroupVersion::V2
    } else if root.join("memory").is_dir() || root.join("pids").is_dir() {
        CgroupVersion::V1
    } else {
        CgroupVersion::None
    }
}

/// Creates a throwaway cgroup, sets memory and pids limits on it and removes it.
pub fn probe_cgroup_limits(version: CgroupVersion) -> Probe {
    let name = format!("chiron-probe-{}", std::process::id());
    let root = Path::new("/sys/fs/cgroup");
    let result = match version {
        CgroupVersion::None => return Probe::missing("no cgroup filesystem; rlimits only"),
        CgroupVersion::V1 => try_limits(&[
            (
                root.join("memory").join(&name),
                "memory.limit_in_bytes",
                "268435456",
            ),
            (root.join("pids").join(&name), "pids.max", "256"),
        ]),
        CgroupVersion::V2 => {
            let dir = root.join(&name);
            try_limits(&[
                (dir.clone(), "memory.max", "268435456"),
                (dir, "pids.max", "256"),
            ])
        }
    };
    match result {
        Ok(()) => Probe::ok("memory and pids limits can be applied"),
        Err(err) => Probe::missing(format!("cannot apply limits ({err}); rlimits only")),
    }
}

fn try_limits(limits: &[(std::path::PathBuf, &str, &str)]) -> io::Result<()> {
    let mut created = Vec::new();
    let result = (|| {
        for (dir, file, value) in limits {
            if !dir.exists() {
                fs::create_dir(dir)?;
                created.push(dir.clone());
            }
            fs::write(dir.join(file), value)?;
        }
        Ok(())
    })();
    for dir in created.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_version_reads_the_layout() {
        let dir = std::env::temp_dir().join(format!("chiron-cg-{}", std::process::id()));
        fs::create_dir_all(dir.join("memory")).unwrap();
        assert_eq!(cgroup_version(&dir), CgroupVersion::V1);
        fs::write(dir.join("cgroup.controllers"), "memory pids").unwrap();
        assert_eq!(cgroup_version(&dir), CgroupVersion::V2);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cgroup_version(&dir), CgroupVersion::None);
    }

    #[test]
    fn probes_report_without_panicking() {
        let report = probe_host();
        // On the development and CI machines (root, kernel 6.x) all of these hold.
        assert!(report.user_namespaces.ok, "{:?}", report.user_namespaces);
        assert!(report.landlock.ok, "{:?}", report.landlock);
        assert!(!report.cgroup_limits.detail.is_empty());
    }
}
