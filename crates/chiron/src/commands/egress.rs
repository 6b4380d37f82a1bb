//! `chiron egress serve|issue|revoke`: the egress proxy on its own, for deployments where
//! runners are not local sandboxes (each request carries a stored credential instead of
//! arriving on its runner's own listener).

use std::process::ExitCode;

use anyhow::Context;
use chiron_core::Config;
use chiron_egress::proxy::{credential_hash, new_credential, package_hosts};
use chiron_server::{serve, setup};

use crate::cli::EgressCommand;

pub async fn run(config: Config, command: EgressCommand) -> anyhow::Result<ExitCode> {
    let store = setup::open_store(&config)
        .await
        .context("opening storage")?;
    match command {
        EgressCommand::Issue {
            principal,
            package,
            runner,
        } => {
            let principal = super::manage::resolve(&store, &principal).await?;
            let secret = new_credential();
            let id = store
                .insert_egress_credential(
                    &credential_hash(&secret),
                    principal.id,
                    &runner,
                    &package,
                )
                .await?;
            println!("{secret}");
            eprintln!(
                "egress credential {id} for {} / {package} (shown once)",
                principal.display_name
            );
        }
        EgressCommand::Revoke { id } => {
            if !store.revoke_egress_credential(&id).await? {
                anyhow::bail!("no unrevoked egress credential {id}");
            }
            println!("revoked egress credential {id}");
        }
        EgressCommand::Serve => {
            let egress = chiron_server::egress::egress(&config, store.clone())
                .map_err(anyhow::Error::msg)
                .context("setting up egress")?;
            let report = chiron_tools::load_packages(&chiron_server::tools::tool_dirs(&config));
            chiron_server::tools::log_report(&report, "tool packages loaded");
            egress
                .proxy
                .set_packages(package_hosts(report.packages.values()));
            let stop = tokio_util::sync::CancellationToken::new();
            let secret_changes = chiron_server::egress::follow_secret_changes(
                &config,
                egress.secrets.clone(),
                stop.clone(),
            );
            let shutdown = serve::shutdown_signal().context("installing signal handlers")?;
            let listener = tokio::net::TcpListener::bind(config.egress.listen)
                .await
                .with_context(|| format!("binding {}", config.egress.listen))?;
            tracing::info!(listen = %listener.local_addr()?, "egress proxy listening");
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let proxy = egress.proxy.clone();
                        tokio::spawn(async move { proxy.serve_shared_connection(stream).await });
                    }
                    () = &mut shutdown => break,
                }
            }
            stop.cancel();
            if let Some(task) = secret_changes {
                let _ = task.await;
            }
            egress.proxy.flush_audit().await;
            tracing::info!("stopped");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
