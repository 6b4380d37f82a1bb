//! Socket Mode: the gateway opens a WebSocket to Slack (`apps.connections.open` with the
//! app-level token), acknowledges every envelope before working on it, and reconnects with
//! backoff when the socket drops or Slack asks it to.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::http::{command_from_slash, dispatch_event, dispatch_interaction, SlackState};
use crate::SlackApi;

/// Runs Socket Mode until `stop`.
pub async fn run(state: SlackState, api: SlackApi, app_token: String, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        state.status().connection("connecting");
        match connect_once(&state, &api, &app_token, &stop).await {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(err) => tracing::warn!(error = %err, "slack socket mode connection failed"),
        }
        state.status().connection("disconnected");
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn connect_once(
    state: &SlackState,
    api: &SlackApi,
    app_token: &str,
    stop: &CancellationToken,
) -> Result<(), String> {
    let opened = api
        .call_with("apps.connections.open", app_token, json!({}))
        .await
        .map_err(|e| e.to_string())?;
    let url = opened["url"]
        .as_str()
        .ok_or("apps.connections.open gave no url")?;
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    let (mut sink, mut stream) = socket.split();
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = stop.cancelled() => return Ok(()),
        };
        let Some(message) = message else {
            return Ok(());
        };
        let text = match message.map_err(|e| e.to_string())? {
            Message::Text(text) => text.to_string(),
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        let Ok(envelope) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match envelope["type"].as_str() {
            Some("hello") => state.status().connection("connected"),
            Some("disconnect") => return Ok(()),
            Some(kind) => {
                let id = envelope["envelope_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let payload = &envelope["payload"];
                // Interactions may answer in the ack; everything else is acknowledged first
                // and worked on afterwards.
                let mut answer = None;
                if kind == "interactive" {
                    state.status().event();
                    answer = dispatch_interaction(state, payload).await;
                }
                let mut ack = json!({ "envelope_id": id });
                if let Some(answer) = answer {
                    ack["payload"] = answer;
                }
                sink.send(Message::Text(ack.to_string().into()))
                    .await
                    .map_err(|e| e.to_string())?;
                match kind {
                    "events_api" => {
                        dispatch_event(state, payload);
                    }
                    "slash_commands" => {
                        let form: Vec<(String, String)> = payload
                            .as_object()
                            .map(|o| {
                                o.iter()
                                    .filter_map(|(k, v)| {
                                        v.as_str().map(|v| (k.clone(), v.to_owned()))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if let Some(command) = command_from_slash(&form) {
                            state.status().event();
                            state.spawn(command);
                        }
                    }
                    _ => {}
                }
            }
            None => {}
        }
    }
}
