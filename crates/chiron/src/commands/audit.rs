//! `chiron audit tail|search|egress|prune`: administrative events, tool calls and egress
//! requests from storage.

use std::process::ExitCode;

use chiron_core::time_util::{now, rfc3339};
use chiron_core::{AuditEvent, Config};
use chiron_store::audit::AuditFilter;
use chiron_store::tool_calls::{ToolCallFilter, ToolCallRecord};

use super::manage::{open, resolve};
use crate::cli::AuditCommand;

fn event_line(event: &AuditEvent) -> String {
    let actor = event
        .actor
        .principal_id
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "{}  event  {:<18} {} {}  by {} via {}  {}",
        rfc3339(event.at),
        event.action,
        event.target_kind,
        event.target_id,
        actor,
        event.actor.via,
        event.detail
    )
}

fn call_line(call: &ToolCallRecord) -> String {
    format!(
        "{}  call   {:<18} {:<17} {:>6}ms  principal {}  keys [{}]  call {}{}",
        rfc3339(call.at),
        call.tool,
        call.outcome,
        call.duration_ms,
        call.principal_id,
        call.arg_keys.join(","),
        call.call_id,
        call.runner_id
            .as_deref()
            .map(|r| format!("  runner {r}"))
            .unwrap_or_default()
    )
}

pub async fn run(config: Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let (store, _auth) = open(&config).await?;
    match command {
        AuditCommand::Tail { limit } => {
            let events = store
                .list_audit(&AuditFilter {
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            let calls = store
                .list_tool_calls(&ToolCallFilter {
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            let mut lines: Vec<(i128, String)> = events
                .iter()
                .map(|e| (e.at.unix_timestamp_nanos(), event_line(e)))
                .chain(
                    calls
                        .iter()
                        .map(|c| (c.at.unix_timestamp_nanos(), call_line(c))),
                )
                .collect();
            lines.sort_by_key(|(at, _)| *at);
            if lines.is_empty() {
                eprintln!("no audit events or tool calls yet");
            }
            for (_, line) in lines {
                println!("{line}");
            }
        }
        AuditCommand::Egress { call, limit, json } => {
            let rows = store.egress_requests(call.as_deref(), limit).await?;
            if rows.is_empty() && !json {
                eprintln!(
                    "no egress requests recorded{}",
                    match &call {
                        Some(call) => format!(" for call {call}"),
                        None => String::new(),
                    }
                );
            }
            for row in rows {
                if json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    let at = row
                        .at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    println!(
                        "{at} {} {} {}{} -> {} {} {}ms out={}B in={}B [{}] package={} call={} injected={}",
                        row.principal_id,
                        row.method,
                        row.host,
                        row.path,
                        row.status,
                        row.outcome,
                        row.duration_ms,
                        row.bytes_out,
                        row.bytes_in,
                        row.runner_id,
                        row.package,
                        row.call_id.as_deref().unwrap_or("-"),
                        row.injected.join(",")
                    );
                }
            }
        }
        AuditCommand::Prune { older_than } => {
            let older_than = older_than.unwrap_or(config.audit.retention);
            if older_than.is_zero() {
                anyhow::bail!(
                    "audit.retention is 0s (keep forever): give --older-than to prune anyway"
                );
            }
            let shown = chiron_server::retention::describe(older_than);
            match chiron_server::retention::prune(&store, older_than).await? {
                Some(pruned) => println!(
                    "deleted {} tool call and {} egress rows older than {shown}",
                    pruned.tool_calls, pruned.egress_requests
                ),
                None => println!("nothing can be older than {shown}"),
            }
        }
        AuditCommand::Search(args) => {
            let since = args.since.map(|d| now() - d);
            if let Some(action) = args.action {
                let filter = AuditFilter {
                    action: Some(action),
                    target_id: None,
                    since,
                    limit: Some(args.limit),
                };
                for event in store.list_audit(&filter).await? {
                    if args.json {
                        println!("{}", serde_json::to_string(&event)?);
                    } else {
                        println!("{}", event_line(&event));
                    }
                }
            } else {
                let principal_id = match &args.principal {
                    Some(text) => Some(resolve(&store, text).await?.id),
                    None => None,
                };
                let filter = ToolCallFilter {
                    principal_id,
                    tool: args.tool,
                    outcome: args.outcome,
                    since,
                    limit: Some(args.limit),
                };
                for call in store.list_tool_calls(&filter).await? {
                    if args.json {
                        println!("{}", serde_json::to_string(&call)?);
                    } else {
                        println!("{}", call_line(&call));
                    }
                }
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
