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

    Ok(if storage.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
