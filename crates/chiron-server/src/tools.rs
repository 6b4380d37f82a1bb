//! What runs tools: packages loaded from the tool directories, their installed sources
//! (`chiron tool install`), the tools of `mcp-stdio` packages discovered in a runner that
//! belongs to nobody and has no egress, the local sandbox backend, the runner pool, and the
//! catalog over all of it. [`ToolRuntime::reload`] does it all again without a restart.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chiron_core::Config;
use chiron_runner::local::{LocalBackend, LocalConfig, Mounts, SourceKind};
use chiron_store::Store;
use chiron_tools::{LoadReport, PackageKind, ToolPackage, MANIFEST_FILE};

/// The file that marks a completely installed source.
const INSTALLED_MARKER: &str = ".chiron-installed";

/// The loaded packages, runners and catalog.
pub struct ToolRuntime {
    /// Grant-filtered tools from the loaded packages; hand it to [`crate::AppState::with_catalog`].
    pub catalog: Arc<chiron_mcp::PackageCatalog>,
    /// One sandboxed runner per principal.
    pub pool: Arc<chiron_runner::RunnerPool>,
    backend: Arc<LocalBackend>,
    dirs: Vec<PathBuf>,
    data_dir: PathBuf,
    /// The egress proxy serving runners' listeners, told what packages may reach on reload.
    egress: Option<Arc<chiron_egress::EgressProxy>>,
    /// Discovered server tools by package cache key (see [`catalog_key`]).
    discovered: Mutex<HashMap<String, Vec<rmcp::model::Tool>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// The tool directories in force: `tools.dirs`; when none are configured, `./tools` if it
/// exists (running from a checkout), else `<data_dir>/tools` if it exists (where the demo
/// writes the shipped packages outside a checkout), so that `serve` without `--demo` and the
/// CLI see the packages the demo served.
pub fn tool_dirs(config: &Config) -> Vec<PathBuf> {
    if !config.tools.dirs.is_empty() {
        return config.tools.dirs.clone();
    }
    [PathBuf::from("tools"), demo_tool_dir(config)]
        .into_iter()
        .find(|dir| dir.is_dir())
        .into_iter()
        .collect()
}

/// Where the demo writes the shipped packages when it runs outside a checkout.
pub fn demo_tool_dir(config: &Config) -> PathBuf {
    config.server.data_dir.join("tools")
}

/// The packages shipped in the source tree's `tools/`, built into the binary so that the demo
/// has them wherever it runs: (path below the tools directory, contents).
const SHIPPED_PACKAGES: &[(&str, &str)] = &[
    (
        "echo/chiron-tool.toml",
        include_str!("../../../tools/echo/chiron-tool.toml"),
    ),
    ("echo/echo.py", include_str!("../../../tools/echo/echo.py")),
    (
        "github/chiron-tool.toml",
        include_str!("../../../tools/github/chiron-tool.toml"),
    ),
    (
        "github/github.py",
        include_str!("../../../tools/github/github.py"),
    ),
    (
        "slack/chiron-tool.toml",
        include_str!("../../../tools/slack/chiron-tool.toml"),
    ),
    (
        "slack/slack.py",
        include_str!("../../../tools/slack/slack.py"),
    ),
    (
        "time/chiron-tool.toml",
        include_str!("../../../tools/time/chiron-tool.toml"),
    ),
];

/// Writes the shipped packages below `dir`, leaving any file already there as it is (it may
/// have been edited).
pub fn write_shipped_packages(dir: &Path) -> std::io::Result<()> {
    for (path, contents) in SHIPPED_PACKAGES {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut out) => std::io::Write::write_all(&mut out, contents.as_bytes())?,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn data_dir(config: &Config) -> PathBuf {
    std::fs::canonicalize(&config.server.data_dir)
        .unwrap_or_else(|_| config.server.data_dir.clone())
}

/// Where `package`'s source is installed: `<data_dir>/packages/<name>/<version>`.
pub fn source_dir(data_dir: &Path, package: &ToolPackage) -> PathBuf {
    data_dir
        .join("packages")
        .join(&package.name)
        .join(&package.version)
}

/// A source's ecosystem and what to install (`pypi:x==1` → (Pypi, `x==1`)).
pub fn parse_source(source: &str) -> Option<(SourceKind, &str)> {
    match source.split_once(':')? {
        ("pypi", spec) if !spec.is_empty() => Some((SourceKind::Pypi, spec)),
        ("npm", spec) if !spec.is_empty() => Some((SourceKind::Npm, spec)),
        _ => None,
    }
}

/// Whether `package`'s declared source is installed.
pub fn source_installed(data_dir: &Path, package: &ToolPackage) -> bool {
    package.source.as_deref().is_some_and(|source| {
        std::fs::read_to_string(source_dir(data_dir, package).join(INSTALLED_MARKER))
            .is_ok_and(|marker| marker.trim() == source)
    })
}

fn mounts(data_dir: &Path, report: &LoadReport) -> Mounts {
    let mut mounts = Mounts::default();
    for package in report.packages.values() {
        let dir = std::fs::canonicalize(&package.dir).unwrap_or_else(|_| package.dir.clone());
        mounts.tools.insert(package.name.clone(), dir);
        if let Some((kind, _)) = package.source.as_deref().and_then(parse_source) {
            if source_installed(data_dir, package) {
                mounts
                    .sources
                    .insert(package.name.clone(), (kind, source_dir(data_dir, package)));
            }
        }
    }
    mounts
}

/// The discovery cache key of an `mcp-stdio` package: name, version and a digest of its
/// manifest, so an edited manifest is discovered again even under the same version.
fn catalog_key(package: &ToolPackage) -> String {
    use std::hash::{Hash, Hasher};
    let manifest = std::fs::read(package.dir.join(MANIFEST_FILE)).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    manifest.hash(&mut hasher);
    format!(
        "{}@{}-{:016x}",
        package.name,
        package.version,
        hasher.finish()
    )
}

impl ToolRuntime {
    /// Loads the packages, discovers `mcp-stdio` tools, and builds the backend, pool and
    /// catalog. `agent` is the command that runs `chiron runner-agent` (normally the running
    /// binary). Returns what loading found.
    /// With `egress`, runners' proxy listeners are served by its proxy, sandboxes trust its CA
    /// and tool results are scrubbed of secret values; without, all egress is refused.
    pub async fn start(
        config: &Config,
        store: Store,
        agent: Vec<String>,
        egress: Option<&crate::egress::Egress>,
    ) -> (Self, LoadReport) {
        let dirs = tool_dirs(config);
        let data_dir = data_dir(config);
        let local = LocalConfig {
            agent,
            data_dir: data_dir.clone(),
            mounts: Mounts::default(),
            ca_bundle: egress.map(|e| e.ca_bundle.clone()),
            memory_limit: config.runner.memory_mib * 1024 * 1024,
            pids_limit: config.runner.max_processes,
            cpus: f64::from(config.runner.cpu_percent) / 100.0,
            cgroups: true,
        };
        let backend = Arc::new(match egress {
            Some(egress) => LocalBackend::with_egress(local, egress.proxy.clone()),
            None => LocalBackend::new(local),
        });
        let cleaned = backend.clean_leftovers();
        if cleaned > 0 {
            tracing::info!(count = cleaned, "removed leftovers of earlier runners");
        }
        let pool = Arc::new(chiron_runner::RunnerPool::new(
            backend.clone(),
            chiron_runner::PoolConfig {
                idle_timeout: config.runner.idle_timeout,
                max_runners: config.runner.max_runners,
                max_concurrent: config.runner.max_concurrent_calls,
                max_queued: config.runner.max_queued_calls,
            },
        ));
        let catalog = Arc::new(chiron_mcp::PackageCatalog::new(
            store,
            pool.clone(),
            &LoadReport::default(),
        ));
        if let Some(egress) = egress {
            catalog.set_scrubber(Arc::new(crate::egress::SecretScrubber(
                egress.secrets.clone(),
            )));
        }
        let runtime = Self {
            catalog,
            pool,
            egress: egress.map(|e| e.proxy.clone()),
            backend,
            dirs,
            data_dir,
            discovered: Mutex::default(),
            reloading: tokio::sync::Mutex::new(()),
        };
        let report = runtime.reload().await;
        (runtime, report)
    }

    /// Loads the packages again: sources are mounted, `mcp-stdio` tools discovered (each
    /// package version once), the catalog replaced (and open sessions told), new runners
    /// mount the new packages, and runners started before are replaced at their next idle
    /// call. Returns what loading found.
    pub async fn reload(&self) -> LoadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let mut report = chiron_tools::load_packages(&self.dirs);
        self.backend.set_mounts(mounts(&self.data_dir, &report));
        self.discover(&mut report).await;
        if let Some(proxy) = &self.egress {
            proxy.set_packages(chiron_egress::proxy::package_hosts(
                report.packages.values(),
            ));
        }
        self.pool.renew();
        self.catalog.reload(&report);
        report
    }

    /// Fills in the tools of every `mcp-stdio` package, from the cache or by discovery;
    /// a package whose server cannot be discovered is reported and skipped.
    async fn discover(&self, report: &mut LoadReport) {
        let stdio: Vec<ToolPackage> = report
            .packages
            .values()
            .filter(|p| p.kind == PackageKind::McpStdio)
            .cloned()
            .collect();
        for package in stdio {
            if package.source.is_some() && !source_installed(&self.data_dir, &package) {
                report.reject(
                    &package.name,
                    "source",
                    format!(
                        "{} is not installed; run `chiron tool install {}`",
                        package.source.as_deref().unwrap_or_default(),
                        package.name
                    ),
                );
                continue;
            }
            match self.server_tools(&package).await {
                Ok(tools) => {
                    let decls = tools
                        .iter()
                        .map(|tool| chiron_mcp::decl_from_server_tool(tool, package.timeout))
                        .collect();
                    report.add_discovered(&package.name, decls);
                }
                Err(err) => report.reject(
                    &package.name,
                    "command",
                    format!("the server could not be discovered: {err}"),
                ),
            }
        }
    }

    /// The server's tools: from memory, from the disk cache, or by starting it.
    async fn server_tools(&self, package: &ToolPackage) -> Result<Vec<rmcp::model::Tool>, String> {
        let key = catalog_key(package);
        if let Some(tools) = self
            .discovered
            .lock()
            .expect("invariant: discovery cache lock")
            .get(&key)
        {
            return Ok(tools.clone());
        }
        let cache_file = self.data_dir.join("catalogs").join(format!("{key}.json"));
        let cached = std::fs::read(&cache_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<rmcp::model::Tool>>(&bytes).ok());
        let tools = match cached {
            Some(tools) => tools,
            None => {
                tracing::info!(package = %package.name, version = %package.version, "discovering mcp-stdio tools");
                let tools = self.backend.discover(package).await?;
                let written =
                    std::fs::create_dir_all(cache_file.parent().unwrap_or(&self.data_dir))
                        .and_then(|()| {
                            std::fs::write(
                                &cache_file,
                                serde_json::to_vec(&tools).unwrap_or_default(),
                            )
                        });
                if let Err(err) = written {
                    tracing::warn!(error = %err, "could not cache discovered tools");
                }
                tools
            }
        };
        self.discovered
            .lock()
            .expect("invariant: discovery cache lock")
            .insert(key, tools.clone());
        Ok(tools)
    }
}

/// Why a source could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The package declares no installable source.
    #[error("package `{0}` declares no source")]
    NoSource(String),
    /// The installer could not run or failed.
    #[error("installing {spec} failed: {message}")]
    Failed {
        /// The source.
        spec: String,
        /// What went wrong (the installer's last output lines).
        message: String,
    },
}

