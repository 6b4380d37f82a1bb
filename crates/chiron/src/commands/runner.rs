//! `chiron runner list|stop`: runners live in the serving process, so these commands use its
//! admin API at `server.public_url` with the admin token from `CHIRON_ADMIN_TOKEN` (an
//! environment variable, so the token never shows in the process list).

use std::process::ExitCode;

use anyhow::{bail, Context};
use chiron_core::Config;

use super::manage::{open, resolve};
use crate::cli::RunnerCommand;

fn admin_token() -> anyhow::Result<String> {
    std::env::var("CHIRON_ADMIN_TOKEN")
        .context("set CHIRON_ADMIN_TOKEN to a token with the admin scope")
}

pub async fn run(config: Config, command: RunnerCommand) -> anyhow::Result<ExitCode> {
    let base = format!("{}/admin/api", config.server.public_base());
    let token = admin_token()?;
    let client = reqwest::Client::new();
    match command {
        RunnerCommand::List => {
            let response = client
                .get(format!("{base}/runners"))
                .bearer_auth(&token)
                .send()
                .await
                .context("reaching the server")?;
            if !response.status().is_success() {
                bail!(
                    "the server answered {}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
            }
            let body: serde_json::Value = response.json().await?;
            println!(
                "{:<36}  {:<30}  {:>7}  {:>6}  {:>8}",
                "PRINCIPAL", "RUNNER", "RUNNING", "QUEUED", "IDLE (s)"
            );
            for runner in body["runners"].as_array().into_iter().flatten() {
                println!(
                    "{:<36}  {:<30}  {:>7}  {:>6}  {:>8}",
                    runner["principal_id"].as_str().unwrap_or_default(),
                    runner["runner_id"].as_str().unwrap_or_default(),
                    runner["running"],
                    runner["queued"],
                    runner["idle_secs"]
                );
            }
        }
        RunnerCommand::Stop { principal } => {
            let (store, _auth) = open(&config).await?;
            let principal = resolve(&store, &principal).await?;
            store.close().await;
            let response = client
                .post(format!("{base}/runners/{}/stop", principal.id))
                .bearer_auth(&token)
                .send()
                .await
                .context("reaching the server")?;
            match response.status().as_u16() {
                204 => println!("stopped the runner of {}", principal.display_name),
                404 => bail!("{} has no running runner", principal.display_name),
                status => bail!(
                    "the server answered {status}: {}",
                    response.text().await.unwrap_or_default()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
