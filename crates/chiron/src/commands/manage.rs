//! `chiron principal|group|token …`: administration directly on storage. Revocations made
//! here reach running servers within `auth.cache_ttl` (their verification cache).

use std::process::ExitCode;

use anyhow::{bail, Context};
use chiron_auth::{AuthService, IssueRequest};
use chiron_core::time_util::rfc3339;
use chiron_core::{
    Actor, Config, CreatedVia, Principal, PrincipalId, PrincipalStatus, Scope, Scopes, TokenId,
};
use chiron_server::setup;
use chiron_store::Store;

use crate::cli::{GrantArgs, GrantCommand, GroupCommand, PrincipalCommand, TokenCommand};
use chiron_store::grants::GrantSubject;

pub(crate) async fn open(config: &Config) -> anyhow::Result<(Store, AuthService)> {
    let store = setup::open_store(config).await.context("opening storage")?;
    let auth = setup::auth_service(config, store.clone())?;
    Ok((store, auth))
}

/// Resolves a principal by id, or by display name when exactly one principal has it.
pub(crate) async fn resolve(store: &Store, text: &str) -> anyhow::Result<Principal> {
    if let Ok(id) = text.parse::<PrincipalId>() {
        if let Some(principal) = store.get_principal(id).await? {
            return Ok(principal);
        }
    }
    let mut named = store.principals_named(text).await?;
    match named.len() {
        0 => bail!("no principal with id or name {text:?}"),
        1 => Ok(named.remove(0)),
        n => bail!("{n} principals are named {text:?}; use the id (chiron principal list)"),
    }
}

fn print_principal(p: &Principal) {
    println!(
        "{}  {:<8}  {}  {}",
        p.id,
        p.status.as_str(),
        rfc3339(p.created_at),
        p.display_name
    );
}

