//! The Events API transport: `/slack/events`, `/slack/commands` and `/slack/interactions`,
//! each signature-checked, acknowledged at once, and worked on afterwards. A retried event
//! (same `event_id`) is acknowledged and dropped.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::bot::{Bot, Command, Source};
use crate::signature::Verifier;
use crate::status::StatusFile;

/// Shared state of the Slack routes.
#[derive(Clone)]
pub struct SlackState {
    bot: Arc<Bot>,
    verifier: Arc<Verifier>,
    seen: Arc<Mutex<(HashSet<String>, VecDeque<String>)>>,
    status: StatusFile,
}

/// Event ids remembered for retry detection.
const REMEMBERED_EVENTS: usize = 10_000;

impl SlackState {
    /// The routes' state.
    pub fn new(bot: Arc<Bot>, verifier: Verifier, status: StatusFile) -> Self {
        Self {
            bot,
            verifier: Arc::new(verifier),
            seen: Arc::default(),
            status,
        }
    }

    /// The status file.
    pub fn status(&self) -> &StatusFile {
        &self.status
    }

    /// Runs `command` in the background.
    pub fn spawn(&self, command: Command) {
        let bot = self.bot.clone();
        tokio::spawn(async move { bot.handle(command).await });
    }

    /// Whether `event_id` is new (and remembers it).
    pub fn first_time(&self, event_id: &str) -> bool {
        let mut seen = self.seen.lock().expect("invariant: seen-events lock");
        let (index, order) = &mut *seen;
        if !index.insert(event_id.to_owned()) {
            return false;
        }
        order.push_back(event_id.to_owned());
        if order.len() > REMEMBERED_EVENTS {
            if let Some(old) = order.pop_front() {
                index.remove(&old);
            }
        }
        true
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), StatusCode> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.verifier
            .verify(
                header("x-slack-request-timestamp"),
                header("x-slack-signature"),
                body,
                now,
            )
            .map_err(|err| {
                tracing::warn!(error = %err, "slack request refused");
                StatusCode::UNAUTHORIZED
            })
    }
}

/// The routes, to be nested under `/slack`.
pub fn routes(state: SlackState) -> Router {
    Router::new()
        .route("/events", post(events))
        .route("/commands", post(commands))
        .route("/interactions", post(interactions))
        .with_state(state)
}

/// A DM, mention or other callback event turned into a command, if it is one.
pub fn command_from_event(team: &str, event: &Value) -> Option<Command> {
    // Ignore the bot's own messages and edits.
    if event.get("bot_id").is_some() || event.get("subtype").is_some() {
        return None;
    }
    let source = match (event["type"].as_str(), event["channel_type"].as_str()) {
        (Some("message"), Some("im")) => Source::DirectMessage,
        (Some("app_mention"), _) => Source::Mention,
        _ => return None,
    };
    let text = event["text"].as_str().unwrap_or_default();
    // Drop the leading mention of the bot.
    let text = match text.trim_start().strip_prefix("<@") {
        Some(rest) => rest.split_once('>').map_or("", |(_, after)| after),
        None => text,
    };
    Some(Command {
        team: event["team"].as_str().unwrap_or(team).to_owned(),
        user: event["user"].as_str()?.to_owned(),
        channel: event["channel"].as_str()?.to_owned(),
        text: text.trim().to_owned(),
        trigger_id: None,
        source,
    })
}

/// Handles one Events API payload (already verified); returns what to answer at once.
pub fn dispatch_event(state: &SlackState, payload: &Value) -> Option<Value> {
    match payload["type"].as_str() {
        Some("url_verification") => Some(json!({ "challenge": payload["challenge"] })),
        Some("event_callback") => {
            let event_id = payload["event_id"].as_str().unwrap_or_default();
            if !state.first_time(event_id) {
                tracing::debug!(event_id, "slack event already handled");
                return None;
            }
            state.status.event();
            let team = payload["team_id"].as_str().unwrap_or_default();
            if let Some(command) = command_from_event(team, &payload["event"]) {
                state.spawn(command);
            }
            None
        }
        _ => None,
    }
}

async fn events(State(state): State<SlackState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = state.verify(&headers, &body) {
        return refused.into_response();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    match dispatch_event(&state, &payload) {
        Some(answer) => Json(answer).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// A slash command's form turned into a command.
pub fn command_from_slash(form: &[(String, String)]) -> Option<Command> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Some(Command {
        team: field("team_id")?,
        user: field("user_id")?,
        channel: field("channel_id").unwrap_or_default(),
        text: field("text").unwrap_or_default().trim().to_owned(),
        trigger_id: field("trigger_id"),
        source: Source::SlashCommand,
    })
}

async fn commands(State(state): State<SlackState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = state.verify(&headers, &body) {
        return refused.into_response();
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let Some(command) = command_from_slash(&form) else {
        return (StatusCode::BAD_REQUEST, "missing fields").into_response();
    };
    state.status.event();
    state.spawn(command);
    // Acknowledged before any work; answers arrive as messages.
    StatusCode::OK.into_response()
}

/// Handles an interaction payload (a modal submission); returns the HTTP answer's body.
pub async fn dispatch_interaction(state: &SlackState, payload: &Value) -> Option<Value> {
    if payload["type"].as_str() != Some("view_submission")
        || payload["view"]["callback_id"].as_str() != Some("chiron_secret")
    {
        return None;
    }
    let name = payload["view"]["private_metadata"]
        .as_str()
        .unwrap_or_default();
    let value = payload["view"]["state"]["values"]["secret"]["value"]["value"]
        .as_str()
        .unwrap_or_default();
    let team = payload["team"]["id"]
        .as_str()
        .or_else(|| payload["user"]["team_id"].as_str())
        .unwrap_or_default();
    let user = payload["user"]["id"].as_str().unwrap_or_default();
    match state.bot.submit_secret(team, user, name, value).await {
        Ok(()) => None,
        Err(reason) => Some(json!({
            "response_action": "errors",
            "errors": { "secret": reason }
        })),
    }
}

async fn interactions(
    State(state): State<SlackState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = state.verify(&headers, &body) {
        return refused.into_response();
    }
    let payload = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "payload")
        .and_then(|(_, v)| serde_json::from_str::<Value>(&v).ok());
    let Some(payload) = payload else {
        return (StatusCode::BAD_REQUEST, "no payload").into_response();
    };
    state.status.event();
    match dispatch_interaction(&state, &payload).await {
        Some(answer) => Json(answer).into_response(),
        None => StatusCode::OK.into_response(),
    }
}
