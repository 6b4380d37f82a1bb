//! What the bot does with a message, mention or slash command: maps the Slack user to a
//! principal, runs the command, and replies — tokens only ever into a DM.

use std::sync::Arc;
use std::time::Duration;

use chiron_auth::{AuthService, IssueRequest};
use chiron_core::{Actor, Config, CreatedVia, Principal, Scope, Scopes};
use chiron_egress::Secrets;
use chiron_store::secrets::SecretOwner;
use chiron_store::Store;

use crate::api::{ApiError, SlackApi};

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A message in the bot's DM.
    DirectMessage,
    /// A mention in a channel.
    Mention,
    /// `/chiron …`.
    SlashCommand,
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct Command {
    /// Workspace.
    pub team: String,
    /// Who sent it.
    pub user: String,
    /// Where it was sent.
    pub channel: String,
    /// The text after the mention or command name.
    pub text: String,
    /// For opening modals (slash commands, interactions).
    pub trigger_id: Option<String>,
    /// How it arrived.
    pub source: Source,
}

/// The bot.
pub struct Bot {
    auth: AuthService,
    store: Store,
    api: SlackApi,
    config: Arc<Config>,
    secrets: Arc<Secrets>,
}

/// Why a Slack user is not served.
#[derive(Debug)]
enum Refusal {
    Workspace,
    Bot,
    Deleted,
    Guest,
    Failed(String),
}

impl Refusal {
    fn text(&self) -> String {
        match self {
            Self::Workspace => "This workspace is not served by this chiron.".into(),
            Self::Bot => "Bots cannot get chiron tokens.".into(),
            Self::Deleted => "This account is deactivated.".into(),
            Self::Guest => "Guest accounts cannot use chiron here.".into(),
            Self::Failed(reason) => format!("Something went wrong: {reason}"),
        }
    }
}

const HELP: &str = "I hand out MCP tokens for chiron and keep your tool secrets.\n\
• `token [name] [ttl]` — a new token (sent to you in a DM)\n\
• `tokens` — your active tokens\n\
• `revoke <id>` or `revoke all`\n\
• `whoami` — who chiron thinks you are\n\
• `connect` — how to connect Claude Code, Cursor or VS Code\n\
• `secret set <NAME>` — set your value for a secret (opens a form; use `/chiron secret set <NAME>`)\n\
• `secrets` — the names of your secrets\n\
• `help`";

impl Bot {
    /// A bot over the token service, storage, the Slack API and the secret store.
    pub fn new(
        auth: AuthService,
        store: Store,
        api: SlackApi,
        config: Arc<Config>,
        secrets: Arc<Secrets>,
    ) -> Self {
        Self {
            auth,
            store,
            api,
            config,
            secrets,
        }
    }

    /// The Slack client (for the transports).
    pub fn api(&self) -> &SlackApi {
        &self.api
    }

