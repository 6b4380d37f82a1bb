//! `chiron serve [--demo]`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chiron_core::{Config, CreatedVia};
use chiron_server::tools::{
    demo_tool_dir, log_report, packages_with_sources, tool_dirs, write_shipped_packages,
    ToolRuntime,
};
use chiron_server::{serve, setup, AppState};
use tokio_util::sync::CancellationToken;

/// The `mcp-stdio` example the demo installs and grants.
const DEMO_STDIO_PACKAGE: &str = "time";

pub async fn run(mut config: Config, demo: bool) -> anyhow::Result<ExitCode> {
    // Runner homes and the pid file live in the data directory whatever the database is.
    setup::prepare_data_dir(&config).context("preparing the data directory")?;
    let _data_dir_lock = setup::lock_data_dir(&config).map_err(anyhow::Error::msg)?;
    let dir = demo_tool_dir(&config);
    if demo && tool_dirs(&config).iter().all(|d| *d == dir) {
        // Not in a checkout and nothing configured: the packages built into the binary (files
        // a newer binary adds are written on its first demo start; edited ones are kept).
        write_shipped_packages(&dir)
            .with_context(|| format!("writing the shipped tool packages to {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "demo tool packages written");
        config.tools.dirs = vec![dir];
    }
    let store = setup::open_store(&config)
        .await
        .context("opening storage")?;
    let auth = setup::auth_service(&config, store.clone())?;
    let exe = std::env::current_exe().context("locating the chiron binary for runner agents")?;
    let agent = agent_command(&exe);
    if agent.len() > 1 {
        tracing::info!(
            "no chiron-runner-agent next to the chiron binary: runners start as `chiron runner-agent` \
             (`cargo build --release` builds the slim agent, which keeps idle runners smaller)"
        );
    }
    if demo && std::env::var_os(chiron_egress::keys::MASTER_KEY_ENV).is_none() {
        // The demo sets up what `chiron init` would: the master key that seals secrets.
        let key_file = chiron_server::egress::master_key_file(&config);
        if chiron_egress::Keyring::create_file(&key_file).context("creating the master key")? {
            tracing::info!(path = %key_file.display(), "created the master key");
        }
    }
    if demo {
        // The example stdio server comes from PyPI: install it (once) with visible progress.
        // Without network the demo still runs, without it.
        if packages_with_sources(&config).contains_key(DEMO_STDIO_PACKAGE) {
            let names = [DEMO_STDIO_PACKAGE.to_owned()];
            if let Ok(code) = super::tool::install(&config, &names) {
                if code != ExitCode::SUCCESS {
                    eprintln!("continuing without the `{DEMO_STDIO_PACKAGE}` example");
                }
            }
        }
    }
    let egress = if config.egress.enabled {
        Some(
            chiron_server::egress::egress(&config, store.clone())
                .map_err(anyhow::Error::msg)
                .context("setting up egress")?,
        )
    } else {
        None
    };
    let (tools, report) = ToolRuntime::start(&config, store.clone(), agent, egress.as_ref()).await;
    log_report(&report, "tool packages loaded");
    let mut handover = None;
    if demo {
        for package in ["echo", DEMO_STDIO_PACKAGE] {
            if report.packages.contains_key(package) {
                setup::grant_to_demo(&store, package)
                    .await
                    .with_context(|| format!("granting {package} to the demo principal"))?;
            }
        }
        let admin = setup::bootstrap_admin(&auth, CreatedVia::Demo)
            .await
            .context("creating the admin")?;
        let demo_token = setup::demo_token(&auth)
            .await
            .context("issuing the demo token")?;
        handover = Some((admin, demo_token));
    }

    let shutdown = serve::shutdown_signal().context("installing signal handlers")?;
    let listener = serve::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local = listener.local_addr()?;
    if let Some((admin, demo_token)) = &handover {
        print_handover(
            &config,
            demo_token.secret.expose(),
            admin.as_ref().map(|t| t.secret.expose()),
        );
    }
    tracing::info!(
        listen = %local,
        public_url = %config.server.public_url,
        backend = store.backend().as_str(),
        "listening"
    );
    let loopback_url =
        chiron_mcp::is_loopback(config.server.public_url.host_str().unwrap_or_default());
    if local.ip().is_unspecified() && loopback_url {
        tracing::warn!(
            public_url = %config.server.public_url,
            "listening on every interface, but server.public_url is a loopback URL: clients \
             reaching this host by another name are refused (Host check) and tokens name the \
             loopback URL; set server.public_url to the URL they use"
        );
    }

    // `chiron tool reload` (or any SIGHUP) reloads the tool packages without a restart.
    let tools = std::sync::Arc::new(tools);
    let pid_file = setup::pid_file(&config);
    std::fs::write(&pid_file, std::process::id().to_string()).context("writing the pid file")?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let reloader = {
        let tools = tools.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let report = tools.reload().await;
                log_report(&report, "tool packages reloaded");
            }
        })
    };

    let background = CancellationToken::new();
    let access = tools
        .catalog
        .spawn_access_watcher(config.tools.access_poll_interval, background.clone());
    let watcher = if config.tools.watch {
        tools.spawn_watcher(background.clone())
    } else {
        None
    };
    let flusher = auth.spawn_usage_flusher(Duration::from_secs(5), background.clone());
    let pruner = chiron_server::retention::spawn_pruner(
        store.clone(),
        config.audit.retention,
        background.clone(),
    );
    // Secret values stay in memory between egress requests; other replicas' changes drop them.
    let secret_changes = egress.as_ref().and_then(|egress| {
        chiron_server::egress::follow_secret_changes(
            &config,
            egress.secrets.clone(),
            background.clone(),
        )
    });
    let grace = config.server.shutdown_grace;
    let mut slack_socket = None;
    let mut slack_routes = None;
    // One secret store for the proxy, the Slack bot and the admin API.
    let mut secrets = egress.as_ref().map(|egress| egress.secrets.clone());
    if config.slack.enabled {
        let secrets = secrets
            .get_or_insert_with(|| chiron_server::egress::secrets(&config, store.clone()))
            .clone();
        let transport = chiron_server::slack::start(
            std::sync::Arc::new(config.clone()),
            auth.clone(),
            store.clone(),
            secrets,
            background.clone(),
        )
        .map_err(anyhow::Error::msg)
        .context("starting the Slack bot")?;
        match transport {
            chiron_server::slack::SlackTransport::Events(routes) => slack_routes = Some(routes),
            chiron_server::slack::SlackTransport::Socket(task) => slack_socket = Some(task),
        }
        tracing::info!(transport = %config.slack.transport, "slack bot started");
    }
    let mut state = AppState::with_catalog(config, store.clone(), auth, tools.catalog.clone())
        .with_runners(tools.pool.clone());
    if let Some(routes) = slack_routes {
        state = state.with_slack(routes);
    }
    if let Some(secrets) = secrets {
        state = state.with_secrets(secrets);
    }
    if let Some(egress) = &egress {
        state = state.with_egress((*egress.proxy).clone());
    }
    let reaper = state.mcp.spawn_reaper(background.clone());
    // Stops idle runners while serving and every runner at shutdown.
    let runners = tools.pool.spawn_reaper(background.clone());
    let stop_sessions = state.shutdown.clone();
    let on_signal = async move {
        shutdown.await;
        // End MCP sessions and their SSE streams so draining only waits for real requests.
        stop_sessions.cancel();
    };
    let threads = state.config.server.http_thread_count();
    let http = serve::serve(
        listener,
        chiron_server::router(state),
        on_signal,
        grace,
        threads,
    )
    .await?;

    background.cancel();
    let _ = flusher.await;
    let _ = reaper.await;
    let _ = runners.await;
    reloader.abort();
    let _ = access.await;
    if let Some(task) = slack_socket {
        let _ = task.await;
    }
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    if let Some(task) = secret_changes {
        let _ = task.await;
    }
    if let Some(task) = pruner {
        // A first prune of a large backlog may still be deleting: shutdown does not wait for
        // it (deletes are chunked, and the next start carries on).
        task.abort();
        let _ = task.await;
    }
    // Both audit writers at once: with storage down, each tries its last rows again for up
    // to the retry period before dropping them.
    tokio::join!(tools.catalog.flush_audit(), async {
        if let Some(egress) = &egress {
            egress.proxy.flush_audit().await;
        }
    });
    // Last: the runners have stopped, so nothing is left on the HTTP threads.
    http.stop().await;
    let _ = std::fs::remove_file(&pid_file);
    store.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The demo hand-over on stdout (logs go to stderr): what a client needs to connect.