/// Installs `package`'s source once per version into [`source_dir`], reporting the
/// installer's output lines to `progress`. Returns the directory and whether anything was
/// installed (false when it already was).
pub fn install_source(
    config: &Config,
    package: &ToolPackage,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, bool), InstallError> {
    let source = package
        .source
        .clone()
        .ok_or_else(|| InstallError::NoSource(package.name.clone()))?;
    let failed = |message: String| InstallError::Failed {
        spec: source.clone(),
        message,
    };
    let (kind, spec) =
        parse_source(&source).ok_or_else(|| failed("not a pypi: or npm: source".into()))?;
    let data_dir = data_dir(config);
    let target = source_dir(&data_dir, package);
    if source_installed(&data_dir, package) {
        return Ok((target, false));
    }
    let parent = target.parent().unwrap_or(&data_dir).to_owned();
    std::fs::create_dir_all(&parent).map_err(|e| failed(e.to_string()))?;
    // Readable by the unprivileged ids sandboxes run as.
    use std::os::unix::fs::PermissionsExt;
    for dir in [data_dir.join("packages"), parent.clone()] {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    }
    let partial = parent.join(format!(".{}.partial", package.version));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| failed(e.to_string()))?;
    let mut command = match kind {
        SourceKind::Pypi => {
            let mut command = std::process::Command::new(&config.tools.python);
            command
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--no-input",
                    "--disable-pip-version-check",
                ])
                .args([
                    "--progress-bar",
                    "off",
                    "--no-warn-script-location",
                    "--target",
                ])
                .arg(&partial)
                .arg(spec)
                .env("PIP_ROOT_USER_ACTION", "ignore");
            command
        }
        SourceKind::Npm => {
            let mut command = std::process::Command::new(&config.tools.npm);
            command
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--omit=dev",
                    "--prefix",
                ])
                .arg(&partial)
                .arg(spec);
            command
        }
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("cannot run the installer: {e}")))?;
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        if let Some(stderr) = stderr {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
        tail
    });
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            progress(&line);
        }
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    let tail = errors.join().unwrap_or_default();
    if !status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(failed(format!("{status}\n{}", tail.join("\n"))));
    }
    std::fs::write(partial.join(INSTALLED_MARKER), &source).map_err(|e| failed(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&partial, &target).map_err(|e| failed(e.to_string()))?;
    let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
    Ok((target, true))
}

