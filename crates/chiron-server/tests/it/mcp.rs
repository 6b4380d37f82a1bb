//! `/mcp` over raw HTTP: authentication answers, Host/Origin checks, principal-bound sessions,
//! caps and idle expiry, body and rate limits, protected-resource metadata.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chiron_auth::AuthService;
use chiron_core::{Config, Scope};
use chiron_store::testing::store;
use chiron_store::{Backend, Store};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{Reply, TestApp};

const HOST: &str = "127.0.0.1:8787";
const CHALLENGE: &str = r#"Bearer resource_metadata="http://127.0.0.1:8787/.well-known/oauth-protected-resource/mcp", scope="mcp:tools""#;

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
}

fn stateless_whoami() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
}

struct Post<'a> {
    token: Option<&'a str>,
    body: String,
    session: Option<&'a str>,
    headers: Vec<(&'a str, String)>,
}

impl<'a> Post<'a> {
    fn new(token: Option<&'a str>, body: Value) -> Self {
        Self::raw(token, &body.to_string())
    }

    /// A body sent as it is, JSON or not.
    fn raw(token: Option<&'a str>, body: &str) -> Self {
        Self {
            token,
            body: body.to_owned(),
            session: None,
            headers: vec![
                ("host", HOST.to_owned()),
                ("content-type", "application/json".to_owned()),
                ("accept", "application/json, text/event-stream".to_owned()),
            ],
        }
    }

    fn session(mut self, id: &'a str) -> Self {
        self.session = Some(id);
        self
    }

    fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_owned()));
        self
    }

    fn stateless(self) -> Self {
        self.header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "whoami")
    }

    async fn send(self, app: &TestApp) -> Reply {
        let mut builder = Request::post("/mcp");
        for (name, value) in &self.headers {
            builder = builder.header(*name, value);
        }
        if let Some(token) = self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if let Some(session) = self.session {
            builder = builder
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        app.send(builder.body(Body::from(self.body)).unwrap()).await
    }
}

async fn app_with(config: Config) -> (TestApp, String, String, chiron_store::testing::TestDb) {
    let (db_store, db) = store(Backend::Sqlite).await;
    let app = TestApp::with_config(db_store, config);
    let alice = app.state.store.create_principal("alice").await.unwrap();
    let bob = app.state.store.create_principal("bob").await.unwrap();
    let alice_token = app.token(alice.id, &[Scope::McpTools]).await;
    let bob_token = app.token(bob.id, &[Scope::McpTools]).await;
    (app, alice_token, bob_token, db)
}

fn session_id(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.headers["mcp-session-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn authentication_answers_follow_the_spec() {
    let (app, alice, _, _db) = app_with(Config::default()).await;

    let missing = Post::new(None, initialize()).send(&app).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], CHALLENGE);

    let bad = Post::new(Some("chi_bogus"), initialize()).send(&app).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.headers["www-authenticate"],
        format!(r#"{CHALLENGE}, error="invalid_token""#)
    );

    let admin = app.state.store.create_principal("root").await.unwrap();
    let admin_only = app.token(admin.id, &[Scope::Admin]).await;
    let forbidden = Post::new(Some(&admin_only), initialize()).send(&app).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(
        forbidden.headers["www-authenticate"],
        format!(r#"{CHALLENGE}, error="insufficient_scope""#)
    );

    // A token issued for another resource is refused like an invalid one.
    let mut settings = app.state.auth.settings().clone();
    settings.audience = "https://elsewhere.example/mcp".into();
    let elsewhere = AuthService::new(app.state.store.clone(), settings, None);
    let foreign = elsewhere
        .issue(chiron_auth::IssueRequest {
            principal_id: admin.id,
            name: "x".into(),
            scopes: chiron_core::Scopes::new([Scope::McpTools]),
            ttl: None,
            created_via: chiron_core::CreatedVia::Cli,
            actor: chiron_core::Actor::cli(),
        })
        .await
        .unwrap();
    let wrong_audience = Post::new(Some(foreign.secret.expose()), initialize())
        .send(&app)
        .await;
    assert_eq!(wrong_audience.status, StatusCode::UNAUTHORIZED);
    assert!(wrong_audience.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    // A token in the query string is never accepted.
    let request = Request::post(format!("/mcp?access_token={alice}"))
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Body::from(initialize().to_string()))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::UNAUTHORIZED);

    let ok = Post::new(Some(&alice), initialize()).send(&app).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert!(
        ok.text.contains(r#""serverInfo":{"name":"chiron""#),
        "{}",
        ok.text
    );
}

