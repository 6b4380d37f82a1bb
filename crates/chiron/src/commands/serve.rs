//! `chiron serve [--demo]`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chiron_core::{Config, CreatedVia};
use chiron_server::{serve, setup, AppState};
use tokio_util::sync::CancellationToken;

pub async fn run(config: Config, demo: bool) -> anyhow::Result<ExitCode> {
    let store = setup::open_store(&config)
        .await
        .context("opening storage")?;
    let auth = setup::auth_service(&config, store.clone())?;
    let admin_token = if demo {
        setup::bootstrap_admin(&auth, CreatedVia::Demo)
            .await
            .context("creating the admin")?
    } else {
        None
    };

    let shutdown = serve::shutdown_signal().context("installing signal handlers")?;
    let listener = serve::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local = listener.local_addr()?;
    if demo {
        print_handover(&config, admin_token.as_ref().map(|t| t.secret.expose()));
    }
    tracing::info!(listen = %local, public_url = %config.server.public_url, backend = store.backend().as_str(), "listening");

    let background = CancellationToken::new();
    let flusher = auth.spawn_usage_flusher(Duration::from_secs(5), background.clone());
    let grace = config.server.shutdown_grace;
    let state = AppState::new(config, store.clone(), auth);
    serve::serve(listener, chiron_server::router(state), shutdown, grace).await?;

    background.cancel();
    let _ = flusher.await;
    store.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The demo hand-over on stdout; logs go to stderr.
fn print_handover(config: &Config, admin_token: Option<&str>) {
    let base = config.server.public_base();
    println!("chiron is running at {base}");
    println!("  health:    {base}/healthz");
    println!("  admin API: {base}/admin/api/");
    if let Some(token) = admin_token {
        println!();
        println!("ADMIN TOKEN (shown once, on this first start; keep it secret):");
        println!("  {token}");
    }
    println!();
    println!(
        "Stop with Ctrl-C. Data lives in {}",
        config.server.data_dir.display()
    );
}
