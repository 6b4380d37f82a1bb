//! `chiron doctor`: the effective configuration (credentials redacted) and what the host
//! offers. Writes nothing: an SQLite database that does not exist yet is reported, not created.

use std::process::ExitCode;

use chiron_core::Config;
use chiron_runner::host::{probe_host, Probe};
use chiron_server::config::{database_url, effective_toml, redact_url};
use chiron_server::setup;
use chiron_store::Store;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    println!("# effective configuration");
    print!("{}", effective_toml(&config));
    println!();
    println!("# checks");

    let storage = check_storage(&config).await;
    line("storage", &storage);

    let host = probe_host();
    line("user namespaces", &host.user_namespaces);
    line("landlock", &host.landlock);
    println!("  {:<18} {:?}", "cgroup version", host.cgroup_version);
    line("cgroup limits", &host.cgroup_limits);
    line("master key", &check_master_key(&config));
    let ca_key = chiron_egress::ca::ca_dir(&config.server.data_dir).join("ca.key");
    line(
        "egress CA",
        &Probe {
            ok: ca_key.exists(),
            detail: if ca_key.exists() {
                format!("{} present", ca_key.display())
            } else {
                "not created yet (`chiron init` or the first `serve` creates it)".into()
            },
        },
    );

    line("tool packages", &check_tool_packages(&config));

    Ok(if storage.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Whether secrets can be opened: the key is loaded (its id shown), never printed.
fn check_master_key(config: &Config) -> Probe {
    let file = chiron_server::egress::master_key_file(config);
    match chiron_egress::Keyring::load(&file) {
        Ok(keys) => Probe {
            ok: true,
            detail: format!("loaded (key id {})", keys.current_id()),
        },
        Err(err) => Probe {
            ok: false,
            detail: format!("{err}; egress is refused until it is set"),
        },
    }
}

/// The packages in the tool directories in force, loaded as the server loads them; the first
/// manifest problem is shown (`chiron tool check` lists them all).
fn check_tool_packages(config: &Config) -> Probe {
    let dirs = chiron_server::tools::tool_dirs(config);
    if dirs.is_empty() {
        return Probe {
            ok: false,
            detail: "no tool directories (set tools.dirs): only built-in tools are served".into(),
        };
    }
    let shown = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let report = chiron_tools::load_packages(&dirs);
    let names = report
        .packages
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match report.errors.first() {
        None => Probe {
            ok: true,
            detail: format!("{} in {shown}: {names}", report.packages.len()),
        },
        Some(first) => Probe {
            ok: false,
            detail: format!(
                "{} problem(s) in {shown}, first: {first} (`chiron tool check {shown}` lists all)",
                report.errors.len()
            ),
        },
    }
}

fn line(name: &str, probe: &Probe) {
    let mark = if probe.ok { "ok  " } else { "FAIL" };
    println!("  {name:<18} {mark} {}", probe.detail);
}

async fn check_storage(config: &Config) -> Probe {
    let url = database_url(config);
    if config.database.url.is_empty() {
        let file = config.server.data_dir.join("chiron.db");
        if !file.exists() {
            return Probe {
                ok: false,
                detail: format!("{} does not exist yet (run `chiron init`)", file.display()),
            };
        }
    }
    let mut options = setup::connect_options(config);
    if url.starts_with("sqlite:") {
        options.url = format!("{url}?mode=rw");
    }
    let shown = redact_url(&url);
    match Store::connect(&options).await {
        Ok(store) => {
            let result = store.ping().await;
            store.close().await;
            match result {
                Ok(()) => Probe {
                    ok: true,
                    detail: format!("{shown} reachable"),
                },
                Err(err) => Probe {
                    ok: false,
                    detail: format!("{shown}: {err}"),
                },
            }
        }
        Err(err) => Probe {
            ok: false,
            detail: format!("{shown}: {err}: {}", source_text(&err)),
        },
    }
}

fn source_text(err: &dyn std::error::Error) -> String {
    err.source().map(|s| s.to_string()).unwrap_or_default()
}