#[tokio::test]
async fn host_and_origin_are_validated() {
    let (app, alice, _, _db) = app_with(Config::default()).await;
    let bad_host = Post::new(Some(&alice), initialize())
        .header("host", "evil.example:8787")
        .send(&app)
        .await;
    assert_eq!(bad_host.status, StatusCode::FORBIDDEN);
    let bad_origin = Post::new(Some(&alice), initialize())
        .header("origin", "https://evil.example")
        .send(&app)
        .await;
    assert_eq!(bad_origin.status, StatusCode::FORBIDDEN);
    // Even without a token, a rebinding attempt is refused before authentication.
    let unauthenticated = Post::new(None, initialize())
        .header("host", "evil.example")
        .send(&app)
        .await;
    assert_eq!(unauthenticated.status, StatusCode::FORBIDDEN);

    let own_origin = Post::new(Some(&alice), initialize())
        .header("origin", "http://127.0.0.1:8787")
        .send(&app)
        .await;
    assert_eq!(own_origin.status, StatusCode::OK, "{}", own_origin.text);
    let alias = Post::new(Some(&alice), initialize())
        .header("host", "localhost:8787")
        .send(&app)
        .await;
    assert_eq!(alias.status, StatusCode::OK, "{}", alias.text);
}

#[tokio::test]
async fn sessions_belong_to_the_principal_that_opened_them() {
    let (app, alice, bob, _db) = app_with(Config::default()).await;
    let opened = Post::new(Some(&alice), initialize()).send(&app).await;
    let session = session_id(&opened);
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});

    let as_bob = Post::new(Some(&bob), list.clone())
        .session(&session)
        .send(&app)
        .await;
    assert_eq!(as_bob.status, StatusCode::NOT_FOUND);
    let unknown = Post::new(Some(&bob), list.clone())
        .session("no-such-session")
        .send(&app)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        as_bob.text, unknown.text,
        "a foreign session must look like a missing one"
    );
    assert_eq!(unknown.headers["content-type"], "application/json");
    assert_eq!(
        unknown.json()["error"]["message"],
        "Not Found: Session not found"
    );

    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let accepted = Post::new(Some(&alice), initialized)
        .session(&session)
        .send(&app)
        .await;
    assert!(accepted.status.is_success(), "{}", accepted.text);
    let as_alice = Post::new(Some(&alice), list)
        .session(&session)
        .send(&app)
        .await;
    assert_eq!(as_alice.status, StatusCode::OK, "{}", as_alice.text);
    assert!(as_alice.text.contains("whoami"), "{}", as_alice.text);

    // The session is not authentication: without a token it is refused.
    let anonymous = Post::new(None, json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}))
        .session(&session)
        .send(&app)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let delete = Request::delete("/mcp")
        .header("host", HOST)
        .header("authorization", format!("Bearer {alice}"))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(delete).await.status, StatusCode::OK);
    assert!(app.state.mcp.sessions().is_empty());
}

