//! One module per command family. Each works directly on the libraries; the CLI never talks
//! to a running server.

mod audit;
mod doctor;
mod egress;
mod manage;
mod runner;
mod secret;
mod serve;
mod tool;

use std::process::ExitCode;

use anyhow::Context;
use chiron_core::{Config, CreatedVia};
use chiron_server::setup;

use crate::cli::Command;

pub async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { demo } => serve::run(config, demo).await,
        Command::Init => init(config).await,
        Command::Migrate => migrate(config).await,
        Command::Doctor => doctor::run(config).await,
        Command::Version | Command::RunnerAgent { .. } => {
            unreachable!("handled before configuration is loaded")
        }
        Command::Principal(cmd) => manage::principal(config, cmd).await,
        Command::Group(cmd) => manage::group(config, cmd).await,
        Command::Token(cmd) => manage::token(config, cmd).await,
        Command::Tool(cmd) => tool::run(config, cmd),
        Command::Grant(cmd) => manage::grant(config, cmd).await,
        Command::Secret(cmd) => secret::run(config, cmd).await,
        Command::Egress(cmd) => egress::run(config, cmd).await,
        Command::Slack(crate::cli::SlackCommand::Status) => slack_status(&config),
        Command::Audit(cmd) => audit::run(config, cmd).await,
        Command::Runner(cmd) => runner::run(config, cmd).await,
    }
}

async fn init(config: Config) -> anyhow::Result<ExitCode> {
    let store = setup::open_store(&config)
        .await
        .context("opening storage")?;
    let auth = setup::auth_service(&config, store.clone())?;
    // The master key sealing secrets (unless it comes from CHIRON_MASTER_KEY) and the egress CA.
    if std::env::var_os(chiron_egress::keys::MASTER_KEY_ENV).is_none() {
        let key_file = chiron_server::egress::master_key_file(&config);
        if chiron_egress::Keyring::create_file(&key_file)? {
            println!("created the master key {} (mode 0600)", key_file.display());
        }
    }
    let data_dir = std::fs::canonicalize(&config.server.data_dir)
        .unwrap_or_else(|_| config.server.data_dir.clone());
    chiron_egress::ca::CertificateAuthority::load_or_create(&chiron_egress::ca::ca_dir(&data_dir))
        .map_err(anyhow::Error::msg)
        .context("creating the egress CA")?;
    match setup::bootstrap_admin(&auth, CreatedVia::Cli).await? {
        Some(issued) => {
            println!("chiron initialised in {}", config.server.data_dir.display());
            println!();
            println!("ADMIN TOKEN (shown once; it has the admin scope, keep it secret):");
            println!("  {}", issued.secret.expose());
            println!();
            println!(
                "Use it as `Authorization: Bearer <token>` on {}/admin/api/",
                config.server.public_base()
            );
        }
        None => {
            println!("chiron is already initialised; the admin token is not shown again.");
            println!("Issue another with: chiron token issue --principal admin --scope admin");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

fn slack_status(config: &Config) -> anyhow::Result<ExitCode> {
    if !config.slack.enabled {
        println!("the Slack bot is not enabled (slack.enabled = false)");
        return Ok(ExitCode::SUCCESS);
    }
    let path = chiron_server::slack::status_path(config);
    let Some(status) = chiron_slack::status::StatusFile::read(&path) else {
        anyhow::bail!("no status at {}: is the server running?", path.display());
    };
    println!("transport:  {}", status.transport);
    println!("workspaces: {}", status.workspaces.join(", "));
    println!("connection: {}", status.connection);
    println!(
        "last event: {}",
        status.last_event.as_deref().unwrap_or("none yet")
    );
    Ok(ExitCode::SUCCESS)
}

async fn migrate(config: Config) -> anyhow::Result<ExitCode> {
    let store = setup::open_store(&config)
        .await
        .context("applying migrations")?;
    println!("migrations applied ({})", store.backend().as_str());
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