pub async fn principal(config: Config, command: PrincipalCommand) -> anyhow::Result<ExitCode> {
    let (store, auth) = open(&config).await?;
    match command {
        PrincipalCommand::Add { name } => {
            let name = name.trim();
            if name.is_empty() {
                bail!("the name must not be empty");
            }
            // Names pick principals in every other command: a second one would make them
            // ambiguous. (Slack users may share display names; they are told apart by id.)
            if let Some(existing) = store.principals_named(name).await?.first() {
                bail!(
                    "a principal named {name:?} already exists ({})",
                    existing.id
                );
            }
            let principal = store.create_principal(name).await?;
            print_principal(&principal);
        }
        PrincipalCommand::List => {
            println!("{:<36}  {:<8}  {:<20}  NAME", "ID", "STATUS", "CREATED");
            for principal in store.list_principals().await? {
                print_principal(&principal);
            }
        }
        PrincipalCommand::Disable { principal } => {
            set_status(&store, &auth, &principal, PrincipalStatus::Disabled).await?;
        }
        PrincipalCommand::Enable { principal } => {
            set_status(&store, &auth, &principal, PrincipalStatus::Active).await?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn set_status(
    store: &Store,
    auth: &AuthService,
    principal: &str,
    status: PrincipalStatus,
) -> anyhow::Result<()> {
    let target = resolve(store, principal).await?;
    let updated = auth
        .set_principal_status(target.id, status, Actor::cli())
        .await?;
    print_principal(&updated);
    Ok(())
}

pub async fn group(config: Config, command: GroupCommand) -> anyhow::Result<ExitCode> {
    let (store, _auth) = open(&config).await?;
    let find = |name: String| {
        let store = store.clone();
        async move {
            store
                .group_by_name(&name)
                .await?
                .with_context(|| format!("no group named {name:?}"))
        }
    };
    match command {
        GroupCommand::Create { name } => {
            let group = store.create_group(name.trim()).await?;
            println!("{}  {}", group.id, group.name);
        }
        GroupCommand::List => {
            for group in store.list_groups().await? {
                println!("{}  {}", group.id, group.name);
            }
        }
        GroupCommand::Delete { name } => {
            let group = find(name).await?;
            store.delete_group(group.id).await?;
            println!("deleted group {}", group.name);
        }
        GroupCommand::Add { group, principal } => {
            let group = find(group).await?;
            let principal = resolve(&store, &principal).await?;
            store.add_group_member(group.id, principal.id).await?;
            println!("{} is a member of {}", principal.display_name, group.name);
        }
        GroupCommand::Remove { group, principal } => {
            let group = find(group).await?;
            let principal = resolve(&store, &principal).await?;
            if !store.remove_group_member(group.id, principal.id).await? {
                bail!(
                    "{} is not a member of {}",
                    principal.display_name,
                    group.name
                );
            }
            println!("{} removed from {}", principal.display_name, group.name);
        }
        GroupCommand::Members { group } => {
            let group = find(group).await?;
            for principal in store.group_members(group.id).await? {
                print_principal(&principal);
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn token(config: Config, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let (store, auth) = open(&config).await?;
    match command {
        TokenCommand::Issue(args) => {
            let principal = resolve(&store, &args.principal).await?;
            let scopes = if args.scopes.is_empty() {
                Scopes::new([Scope::McpTools])
            } else {
                args.scopes
                    .iter()
                    .map(|s| s.parse::<Scope>())
                    .collect::<Result<Vec<_>, _>>()
                    .map(Scopes::new)
                    .context("--scope must be mcp:tools or admin")?
            };
            let issued = auth
                .issue(IssueRequest {
                    principal_id: principal.id,
                    name: args.name,
                    scopes,
                    ttl: args.ttl,
                    created_via: CreatedVia::Cli,
                    actor: Actor::cli(),
                })
                .await?;
            eprintln!(
                "token {} for {} ({}), expires {} — shown once:",
                issued.record.id,
                principal.display_name,
                issued.record.scopes,
                rfc3339(issued.record.expires_at)
            );
            println!("{}", issued.secret.expose());
        }
        TokenCommand::List { principal, all } => {
            let principal = resolve(&store, &principal).await?;
            println!(
                "{:<36}  {:<12}  {:<16}  {:<20}  {:<20}  {:<20}  NAME",
                "ID", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST USED"
            );
            for token in store.list_tokens(principal.id, all).await? {
                let state = if token.revoked_at.is_some() {
                    " (revoked)"
                } else {
                    ""
                };
                println!(
                    "{}  {:<12}  {:<16}  {:<20}  {:<20}  {:<20}  {}{state}",
                    token.id,
                    token.display_prefix,
                    token.scopes.to_string(),
                    rfc3339(token.created_at),
                    rfc3339(token.expires_at),
                    token
                        .last_used_at
                        .map(rfc3339)
                        .unwrap_or_else(|| "never".into()),
                    token.name,
                );
            }
        }
        TokenCommand::Revoke(args) => {
            if args.all {
                let principal_text = args.principal.context("--all needs --principal")?;
                let principal = resolve(&store, &principal_text).await?;
                let revoked = auth
                    .revoke_all(principal.id, &args.reason, Actor::cli())
                    .await?;
                println!(
                    "revoked {} token(s) of {}",
                    revoked.len(),
                    principal.display_name
                );
            } else {
                let text = args.token_id.context("give a token id or --all")?;
                let id: TokenId = text
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{text:?} is not a token id"))?;
                let token = auth.revoke(id, None, &args.reason, Actor::cli()).await?;
                println!("revoked token {} ({})", token.id, token.name);
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn grant_subject(store: &Store, args: &GrantArgs) -> anyhow::Result<(GrantSubject, String)> {
    if let Some(principal) = &args.principal {
        let principal = resolve(store, principal).await?;
        return Ok((
            GrantSubject::Principal(principal.id),
            format!("principal {}", principal.display_name),
        ));
    }
    if let Some(group) = &args.group {
        let found = store
            .group_by_name(group)
            .await?
            .with_context(|| format!("no group named {group:?}"))?;
        return Ok((
            GrantSubject::Group(found.id),
            format!("group {}", found.name),
        ));
    }
    Ok((GrantSubject::Everyone, "everyone".to_owned()))
}

/// Every principal's display name by id, for listings that show owners.
pub async fn principal_names(
    store: &Store,
) -> anyhow::Result<std::collections::HashMap<chiron_core::PrincipalId, String>> {
    Ok(store
        .list_principals()
        .await?
        .into_iter()
        .map(|p| (p.id, p.display_name))
        .collect())
}

pub async fn grant(config: Config, command: GrantCommand) -> anyhow::Result<ExitCode> {
    let (store, _auth) = open(&config).await?;
    match command {
        GrantCommand::Add(args) => {
            let (subject, label) = grant_subject(&store, &args).await?;
            let known = chiron_tools::load_packages(&chiron_server::tools::tool_dirs(&config));
            if !known.packages.contains_key(&args.package) {
                eprintln!(
                    "note: no package {:?} in tools.dirs yet; the grant applies once it loads",
                    args.package
                );
            }
            let added = store
                .add_grant(&args.package, subject, Actor::cli())
                .await?;
            println!(
                "{} {} to {label}",
                if added { "granted" } else { "already granted" },
                args.package
            );
        }
        GrantCommand::Remove(args) => {
            let (subject, label) = grant_subject(&store, &args).await?;
            if !store
                .remove_grant(&args.package, subject, Actor::cli())
                .await?
            {
                bail!("{} is not granted to {label}", args.package);
            }
            println!("removed grant of {} to {label}", args.package);
        }
        GrantCommand::List { package } => {
            let grants = store.list_grants(package.as_deref()).await?;
            if grants.is_empty() {
                eprintln!("no grants");
            }
            let principals = principal_names(&store).await?;
            let groups: std::collections::HashMap<_, _> = store
                .list_groups()
                .await?
                .into_iter()
                .map(|g| (g.id, g.name))
                .collect();
            for grant in grants {
                // Names first (what people type), ids for the ambiguous cases.
                let subject = match grant.subject {
                    GrantSubject::Principal(id) => format!(
                        "principal {} ({id})",
                        principals.get(&id).map_or("?", String::as_str)
                    ),
                    GrantSubject::Group(id) => format!(
                        "group {} ({id})",
                        groups.get(&id).map_or("?", String::as_str)
                    ),
                    GrantSubject::Everyone => "everyone".to_owned(),
                };
                println!(
                    "{:<24} {:<64} {}",
                    grant.package,
                    subject,
                    rfc3339(grant.created_at)
                );
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
