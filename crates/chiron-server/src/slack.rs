//! Wiring of the Slack bot: credentials from the environment or files, the Web API client,
//! the bot, and its transport (Events API routes or a Socket Mode connection).

use std::sync::Arc;

use chiron_auth::AuthService;
use chiron_core::Config;
use chiron_egress::Secrets;
use chiron_slack::http::SlackState;
use chiron_slack::status::{SlackStatus, StatusFile};
use chiron_slack::{Bot, SlackApi, Verifier};
use chiron_store::Store;
use tokio_util::sync::CancellationToken;

/// Reads a credential from `env`, else from `file`.
fn credential(env: &str, file: Option<&std::path::Path>, what: &str) -> Result<String, String> {
    if let Some(value) = std::env::var(env).ok().filter(|v| !v.trim().is_empty()) {
        return Ok(value.trim().to_owned());
    }
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|v| v.trim().to_owned())
            .map_err(|e| format!("slack {what} file {}: {e}", path.display())),
        None => Err(format!("slack {what}: set {env} or the slack {what} file")),
    }
}

/// The status file of a data directory.
pub fn status_path(config: &Config) -> std::path::PathBuf {
    config.server.data_dir.join("slack-status.json")
}

/// What serving the bot needs.
pub enum SlackTransport {
    /// Routes to serve under `/slack`.
    Events(axum::Router),
    /// A running Socket Mode connection.
    Socket(tokio::task::JoinHandle<()>),
}

/// Builds the bot for `config.slack` and starts its transport.
pub fn start(
    config: Arc<Config>,
    auth: AuthService,
    store: Store,
    secrets: Arc<Secrets>,
    stop: CancellationToken,
) -> Result<SlackTransport, String> {
    let slack = &config.slack;
    let bot_token = credential(
        "CHIRON_SLACK_BOT_TOKEN",
        slack.bot_token_file.as_deref(),
        "bot token",
    )?;
    let api = SlackApi::new(slack.api_base.clone(), &bot_token);
    let bot = Arc::new(Bot::new(auth, store, api.clone(), config.clone(), secrets));
    let status = StatusFile::new(
        status_path(&config),
        SlackStatus {
            transport: slack.transport.clone(),
            workspaces: slack.workspaces.clone(),
            connection: "starting".into(),
            last_event: None,
        },
    );
    match slack.transport.as_str() {
        "events" => {
            let secret = credential(
                "CHIRON_SLACK_SIGNING_SECRET",
                slack.signing_secret_file.as_deref(),
                "signing secret",
            )?;
            status.connection("serving");
            let state = SlackState::new(bot, Verifier::new(&secret), status);
            Ok(SlackTransport::Events(chiron_slack::http::routes(state)))
        }
        "socket" => {
            let app_token = credential(
                "CHIRON_SLACK_APP_TOKEN",
                slack.app_token_file.as_deref(),
                "app token",
            )?;
            // Socket Mode messages are not signed; the verifier is unused but keeps one state type.
            let state = SlackState::new(bot, Verifier::new(""), status);
            Ok(SlackTransport::Socket(tokio::spawn(
                chiron_slack::socket::run(state, api, app_token, stop),
            )))
        }
        other => Err(format!(
            "slack.transport must be events or socket, not {other:?}"
        )),
    }
}
