//! `chiron secret set|list|delete|rotate-key`. Values come from stdin only, so they never
//! appear in a process list or shell history.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use chiron_core::{Actor, Config};
use chiron_store::secrets::SecretOwner;

use crate::cli::{SecretCommand, SecretOwnerArgs};

/// The owner named by `args`, and how to show it.
async fn owner(
    store: &chiron_store::Store,
    args: &SecretOwnerArgs,
) -> anyhow::Result<(SecretOwner, String)> {
    match &args.principal {
        Some(text) => {
            let principal = super::manage::resolve(store, text).await?;
            let shown = describe(
                SecretOwner::Principal(principal.id),
                &principal.display_name,
            );
            Ok((SecretOwner::Principal(principal.id), shown))
        }
        None => Ok((SecretOwner::Team, describe(SecretOwner::Team, ""))),
    }
}

/// `principal <name> (<id>)` or `the team`.
fn describe(owner: SecretOwner, name: &str) -> String {
    match owner {
        SecretOwner::Principal(id) => format!("principal {name} ({id})"),
        SecretOwner::Team => "the team".to_owned(),
    }
}

pub async fn run(config: Config, command: SecretCommand) -> anyhow::Result<ExitCode> {
    let store = chiron_server::setup::open_store(&config)
        .await
        .context("opening storage")?;
    let secrets = chiron_server::egress::secrets(&config, store.clone());
    match command {
        SecretCommand::Set { name, owner: args } => {
            let (owner, shown) = owner(&store, &args).await?;
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the value from stdin")?;
            let value = zeroize::Zeroizing::new(value);
            secrets.set(&name, owner, &value, Actor::cli()).await?;
            println!("set {name} for {shown}");
        }
        SecretCommand::List { principal } => {
            let principal = match principal {
                Some(text) => Some(super::manage::resolve(&store, &text).await?.id),
                None => None,
            };
            let names = super::manage::principal_names(&store).await?;
            for info in secrets.list(principal).await? {
                let when = info
                    .updated_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let name = match info.owner {
                    SecretOwner::Principal(id) => names.get(&id).map_or("?", String::as_str),
                    SecretOwner::Team => "",
                };
                println!(
                    "{:<32} {:<56} updated {when}",
                    info.name,
                    describe(info.owner, name)
                );
            }
        }
        SecretCommand::Delete { name, owner: args } => {
            let (owner, shown) = owner(&store, &args).await?;
            if secrets.delete(&name, owner, Actor::cli()).await? {
                println!("deleted {name} of {shown}");
            } else {
                anyhow::bail!("{name} has no value for {shown}");
            }
        }
        SecretCommand::RotateKey => {
            let (count, id) = secrets.rotate_key().await.map_err(anyhow::Error::msg)?;
            println!("re-sealed {count} value(s) under master key {id}");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