/// The packages under the configured tool directories that declare a source, by name.
pub fn packages_with_sources(config: &Config) -> BTreeMap<String, ToolPackage> {
    chiron_tools::load_packages(&tool_dirs(config))
        .packages
        .into_iter()
        .filter(|(_, package)| package.source.is_some())
        .collect()
}

/// How long the tool directories must be quiet after a change before packages are reloaded,
/// so an editor's save or a copied folder causes one reload, not dozens.
const WATCH_QUIET: std::time::Duration = std::time::Duration::from_millis(300);

impl ToolRuntime {
    /// Reloads the packages whenever a file under the tool directories changes, until
    /// `shutdown`. Returns `None` (after logging why) when the directories cannot be watched.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!(error = %err, "tool directories are not watched; use `chiron tool reload`");
                return None;
            }
        };
        for dir in &self.dirs {
            if let Err(err) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
                tracing::warn!(dir = %dir.display(), error = %err, "tool directory is not watched; use `chiron tool reload`");
            }
        }
        let runtime = self.clone();
        Some(tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    changed = rx.recv() => if changed.is_none() { break },
                    () = shutdown.cancelled() => break,
                }
                // Let the burst of events settle.
                while let Ok(Some(())) = tokio::time::timeout(WATCH_QUIET, rx.recv()).await {}
                let report = runtime.reload().await;
                log_report(&report, "tool packages reloaded after a change");
            }
        }))
    }
}