fn print_handover(config: &Config, token: &str, admin_token: Option<&str>) {
    let url = config.server.mcp_url();
    let vscode = serde_json::json!({
        "servers": { "chiron": { "type": "http", "url": url, "headers": { "Authorization": format!("Bearer {token}") } } }
    });
    let cursor = serde_json::json!({
        "mcpServers": { "chiron": { "url": url, "headers": { "Authorization": format!("Bearer {token}") } } }
    });
    let pretty =
        |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
    println!("chiron is running.");
    println!();
    println!("MCP URL: {url}");
    println!("Token:   {token}");
    println!(
        "         (principal \"demo\", scope mcp:tools; a new one replaces it on every demo start)"
    );
    println!();
    println!("Claude Code:");
    println!(
        "  claude mcp add --transport http chiron {url} --header \"Authorization: Bearer {token}\""
    );
    println!();
    println!("VS Code (.vscode/mcp.json):");
    println!("{}", pretty(&vscode));
    println!();
    println!("Cursor (~/.cursor/mcp.json):");
    println!("{}", pretty(&cursor));
    if let Some(admin) = admin_token {
        println!();
        println!("ADMIN TOKEN (shown once, on this first start; keep it secret):");
        println!("  {admin}");
        println!(
            "  Use it as a bearer token on {}/admin/api/",
            config.server.public_base()
        );
    }
    println!();
    println!(
        "Stop with Ctrl-C. Data lives in {}",
        config.server.data_dir.display()
    );
}

/// How runner agents are started: the slim `chiron-runner-agent` next to the `chiron` binary
/// when it is there (an idle runner then holds far less memory), else `chiron runner-agent`.
fn agent_command(exe: &std::path::Path) -> Vec<String> {
    let slim = exe.with_file_name("chiron-runner-agent");
    if slim.is_file() {
        vec![slim.display().to_string()]
    } else {
        vec![exe.display().to_string(), "runner-agent".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::agent_command;

    #[test]
    fn the_slim_agent_is_used_when_it_sits_next_to_chiron() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("chiron");
        std::fs::write(&exe, "").unwrap();
        assert_eq!(
            agent_command(&exe),
            [exe.display().to_string(), "runner-agent".into()]
        );
        let slim = dir.path().join("chiron-runner-agent");
        std::fs::write(&slim, "").unwrap();
        assert_eq!(agent_command(&exe), [slim.display().to_string()]);
    }
}