    /// The principal of a Slack user: linked on first use (display name from `users.info`),
    /// refused for other workspaces, bots, deactivated users and guests unless allowed.
    async fn principal(&self, team: &str, user: &str) -> Result<Principal, Refusal> {
        let slack = &self.config.slack;
        if !slack.workspaces.iter().any(|w| w == team) {
            return Err(Refusal::Workspace);
        }
        let info = self
            .api
            .user(user)
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?;
        if info.is_bot && !slack.allow_bots {
            return Err(Refusal::Bot);
        }
        if info.deleted {
            return Err(Refusal::Deleted);
        }
        if (info.is_restricted || info.is_ultra_restricted) && !slack.allow_guests {
            return Err(Refusal::Guest);
        }
        let failed = |e: chiron_store::StoreError| Refusal::Failed(e.to_string());
        let name = info
            .real_name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| info.name.clone());
        let name = if name.is_empty() {
            user.to_owned()
        } else {
            name
        };
        let (principal, _) = self
            .store
            .principal_for_identity("slack", team, user, &name)
            .await
            .map_err(failed)?;
        Ok(principal)
    }

    /// Sends `text` to the user's DM.
    async fn dm(&self, user: &str, text: &str) -> Result<(), ApiError> {
        let channel = self.api.open_dm(user).await?;
        self.api.post(&channel, text).await
    }

    /// Answers where the command came from (no secrets in such answers).
    async fn answer(&self, command: &Command, text: &str) {
        let sent = match command.source {
            Source::DirectMessage | Source::Mention => self.api.post(&command.channel, text).await,
            Source::SlashCommand => self.dm(&command.user, text).await,
        };
        if let Err(err) = sent {
            tracing::warn!(error = %err, "could not answer on Slack");
        }
    }

    /// Runs one command. Never fails: problems are answered to the user and logged.
    pub async fn handle(&self, command: Command) {
        let principal = match self.principal(&command.team, &command.user).await {
            Ok(principal) => principal,
            Err(refusal) => {
                tracing::info!(team = %command.team, user = %command.user, reason = ?refusal, "slack user refused");
                self.answer(&command, &refusal.text()).await;
                return;
            }
        };
        let words: Vec<&str> = command.text.split_whitespace().collect();
        let actor = Actor::principal(principal.id, "slack");
        match words.as_slice() {
            ["token", rest @ ..] => self.issue(&command, &principal, rest, actor).await,
            ["tokens"] => {
                let tokens = self
                    .store
                    .list_tokens(principal.id, false)
                    .await
                    .unwrap_or_default();
                let mut text = String::from("Your active tokens:\n");
                if tokens.is_empty() {
                    text = "You have no active tokens. Say `token` to get one.".into();
                }
                for token in tokens {
                    let date = |t: time::OffsetDateTime| t.date().to_string();
                    text.push_str(&format!(
                        "• `{}` {} ({}…) created {}, expires {}, last used {}\n",
                        token.id,
                        token.name,
                        token.display_prefix,
                        date(token.created_at),
                        date(token.expires_at),
                        token
                            .last_used_at
                            .map(date)
                            .unwrap_or_else(|| "never".into())
                    ));
                }
                self.answer(&command, &text).await;
            }
            ["revoke", "all"] => {
                let text = match self
                    .auth
                    .revoke_all(principal.id, "revoked from Slack", actor)
                    .await
                {
                    Ok(ids) => format!("Revoked {} token(s).", ids.len()),
                    Err(err) => format!("Could not revoke: {err}"),
                };
                self.answer(&command, &text).await;
            }
            ["revoke", id] => {
                let text = match id.parse() {
                    Ok(token_id) => match self
                        .auth
                        .revoke(token_id, Some(principal.id), "revoked from Slack", actor)
                        .await
                    {
                        Ok(_) => format!("Revoked `{id}`."),
                        Err(_) => format!("You have no token `{id}`."),
                    },
                    Err(_) => format!("`{id}` is not a token id (see `tokens`)."),
                };
                self.answer(&command, &text).await;
            }
            ["whoami"] => {
                let text = format!(
                    "You are *{}* (principal `{}`), Slack user `{}` in `{}`.",
                    principal.display_name, principal.id, command.user, command.team
                );
                self.answer(&command, &text).await;
            }
            ["connect"] => {
                let url = self.config.server.mcp_url();
                let text = format!(
                    "MCP URL: {url}\nGet a token with `token`, then:\n\
                     • Claude Code: `claude mcp add --transport http chiron {url} --header \"Authorization: Bearer <your token>\"`\n\
                     • Cursor (~/.cursor/mcp.json): `{{\"mcpServers\": {{\"chiron\": {{\"url\": \"{url}\", \"headers\": {{\"Authorization\": \"Bearer <your token>\"}}}}}}}}`\n\
                     • VS Code (.vscode/mcp.json): `{{\"servers\": {{\"chiron\": {{\"type\": \"http\", \"url\": \"{url}\", \"headers\": {{\"Authorization\": \"Bearer <your token>\"}}}}}}}}`"
                );
                self.answer(&command, &text).await;
            }
            ["secrets"] => {
                let text = match self.secrets.list(Some(principal.id)).await {
                    Ok(list) if list.is_empty() => "No secrets are set for you.".to_owned(),
                    Ok(list) => {
                        let mut text =
                            String::from("Secrets available to you (values are never shown):\n");
                        for info in list {
                            let owner = match info.owner {
                                SecretOwner::Team => "team",
                                SecretOwner::Principal(_) => "yours",
                            };
                            text.push_str(&format!("• `{}` ({owner})\n", info.name));
                        }
                        text
                    }
                    Err(err) => format!("Secrets are unavailable: {err}"),
                };
                self.answer(&command, &text).await;
            }
            ["secret", "set", name] => {
                let Some(trigger) = &command.trigger_id else {
                    self.answer(
                        &command,
                        &format!("Use `/chiron secret set {name}`: it opens a private form."),
                    )
                    .await;
                    return;
                };
                if !chiron_egress::secrets::valid_name(name) {
                    self.answer(
                        &command,
                        "Secret names are upper case letters, digits and _.",
                    )
                    .await;
                    return;
                }
                if let Err(err) = self.api.open_view(trigger, secret_modal(name)).await {
                    tracing::warn!(error = %err, "could not open the secret form");
                }
            }
            _ => self.answer(&command, HELP).await,
        }
    }

    async fn issue(&self, command: &Command, principal: &Principal, args: &[&str], actor: Actor) {
        let mut name = "slack".to_owned();
        let mut ttl = None;
        for arg in args {
            match humantime::parse_duration(arg) {
                Ok(duration) => ttl = Some(duration),
                Err(_) => name = (*arg).to_owned(),
            }
        }
        let issued = self
            .auth
            .issue(IssueRequest {
                principal_id: principal.id,
                name: name.clone(),
                scopes: Scopes::new([Scope::McpTools]),
                ttl: ttl.map(|t: Duration| t.min(self.config.auth.max_token_ttl)),
                created_via: CreatedVia::Slack,
                actor,
            })
            .await;
        let issued = match issued {
            Ok(issued) => issued,
            Err(err) => {
                self.answer(command, &format!("Could not issue a token: {err}"))
                    .await;
                return;
            }
        };
        let url = self.config.server.mcp_url();
        let text = format!(
            "Your chiron MCP token `{name}` (id `{}`, expires {}):\n```{}```\nMCP URL: {url}\nClaude Code: `claude mcp add --transport http chiron {url} --header \"Authorization: Bearer {}\"`\nSay `connect` for Cursor and VS Code.",
            issued.record.id,
            issued.record.expires_at.date(),
            issued.secret.expose(),
            issued.secret.expose(),
        );
        match self.dm(&command.user, &text).await {
            Ok(()) => {
                if command.source != Source::DirectMessage {
                    self.answer(command, "I've sent you a DM with your token.")
                        .await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not DM a token; revoking it");
                let _ = self
                    .auth
                    .revoke(
                        issued.record.id,
                        None,
                        "could not be delivered",
                        Actor::system("slack"),
                    )
                    .await;
            }
        }
    }

    /// A submitted secret form: stores the value for the submitting user's principal.
    pub async fn submit_secret(
        &self,
        team: &str,
        user: &str,
        name: &str,
        value: &str,
    ) -> Result<(), String> {
        let principal = self.principal(team, user).await.map_err(|r| r.text())?;
        self.secrets
            .set(
                name,
                SecretOwner::Principal(principal.id),
                value,
                Actor::principal(principal.id, "slack"),
            )
            .await
            .map_err(|e| e.to_string())?;
        let _ = self
            .dm(
                user,
                &format!(
                    "Saved your `{name}`. Tools you are granted that declare it can use it now."
                ),
            )
            .await;
        Ok(())
    }
}

/// The modal whose single input sets a secret (the value never appears in a message).
pub fn secret_modal(name: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "modal",
        "callback_id": "chiron_secret",
        "private_metadata": name,
        "title": {"type": "plain_text", "text": "Set a secret"},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [{
            "type": "input",
            "block_id": "secret",
            "label": {"type": "plain_text", "text": name},
            "element": {"type": "plain_text_input", "action_id": "value"}
        }]
    })
}