#[tokio::test]
async fn session_caps_hold_and_idle_sessions_expire() {
    let mut config = Config::default();
    config.mcp.max_sessions_per_principal = 2;
    config.mcp.max_sessions_total = 3;
    config.mcp.session_ttl = Duration::from_millis(300);
    let (app, alice, bob, _db) = app_with(config).await;

    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(session_id(
            &Post::new(Some(&alice), initialize()).send(&app).await,
        ));
    }
    let refused = Post::new(Some(&alice), initialize()).send(&app).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        refused.text.contains("too many open MCP sessions"),
        "{}",
        refused.text
    );
    sessions.push(session_id(
        &Post::new(Some(&bob), initialize()).send(&app).await,
    ));
    let total = Post::new(Some(&bob), initialize()).send(&app).await;
    assert_eq!(total.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.state.mcp.sessions().len(), 3, "never more than the cap");

    // Idle sessions are closed after the TTL by the reaper.
    let stop = CancellationToken::new();
    let reaper = app.state.mcp.spawn_reaper(stop.clone());
    // Polling must not touch the sessions (that would keep them alive): watch the registry.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.state.mcp.sessions().is_empty() {
        assert!(Instant::now() < deadline, "sessions never expired");
        tokio::task::yield_now().await;
    }
    let ping = json!({"jsonrpc": "2.0", "id": 9, "method": "ping"});
    for session in &sessions[..2] {
        let reply = Post::new(Some(&alice), ping.clone())
            .session(session)
            .send(&app)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    }
    // Room again after expiry.
    session_id(&Post::new(Some(&alice), initialize()).send(&app).await);
    stop.cancel();
    reaper.await.unwrap();
}

#[tokio::test]
async fn malformed_bodies_get_json_rpc_errors() {
    let (app, alice, _bob, _db) = app_with(Config::default()).await;
    let error = |reply: &Reply| reply.json()["error"]["code"].as_i64();

    let not_json = Post::raw(Some(&alice), "{bad").send(&app).await;
    assert_eq!(
        not_json.status,
        StatusCode::BAD_REQUEST,
        "{}",
        not_json.text
    );
    assert_eq!(error(&not_json), Some(-32700), "{}", not_json.text);
    for body in ["[]", "7", r#"{"jsonrpc":"2.0","id":1}"#] {
        let invalid = Post::raw(Some(&alice), body).send(&app).await;
        assert_eq!(
            invalid.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            invalid.text
        );
        assert_eq!(error(&invalid), Some(-32600), "{body}: {}", invalid.text);
    }
    // rmcp's plain-text refusals arrive as JSON-RPC errors with their status.
    let no_session = Post::new(
        Some(&alice),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .send(&app)
    .await;
    assert_eq!(
        no_session.status,
        StatusCode::BAD_REQUEST,
        "{}",
        no_session.text
    );
    assert_eq!(error(&no_session), Some(-32600), "{}", no_session.text);
    assert!(
        no_session.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Session ID"),
        "{}",
        no_session.text
    );
    // A body of another media type is still answered 415.
    let text = Post::new(Some(&alice), initialize())
        .header("content-type", "text/plain")
        .send(&app)
        .await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // And a good message still works.
    let ok = Post::new(Some(&alice), initialize()).send(&app).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[tokio::test]
async fn body_size_and_call_rate_are_limited() {
    let mut config = Config::default();
    config.mcp.max_body_bytes = 2048;
    config.mcp.calls_per_minute = 1;
    config.mcp.call_burst = 1;
    let (app, alice, bob, _db) = app_with(config).await;

    let mut huge = initialize();
    huge["params"]["padding"] = json!("x".repeat(4096));
    let too_big = Post::new(Some(&alice), huge).send(&app).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);

    let first = Post::new(Some(&alice), stateless_whoami())
        .stateless()
        .send(&app)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert!(first.text.contains("alice"), "{}", first.text);
    let second = Post::new(Some(&alice), stateless_whoami())
        .stateless()
        .send(&app)
        .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    // The limit is per principal.
    let other = Post::new(Some(&bob), stateless_whoami())
        .stateless()
        .send(&app)
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);
    assert!(other.text.contains("bob"));
}

#[tokio::test]
async fn unsupported_protocol_version_is_refused() {
    let (app, alice, _, _db) = app_with(Config::default()).await;
    let reply = Post::new(Some(&alice), stateless_whoami())
        .stateless()
        .header("mcp-protocol-version", "1999-01-01")
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
}

#[tokio::test]
async fn protected_resource_metadata() {
    let (db_store, _db): (Store, _) = store(Backend::Sqlite).await;
    let app = TestApp::new(db_store);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let reply = app.get(path, None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.json(),
            json!({
                "resource": "http://127.0.0.1:8787/mcp",
                "authorization_servers": ["http://127.0.0.1:8787"],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["mcp:tools"],
                "resource_name": "chiron MCP gateway",
            })
        );
    }
}

