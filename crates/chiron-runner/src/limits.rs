//! Resource limits of a runner: memory, processes and CPU in the runner's own cgroups — cgroup
//! v2 (unified) or v1 (one directory per controller) — where the host lets the gateway create
//! them; otherwise per-process rlimits (address space and process count; CPU has no rlimit
//! equivalent of a share and goes unlimited).

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What a runner may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of memory (all processes together under cgroups).
    pub memory: u64,
    /// Processes (and threads).
    pub pids: u64,
    /// CPUs' worth of time (1.0 = one full core).
    pub cpus: f64,
}

/// Where the runner's limits live.
#[derive(Debug, Default)]
pub struct Applied {
    /// The cgroup directories the runner's PID 1 joins; empty when rlimits are used instead.
    pub cgroups: Vec<PathBuf>,
}

fn is_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
        && !Path::new(CGROUP_ROOT).join("memory").is_dir()
}

fn write_all(dir: &Path, settings: &[(&str, String)]) -> bool {
    settings
        .iter()
        .all(|(file, value)| std::fs::write(dir.join(file), value).is_ok())
}

impl Limits {
    fn cpu_quota(&self) -> Option<u64> {
        (self.cpus > 0.0).then_some((self.cpus * 100_000.0) as u64)
    }

    /// Creates the runner's cgroups with the limits set. Returns no directories when the host
    /// does not allow it (then [`Limits::apply_rlimits`] must be used in the child).
    pub fn prepare(&self, id: &str) -> Applied {
        let dirs = if is_v2() {
            self.prepare_v2(id)
        } else {
            self.prepare_v1(id)
        };
        Applied {
            cgroups: dirs.unwrap_or_default(),
        }
    }

    fn prepare_v2(&self, id: &str) -> Option<Vec<PathBuf>> {
        let root = Path::new(CGROUP_ROOT);
        let parent = root.join("chiron");
        std::fs::create_dir_all(&parent).ok()?;
        for dir in [root, parent.as_path()] {
            for controller in ["+memory", "+pids", "+cpu"] {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), controller);
            }
        }
        let dir = parent.join(id);
        std::fs::create_dir_all(&dir).ok()?;
        let mut settings = vec![
            ("memory.max", self.memory.to_string()),
            ("pids.max", self.pids.to_string()),
        ];
        if !write_all(&dir, &settings) {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        settings.clear();
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        if let Some(quota) = self.cpu_quota() {
            let _ = std::fs::write(dir.join("cpu.max"), format!("{quota} 100000"));
        }
        Some(vec![dir])
    }

    fn prepare_v1(&self, id: &str) -> Option<Vec<PathBuf>> {
        let make = |controller: &str| {
            let dir = Path::new(CGROUP_ROOT)
                .join(controller)
                .join("chiron")
                .join(id);
            std::fs::create_dir_all(&dir).ok().map(|()| dir)
        };
        let memory = make("memory")?;
        let memory_ok = write_all(
            &memory,
            &[("memory.limit_in_bytes", self.memory.to_string())],
        );
        // Swap accounting may be off; the plain limit still holds.
        let _ = std::fs::write(
            memory.join("memory.memsw.limit_in_bytes"),
            self.memory.to_string(),
        );
        let pids = make("pids");
        let pids_ok = pids
            .as_ref()
            .is_some_and(|dir| write_all(dir, &[("pids.max", self.pids.to_string())]));
        if !memory_ok || !pids_ok {
            let _ = std::fs::remove_dir(&memory);
            if let Some(dir) = pids {
                let _ = std::fs::remove_dir(dir);
            }
            return None;
        }
        let mut dirs = vec![memory];
        dirs.extend(pids);
        if let (Some(quota), Some(cpu)) = (self.cpu_quota(), make("cpu")) {
            if write_all(
                &cpu,
                &[
                    ("cpu.cfs_period_us", "100000".to_owned()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            ) {
                dirs.push(cpu);
            } else {
                let _ = std::fs::remove_dir(cpu);
            }
        }
        Some(dirs)
    }

    /// Puts `pid` into the prepared cgroups.
    pub fn join(applied: &Applied, pid: u32) -> bool {
        applied
            .cgroups
            .iter()
            .all(|dir| std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok())
    }

    /// Sets the rlimit fallback on the calling process (for `pre_exec`: async-signal-safe).
    pub fn apply_rlimits(memory: u64, pids: u64) -> std::io::Result<()> {
        for (resource, value) in [(libc::RLIMIT_AS, memory), (libc::RLIMIT_NPROC, pids)] {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit with a valid struct on this process.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The cgroup directories a gateway may have left behind, for cleanup at start.
    pub fn leftover_parents() -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        vec![
            root.join("chiron"),
            root.join("memory/chiron"),
            root.join("pids/chiron"),
            root.join("cpu/chiron"),
        ]
    }
}
