//! The Slack bot against a local fake of Slack's Web API (and of Socket Mode), with requests
//! signed as Slack signs them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::mcp_sdk::{bearer, probe};
use crate::support::Chiron;

const SIGNING_SECRET: &str = "test-signing-secret-4f9a";
const TEAM: &str = "T0TEAM";

#[derive(Default)]
struct FakeState {
    /// (method, request body) in arrival order.
    calls: Mutex<Vec<(String, Value)>>,
    /// While set, chat.postMessage waits (to prove events are acknowledged first).
    hold_posts: tokio::sync::watch::Sender<bool>,
    ws_port: Mutex<u16>,
    /// Envelope acks received over Socket Mode.
    acks: Mutex<Vec<Value>>,
}

struct FakeSlack {
    base: String,
    state: Arc<FakeState>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeSlack {
    fn posts(&self) -> Vec<(String, String)> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == "chat.postMessage")
            .map(|(_, b)| {
                (
                    b["channel"].as_str().unwrap_or_default().to_owned(),
                    b["text"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn calls_of(&self, method: &str) -> Vec<Value> {
        self.state
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits until `count` messages have been posted (polling against a deadline).
    fn wait_posts(&self, count: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let posts = self.posts();
            if posts.len() >= count {
                return posts;
            }
            assert!(
                Instant::now() < deadline,
                "only {} posts: {posts:?}",
                posts.len()
            );
            std::thread::yield_now();
        }
    }
}

fn user(id: &str) -> Value {
    match id {
        "U_GUEST" => json!({"id": id, "team_id": TEAM, "name": "guest", "is_restricted": true}),
        "U_BOT" => json!({"id": id, "team_id": TEAM, "name": "somebot", "is_bot": true}),
        "U_GONE" => json!({"id": id, "team_id": TEAM, "name": "gone", "deleted": true}),
        _ => json!({"id": id, "team_id": TEAM, "name": "alice", "real_name": "Alice Slack"}),
    }
}

async fn api(
    State(state): State<Arc<FakeState>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    body: Json<Value>,
) -> Json<Value> {
    let body = body.0;
    if method == "chat.postMessage" {
        let mut hold = state.hold_posts.subscribe();
        let _ = hold.wait_for(|held| !*held).await;
    }
    state
        .calls
        .lock()
        .unwrap()
        .push((method.clone(), body.clone()));
    Json(match method.as_str() {
        "users.info" => {
            json!({"ok": true, "user": user(body["user"].as_str().unwrap_or_default())})
        }
        "conversations.open" => {
            json!({"ok": true, "channel": {"id": format!("D_{}", body["users"].as_str().unwrap_or_default())}})
        }
        "conversations.info" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            json!({"ok": true, "channel": {"id": channel, "is_im": channel.starts_with('D')}})
        }
        "apps.connections.open" => {
            json!({"ok": true, "url": format!("ws://127.0.0.1:{}/", state.ws_port.lock().unwrap())})
        }
        _ => json!({"ok": true}),
    })
}

/// The fake, plus (for Socket Mode) a WebSocket endpoint that says hello, sends `envelopes`
/// one by one — each only after the previous one was acknowledged — and records the acks.
fn fake_slack(envelopes: Vec<Value>) -> FakeSlack {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let state = Arc::new(FakeState::default());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/api/{method}", post(api))
        .with_state(state.clone());
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let ws = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    *state.ws_port.lock().unwrap() = ws.local_addr().unwrap().port();
    let ws_state = state.clone();
    runtime.spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok((stream, _)) = ws.accept().await else {
            return;
        };
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        socket
            .send(Message::Text(json!({"type": "hello"}).to_string().into()))
            .await
            .unwrap();
        for envelope in envelopes {
            socket
                .send(Message::Text(envelope.to_string().into()))
                .await
                .unwrap();
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let ack: Value = serde_json::from_str(&text).unwrap();
                    ws_state.acks.lock().unwrap().push(ack.clone());
                    if ack["envelope_id"] == envelope["envelope_id"] {
                        break;
                    }
                }
            }
        }
        // Keep the connection open until the test ends.
        while socket.next().await.is_some() {}
    });
    FakeSlack {
        base: format!("http://127.0.0.1:{port}/api/"),
        state,
        _runtime: runtime,
    }
}