/// Logs what loading found: each skipped package, then the totals.
pub fn log_report(report: &LoadReport, what: &'static str) {
    for err in &report.errors {
        tracing::warn!(error = %err, "tool package skipped");
    }
    tracing::info!(
        packages = report.packages.len(),
        tools = report.tools.len(),
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the source tree's `tools/`, relative to it.
    fn files_below(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_below(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }

    #[test]
    fn the_binary_ships_every_package_file_and_keeps_edits() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools");
        let mut tree = Vec::new();
        files_below(&root, &root, &mut tree);
        tree.sort();
        let mut shipped: Vec<String> = SHIPPED_PACKAGES
            .iter()
            .map(|(path, _)| path.to_string())
            .collect();
        shipped.sort();
        assert_eq!(shipped, tree, "tools/ and SHIPPED_PACKAGES differ");

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("echo")).unwrap();
        std::fs::write(dir.path().join("echo/echo.py"), "edited").unwrap();
        write_shipped_packages(dir.path()).unwrap();
        write_shipped_packages(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("echo/echo.py")).unwrap(),
            "edited"
        );
        let report = chiron_tools::load_packages(&[dir.path().to_owned()]);
        let names: Vec<&str> = report.packages.keys().map(String::as_str).collect();
        assert_eq!(names, ["echo", "github", "slack", "time"]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    #[test]
    fn without_configured_dirs_the_demo_packages_in_the_data_dir_are_used() {
        // Tests run in the crate's folder, which has no `tools/`.
        assert!(!std::path::Path::new("tools").exists());
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_owned();
        assert!(tool_dirs(&config).is_empty());
        write_shipped_packages(&demo_tool_dir(&config)).unwrap();
        assert_eq!(tool_dirs(&config), [dir.path().join("tools")]);
        config.tools.dirs = vec![dir.path().join("elsewhere")];
        assert_eq!(tool_dirs(&config), [dir.path().join("elsewhere")]);
    }
}