#[tokio::test]
async fn stateless_headers_must_match_the_body() {
    let (app, alice, _, _db) = app_with(Config::default()).await;
    let mismatched = Post::new(Some(&alice), stateless_whoami())
        .stateless()
        .header("mcp-name", "other_tool")
        .send(&app)
        .await;
    assert_eq!(
        mismatched.status,
        StatusCode::BAD_REQUEST,
        "{}",
        mismatched.text
    );
    let mut unknown = stateless_whoami();
    unknown["params"]["name"] = json!("no_such_tool");
    let reply = Post::new(Some(&alice), unknown)
        .stateless()
        .header("mcp-name", "no_such_tool")
        .send(&app)
        .await;
    assert!(
        reply.text.contains("-32602"),
        "unknown tool must be invalid params: {}",
        reply.text
    );
}

/// A catalog with one tool that always fails and one only `alice` may see.
struct TestCatalog;

#[async_trait::async_trait]
impl chiron_mcp::ToolCatalog for TestCatalog {
    async fn list_tools(
        &self,
        caller: &chiron_auth::Authenticated,
    ) -> Result<Vec<rmcp::model::Tool>, chiron_mcp::CatalogError> {
        let schema: rmcp::model::JsonObject =
            serde_json::from_value(json!({"type": "object"})).unwrap();
        let mut tools = vec![rmcp::model::Tool::new(
            "test_fails",
            "always fails",
            std::sync::Arc::new(schema.clone()),
        )];
        if caller.principal.display_name == "alice" {
            tools.push(rmcp::model::Tool::new(
                "test_secret",
                "alice only",
                std::sync::Arc::new(schema),
            ));
        }
        Ok(tools)
    }

    async fn call_tool(
        &self,
        caller: &chiron_auth::Authenticated,
        name: &str,
        _arguments: Option<rmcp::model::JsonObject>,
    ) -> Result<rmcp::model::CallToolResult, chiron_mcp::CatalogError> {
        match name {
            "test_fails" => Ok(rmcp::model::CallToolResult::error(vec![
                rmcp::model::ContentBlock::text("it broke"),
            ])),
            "test_secret" if caller.principal.display_name == "alice" => {
                Ok(rmcp::model::CallToolResult::success(vec![
                    rmcp::model::ContentBlock::text("ok"),
                ]))
            }
            _ => Err(chiron_mcp::CatalogError::UnknownTool),
        }
    }
}