fn configure(chiron: &mut Chiron, fake: &FakeSlack, transport: &str) {
    chiron.set_env("CHIRON_SLACK__ENABLED", "true");
    chiron.set_env("CHIRON_SLACK__TRANSPORT", transport);
    chiron.set_env("CHIRON_SLACK__API_BASE", &fake.base);
    chiron.set_env("CHIRON_SLACK__WORKSPACES", &format!("[\"{TEAM}\"]"));
    chiron.set_env("CHIRON_SLACK_SIGNING_SECRET", SIGNING_SECRET);
    chiron.set_env("CHIRON_SLACK_BOT_TOKEN", "xoxb-fake-bot-token");
    chiron.set_env("CHIRON_SLACK_APP_TOKEN", "xapp-fake-app-token");
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// POSTs a body to a Slack route, signed at `timestamp` (optionally with a forged secret).
fn send(
    chiron: &Chiron,
    path: &str,
    body: &str,
    content_type: &str,
    timestamp: i64,
    secret: &str,
    retry: Option<u32>,
) -> (u16, String) {
    let signature = chiron_slack::Verifier::new(secret).sign(timestamp, body.as_bytes());
    send_signed(
        chiron,
        path,
        body,
        content_type,
        timestamp,
        &signature,
        retry,
    )
}

fn send_signed(
    chiron: &Chiron,
    path: &str,
    body: &str,
    content_type: &str,
    timestamp: i64,
    signature: &str,
    retry: Option<u32>,
) -> (u16, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", chiron.base()))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", timestamp.to_string())
            .header("x-slack-signature", signature)
            .timeout(Duration::from_secs(10))
            .body(body.to_owned());
        if let Some(n) = retry {
            request = request.header("x-slack-retry-num", n.to_string());
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

fn event(event_id: &str, event: Value) -> String {
    json!({"type": "event_callback", "team_id": TEAM, "event_id": event_id, "event": event})
        .to_string()
}

fn dm(user: &str, text: &str) -> Value {
    json!({"type": "message", "channel_type": "im", "channel": format!("D_{user}"), "user": user, "text": text, "team": TEAM})
}

fn token_in(text: &str) -> Option<String> {
    let at = text.find("chi_")?;
    Some(text[at..].chars().take(53).collect())
}

#[test]
fn slack_issues_tokens_only_in_dms_and_refuses_what_it_must() {
    let fake = fake_slack(Vec::new());
    let mut chiron = Chiron::new();
    chiron.set_env("RUST_LOG", "trace");
    configure(&mut chiron, &fake, "events");
    chiron.ok(&["init"]);
    let server = chiron.serve(&["serve"]);
    let json_type = "application/json";

    // url_verification.
    let (status, body) = send(
        &chiron,
        "/slack/events",
        &json!({"type": "url_verification", "challenge": "abc"}).to_string(),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    assert_eq!((status, body.contains("abc")), (200, true));

    // A DM "token": acknowledged before the bot posts (posts are held until the ack arrives).
    fake.state.hold_posts.send_replace(true);
    let (status, _) = send(
        &chiron,
        "/slack/events",
        &event("Ev1", dm("U_ALICE", "token laptop 7d")),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    assert_eq!(
        status, 200,
        "the event was not acknowledged while the post was pending"
    );
    assert!(fake.posts().is_empty());
    fake.state.hold_posts.send_replace(false);
    let posts = fake.wait_posts(1);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].0, "D_U_ALICE");
    let token = token_in(&posts[0].1).expect("a token in the DM");

    // The token works against /mcp and names the Slack principal.
    let url = format!("{}/mcp", chiron.base());
    let who = probe(
        &url,
        bearer(&token),
        "legacy",
        json!([{"op": "call", "name": "whoami"}]),
    );
    assert_eq!(
        who[0]["structuredContent"]["principal_name"], "Alice Slack",
        "{who:?}"
    );
    let listed = chiron.ok(&["token", "list", "--principal", "Alice Slack"]);
    assert!(listed.contains("laptop"), "{listed}");

    // A mention in a shared channel: a reply there without the token, the token in the DM.
    let mention = json!({"type": "app_mention", "channel": "C_SHARED", "user": "U_ALICE", "text": "<@U_CHIRON> token", "team": TEAM});
    send(
        &chiron,
        "/slack/events",
        &event("Ev2", mention),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    let posts = fake.wait_posts(3);
    let shared: Vec<&(String, String)> = posts.iter().filter(|(c, _)| c == "C_SHARED").collect();
    assert_eq!(shared.len(), 1);
    assert!(
        token_in(&shared[0].1).is_none() && shared[0].1.contains("DM"),
        "{shared:?}"
    );
    assert_eq!(
        posts
            .iter()
            .filter(|(c, t)| c == "D_U_ALICE" && token_in(t).is_some())
            .count(),
        2
    );

    // Forged, stale and replayed requests: 401, nothing issued.
    let body = event("Ev3", dm("U_ALICE", "token"));
    assert_eq!(
        send(
            &chiron,
            "/slack/events",
            &body,
            json_type,
            now(),
            "forged-secret",
            None
        )
        .0,
        401
    );
    assert_eq!(
        send(
            &chiron,
            "/slack/events",
            &body,
            json_type,
            now() - 600,
            SIGNING_SECRET,
            None
        )
        .0,
        401
    );
    let ts = now();
    let signature = chiron_slack::Verifier::new(SIGNING_SECRET).sign(ts, body.as_bytes());
    let first = send_signed(
        &chiron,
        "/slack/events",
        &body,
        json_type,
        ts,
        &signature,
        None,
    );
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(
        send_signed(
            &chiron,
            "/slack/events",
            &body,
            json_type,
            ts,
            &signature,
            None
        )
        .0,
        401
    );
    // Slack retrying the same event: acknowledged, no second token.
    // (A retry is signed anew, at a later timestamp.)
    assert_eq!(
        send(
            &chiron,
            "/slack/events",
            &body,
            json_type,
            ts + 1,
            SIGNING_SECRET,
            Some(1)
        )
        .0,
        200
    );
    let posts = fake.wait_posts(4);
    let tokens_after =
        |posts: &[(String, String)]| posts.iter().filter(|(_, t)| token_in(t).is_some()).count();
    assert_eq!(
        tokens_after(&posts),
        3,
        "one token for Ev3 despite the retry: {posts:?}"
    );

    // Guests and bots are refused, without a token.
    send(
        &chiron,
        "/slack/events",
        &event("Ev4", dm("U_GUEST", "token")),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    send(
        &chiron,
        "/slack/events",
        &event("Ev5", dm("U_BOT", "token")),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    // So are deactivated users and other workspaces.
    send(
        &chiron,
        "/slack/events",
        &event("Ev4b", dm("U_GONE", "token")),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    let mut foreign = dm("U_ALICE", "token");
    foreign["team"] = json!("T_OTHER");
    send(
        &chiron,
        "/slack/events",
        &event("Ev4c", foreign),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    let posts = fake.wait_posts(8);
    assert!(
        posts
            .iter()
            .any(|(c, t)| c == "D_U_GONE" && t.contains("deactivated")),
        "{posts:?}"
    );
    assert!(
        posts
            .iter()
            .any(|(_, t)| t.contains("workspace is not served")),
        "{posts:?}"
    );
    assert!(
        posts
            .iter()
            .any(|(c, t)| c == "D_U_GUEST" && t.contains("Guest")),
        "{posts:?}"
    );
    assert!(
        posts
            .iter()
            .any(|(c, t)| c == "D_U_BOT" && t.contains("Bots")),
        "{posts:?}"
    );
    assert_eq!(tokens_after(&posts), 3);

    // A secret set through the modal: stored sealed for alice, never in a message or log.
    const VALUE: &str = "ghp_SetThroughSlackModal_987654";
    let slash = "token=x&team_id=T0TEAM&user_id=U_ALICE&channel_id=C_SHARED&command=%2Fchiron&text=secret+set+GITHUB_TOKEN&trigger_id=trig1";
    assert_eq!(
        send(
            &chiron,
            "/slack/commands",
            slash,
            "application/x-www-form-urlencoded",
            now(),
            SIGNING_SECRET,
            None
        )
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.calls_of("views.open").is_empty() {
        assert!(Instant::now() < deadline, "no modal opened");
        std::thread::yield_now();
    }
    assert_eq!(
        fake.calls_of("views.open")[0]["view"]["private_metadata"],
        "GITHUB_TOKEN"
    );
    let submission = json!({
        "type": "view_submission",
        "team": {"id": TEAM},
        "user": {"id": "U_ALICE", "team_id": TEAM},
        "view": {"callback_id": "chiron_secret", "private_metadata": "GITHUB_TOKEN",
                 "state": {"values": {"secret": {"value": {"type": "plain_text_input", "value": VALUE}}}}}
    });
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &submission.to_string())
        .finish();
    let (status, body) = send(
        &chiron,
        "/slack/interactions",
        &form,
        "application/x-www-form-urlencoded",
        now(),
        SIGNING_SECRET,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let secrets = chiron.ok(&["secret", "list", "--principal", "Alice Slack"]);
    assert!(secrets.contains("GITHUB_TOKEN"), "{secrets}");
    assert!(secrets.contains("principal Alice Slack ("), "{secrets}");

    // `revoke all` ends every token at once.
    send(
        &chiron,
        "/slack/events",
        &event("Ev6", dm("U_ALICE", "revoke all")),
        json_type,
        now(),
        SIGNING_SECRET,
        None,
    );
    let posts = fake.wait_posts(10);
    assert!(
        posts.iter().any(|(_, t)| t.starts_with("Revoked")),
        "{posts:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(async {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(refused, 401, "a revoked token still works");

    let status = chiron.ok(&["slack", "status"]);
    assert!(
        status.contains("transport:  events") && status.contains("last event: 20"),
        "{status}"
    );

    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0));
    let messages = format!("{:?}", fake.state.calls.lock().unwrap());
    assert!(!messages.contains(VALUE) && !logs.contains(VALUE) && !chiron.logs.contains(VALUE));
    // The issued token went to the DM only: never into a log line, even at trace level.
    assert!(!logs.contains(&token) && !chiron.logs.contains(&token));
    let (tables, vias) = runtime.block_on(async {
        let store = chiron_store::Store::connect(&chiron_store::ConnectOptions {
            url: format!("sqlite:{}", chiron.data_dir().join("chiron.db").display()),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
        let identity = store
            .find_identity("slack", TEAM, "U_ALICE")
            .await
            .unwrap()
            .unwrap();
        let tokens = store
            .list_tokens(identity.principal_id, true)
            .await
            .unwrap();
        let vias: Vec<chiron_core::CreatedVia> = tokens.iter().map(|t| t.created_via).collect();
        (chiron_store::testing::dump_all_tables(&store).await, vias)
    });
    assert!(!tables.contains(VALUE));
    assert_eq!(vias.len(), 3);
    assert!(
        vias.iter().all(|v| *v == chiron_core::CreatedVia::Slack),
        "{vias:?}"
    );
}

#[test]
fn the_outbound_guard_refuses_tokens_outside_dms_whatever_asks() {
    let fake = fake_slack(Vec::new());
    let api = chiron_slack::SlackApi::new(fake.base.parse().unwrap(), "xoxb-fake");
    let token = format!("chi_{}", "Ab3".repeat(17)[..49].to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let refused = api.post("C_SHARED", &format!("here you go: {token}")).await;
        assert!(
            matches!(refused, Err(chiron_slack::api::ApiError::Guard(_))),
            "{refused:?}"
        );
        api.post("D_U_ALICE", &format!("your token: {token}"))
            .await
            .unwrap();
        api.post("C_SHARED", "no secrets here").await.unwrap();
    });
    let posts = fake.posts();
    assert_eq!(posts.len(), 2);
    assert!(
        posts
            .iter()
            .all(|(c, t)| c.starts_with('D') || !t.contains("chi_")),
        "{posts:?}"
    );
}

#[test]
fn socket_mode_acknowledges_envelopes_and_issues_tokens() {
    let envelope = json!({
        "type": "events_api",
        "envelope_id": "env-1",
        "payload": {"type": "event_callback", "team_id": TEAM, "event_id": "EvS1", "event": dm("U_ALICE", "token")}
    });
    let fake = fake_slack(vec![envelope]);
    let mut chiron = Chiron::new();
    configure(&mut chiron, &fake, "socket");
    chiron.ok(&["init"]);
    let server = chiron.serve(&["serve"]);
    let posts = fake.wait_posts(1);
    assert_eq!(posts[0].0, "D_U_ALICE");
    let token = token_in(&posts[0].1).expect("a token in the DM");
    assert_eq!(fake.state.acks.lock().unwrap()[0]["envelope_id"], "env-1");
    assert!(!fake.calls_of("apps.connections.open").is_empty());
    let who = probe(
        &format!("{}/mcp", chiron.base()),
        bearer(&token),
        "2026-07-28",
        json!([{"op": "call", "name": "whoami"}]),
    );
    assert_eq!(
        who[0]["structuredContent"]["principal_name"], "Alice Slack",
        "{who:?}"
    );
    let status = chiron.ok(&["slack", "status"]);
    assert!(
        status.contains("transport:  socket") && status.contains("connection: connected"),
        "{status}"
    );
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}
