//! `chiron tool list|check|install|reload`: load packages the way the server will and report
//! every problem; install declared sources; ask a running server to reload.

use std::path::PathBuf;
use std::process::ExitCode;

use chiron_core::Config;
use chiron_tools::{load_packages, LoadReport, PackageKind};

use chiron_server::tools::{install_source, packages_with_sources, source_installed, tool_dirs};

use crate::cli::ToolCommand;

pub fn run(config: Config, command: ToolCommand) -> anyhow::Result<ExitCode> {
    match command {
        ToolCommand::List => {
            let dirs = tool_dirs(&config);
            if dirs.is_empty() {
                eprintln!("no tool directories configured (set tools.dirs or CHIRON_TOOLS__DIRS)");
                return Ok(ExitCode::SUCCESS);
            }
            let report = load_packages(&dirs);
            print_packages(&config, &report);
            Ok(finish(&report))
        }
        ToolCommand::Install { packages } => install(&config, &packages),
        ToolCommand::Reload => {
            let pid_file = chiron_server::setup::pid_file(&config);
            let pid: i32 = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no running server found ({} is missing)",
                        pid_file.display()
                    )
                })?;
            // SAFETY: kill(2) with a pid read from the server's own pid file.
            if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
                anyhow::bail!(
                    "could not signal the server (pid {pid}): {}",
                    std::io::Error::last_os_error()
                );
            }
            println!("asked the server (pid {pid}) to reload its tool packages");
            Ok(ExitCode::SUCCESS)
        }
        ToolCommand::Check { dirs } => {
            let report = load_packages(&dirs);
            if report.errors.is_empty() {
                println!(
                    "ok: {} package(s), {} declared tool(s) in {}",
                    report.packages.len(),
                    report.tools.len(),
                    show(&dirs)
                );
            }
            Ok(finish(&report))
        }
    }
}

fn show(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Installs the sources of `names` (all packages with one when empty), printing progress.
pub fn install(config: &Config, names: &[String]) -> anyhow::Result<ExitCode> {
    let available = packages_with_sources(config);
    for name in names {
        if !available.contains_key(name) {
            anyhow::bail!(
                "no package named `{name}` with a `source` in {}",
                show(&tool_dirs(config))
            );
        }
    }
    let mut failed = false;
    for (name, package) in &available {
        if !names.is_empty() && !names.contains(name) {
            continue;
        }
        let source = package.source.as_deref().unwrap_or_default();
        println!("installing {name}: {source}");
        let mut progress = |line: &str| println!("  {line}");
        match install_source(config, package, &mut progress) {
            Ok((dir, true)) => println!("installed {name} into {}", dir.display()),
            Ok((_, false)) => println!("{name}: {source} is already installed"),
            Err(err) => {
                eprintln!("error: {err}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_packages(config: &Config, report: &LoadReport) {
    for package in report.packages.values() {
        let kind = match package.kind {
            PackageKind::Command => "command",
            PackageKind::McpStdio => "mcp-stdio",
        };
        println!(
            "{} {} ({kind}) — {}  [{}]",
            package.name,
            package.version,
            package.description,
            package.dir.display()
        );
        if let Some(source) = &package.source {
            let data_dir = std::fs::canonicalize(&config.server.data_dir)
                .unwrap_or_else(|_| config.server.data_dir.clone());
            let state = if source_installed(&data_dir, package) {
                "installed"
            } else {
                "not installed: run `chiron tool install`"
            };
            println!("    source {source} ({state})");
        }
        if package.kind == PackageKind::McpStdio {
            println!("    tools discovered from the server when it loads");
        }
        for tool in &package.tools {
            println!("    {}_{}  {}", package.name, tool.name, tool.description);
        }
        for host in &package.egress {
            let secrets: Vec<&str> = host.secrets.iter().map(|s| s.name.as_str()).collect();
            let ports: String = host.ports.iter().map(|p| format!(" +port {p}")).collect();
            println!(
                "    egress {}{}{ports} secrets: [{}]",
                host.host,
                host.path_prefix,
                secrets.join(", ")
            );
        }
    }
}

/// Prints errors to stderr; a non-zero exit when there were any.
fn finish(report: &LoadReport) -> ExitCode {
    for err in &report.errors {
        eprintln!("error: {err}");
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