#[tokio::test]
async fn catalog_tools_are_routed_per_principal() {
    let (db_store, _db) = store(Backend::Sqlite).await;
    let config = Config::default();
    let auth = chiron_server::setup::auth_service(&config, db_store.clone()).unwrap();
    let state = chiron_server::AppState::with_catalog(
        config,
        db_store,
        auth,
        std::sync::Arc::new(TestCatalog),
    );
    let app = TestApp { state };
    let alice = app.state.store.create_principal("alice").await.unwrap();
    let bob = app.state.store.create_principal("bob").await.unwrap();
    let alice = app.token(alice.id, &[Scope::McpTools]).await;
    let bob = app.token(bob.id, &[Scope::McpTools]).await;

    let call = |name: &str| {
        let mut body = stateless_whoami();
        body["params"]["name"] = json!(name);
        body
    };
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}});
    let listed = Post::new(Some(&bob), list.clone())
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .send(&app)
        .await;
    assert!(
        listed.text.contains("whoami") && listed.text.contains("test_fails"),
        "{}",
        listed.text
    );
    assert!(!listed.text.contains("test_secret"), "{}", listed.text);

    let failed = Post::new(Some(&bob), call("test_fails"))
        .stateless()
        .header("mcp-name", "test_fails")
        .send(&app)
        .await;
    assert!(
        failed.text.contains(r#""isError":true"#) && failed.text.contains("it broke"),
        "{}",
        failed.text
    );

    // Bob calling alice's tool gets exactly what a made-up name gets (ids aside).
    let hidden = Post::new(Some(&bob), call("test_secret"))
        .stateless()
        .header("mcp-name", "test_secret")
        .send(&app)
        .await;
    let missing = Post::new(Some(&bob), call("test_nothing"))
        .stateless()
        .header("mcp-name", "test_nothing")
        .send(&app)
        .await;
    assert_eq!(hidden.status, missing.status);
    assert_eq!(
        hidden.text.replace("test_secret", "X"),
        missing.text.replace("test_nothing", "X")
    );
    let allowed = Post::new(Some(&alice), call("test_secret"))
        .stateless()
        .header("mcp-name", "test_secret")
        .send(&app)
        .await;
    assert!(
        allowed.text.contains(r#""isError":false"#),
        "{}",
        allowed.text
    );
}

/// A runner for catalogs whose tools these tests never run.
struct NoRunner;

#[async_trait::async_trait]
impl chiron_runner::ToolRunner for NoRunner {
    async fn run_command(
        &self,
        _call: chiron_runner::CommandCall,
    ) -> Result<chiron_runner::CommandOutcome, chiron_runner::RunnerError> {
        Err(chiron_runner::RunnerError::Start("not in this test".into()))
    }

    async fn call_stdio(
        &self,
        _call: chiron_runner::StdioCall,
    ) -> Result<chiron_runner::StdioOutcome, chiron_runner::RunnerError> {
        Err(chiron_runner::RunnerError::Start("not in this test".into()))
    }
}

#[tokio::test]
async fn granting_a_package_notifies_open_sessions() {
    use http_body_util::BodyExt;

    let (db_store, _db) = store(Backend::Sqlite).await;
    let tools = tempfile::tempdir().unwrap();
    std::fs::create_dir(tools.path().join("notes")).unwrap();
    std::fs::write(
        tools.path().join("notes/chiron-tool.toml"),
        "name = \"notes\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n[[tools]]\nname = \"add\"\ninput_schema = { type = \"object\" }\n",
    )
    .unwrap();
    let report = chiron_tools::load_packages(&[tools.path().to_owned()]);
    let catalog = std::sync::Arc::new(chiron_mcp::PackageCatalog::new(
        db_store.clone(),
        std::sync::Arc::new(NoRunner),
        &report,
    ));
    let config = Config::default();
    let auth = chiron_server::setup::auth_service(&config, db_store.clone()).unwrap();
    let app = TestApp {
        state: chiron_server::AppState::with_catalog(config, db_store, auth, catalog),
    };
    let (_, admin) = app.admin().await;
    let alice = app.state.store.create_principal("alice").await.unwrap();
    let token = app.token(alice.id, &[Scope::McpTools]).await;

    let session = session_id(&Post::new(Some(&token), initialize()).send(&app).await);
    let initialized = Post::new(
        Some(&token),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .session(&session)
    .send(&app)
    .await;
    assert!(initialized.status.is_success());
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let before = Post::new(Some(&token), list.clone())
        .session(&session)
        .send(&app)
        .await;
    assert!(!before.text.contains("notes_add"), "{}", before.text);

    // The session's standalone stream, where server-initiated notifications arrive.
    let stream_request = Request::get("/mcp")
        .header("host", HOST)
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .body(Body::empty())
        .unwrap();
    let stream =
        tower::ServiceExt::oneshot(chiron_server::router(app.state.clone()), stream_request)
            .await
            .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.into_body();

    let granted = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "notes", "principal": alice.id})),
        )
        .await;
    assert_eq!(granted.status, StatusCode::CREATED);

    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
                if seen.contains("notifications/tools/list_changed") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no list_changed on the stream: {seen}");
    let after = Post::new(Some(&token), list.clone())
        .session(&session)
        .send(&app)
        .await;
    assert!(after.text.contains("notes_add"), "{}", after.text);

    // Removing the grant is announced as well, and the tool is gone from the next list.
    let mut changes = app.state.catalog.changes().unwrap();
    changes.borrow_and_update();
    let removed = app
        .call(
            "DELETE",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "notes", "principal": alice.id})),
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    assert!(
        changes.has_changed().unwrap(),
        "grant removal was not announced"
    );
    let gone = Post::new(Some(&token), list)
        .session(&session)
        .send(&app)
        .await;
    assert!(!gone.text.contains("notes_add"), "{}", gone.text);
}
