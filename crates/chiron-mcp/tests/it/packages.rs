use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chiron_auth::Authenticated;
use chiron_core::time_util::now;
use chiron_core::{Actor, CreatedVia, McpToken, Principal, Scope, Scopes, TokenId};
use chiron_mcp::{CatalogError, PackageCatalog, ToolCatalog};
use chiron_runner::{
    CommandCall, CommandOutcome, RunnerError, StdioCall, StdioOutcome, ToolRunner,
};
use chiron_store::grants::GrantSubject;
use chiron_store::testing::{store, TestDb};
use chiron_store::tool_calls::ToolCallFilter;
use chiron_store::{Backend, Store};
use chiron_tools::load_packages;
use serde_json::{json, Value};

/// Records calls and answers with the queued outcome.
#[derive(Default)]
struct FakeRunner {
    calls: Mutex<Vec<CommandCall>>,
    next: Mutex<Vec<Result<CommandOutcome, RunnerError>>>,
    stdio_calls: Mutex<Vec<String>>,
}

#[async_trait]
impl ToolRunner for FakeRunner {
    async fn run_command(&self, call: CommandCall) -> Result<CommandOutcome, RunnerError> {
        self.calls.lock().unwrap().push(call);
        self.next.lock().unwrap().pop().expect("a queued outcome")
    }

    async fn call_stdio(&self, call: StdioCall) -> Result<StdioOutcome, RunnerError> {
        let text = format!("{} {}", call.tool, Value::Object(call.arguments));
        self.stdio_calls.lock().unwrap().push(call.tool);
        Ok(StdioOutcome {
            result: Some(rmcp::model::CallToolResult::success(vec![
                rmcp::model::ContentBlock::text(text),
            ])),
            runner_id: "runner-8".into(),
        })
    }
}

fn finished(code: i32, stdout: &str, stderr: &str) -> Result<CommandOutcome, RunnerError> {
    Ok(CommandOutcome {
        exit_code: Some(code),
        stdout: stdout.as_bytes().to_vec(),
        stderr_tail: stderr.into(),
        timed_out: false,
        runner_id: "runner-7".into(),
    })
}

fn caller(principal: &Principal) -> Authenticated {
    let created_at = now();
    Authenticated {
        principal: principal.clone(),
        token: McpToken {
            id: TokenId::new(),
            principal_id: principal.id,
            name: "t".into(),
            display_prefix: "chi_x".into(),
            scopes: Scopes::new([Scope::McpTools]),
            audience: "a".into(),
            created_via: CreatedVia::Cli,
            created_at,
            expires_at: created_at + std::time::Duration::from_secs(60),
            last_used_at: None,
            revoked_at: None,
            revoke_reason: None,
        },
    }
}

const MANIFEST: &str = r#"
name = "notes"
version = "1"
kind = "command"
command = ["true"]

[[tools]]
name = "add"
description = "Add a note"
input_schema = { type = "object", properties = { text = { type = "string" }, count = { type = "integer" } }, required = ["text"] }
annotations = { readOnlyHint = false }
safe_to_log = true
timeout = "7s"

[[tools]]
name = "secret"
input_schema = { type = "object" }
"#;

struct Fixture {
    store: Store,
    catalog: PackageCatalog,
    runner: Arc<FakeRunner>,
    alice: Principal,
    bob: Principal,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (store, db) = store(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    std::fs::write(dir.path().join("notes/chiron-tool.toml"), MANIFEST).unwrap();
    let report = load_packages(&[dir.path().to_owned()]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let runner = Arc::new(FakeRunner::default());
    let catalog = PackageCatalog::new(store.clone(), runner.clone(), &report);
    let alice = store.create_principal("alice").await.unwrap();
    let bob = store.create_principal("bob").await.unwrap();
    store
        .add_grant("notes", GrantSubject::Principal(alice.id), Actor::cli())
        .await
        .unwrap();
    Fixture {
        store,
        catalog,
        runner,
        alice,
        bob,
        _db: db,
        _dir: dir,
    }
}

fn args(value: Value) -> Option<rmcp::model::JsonObject> {
    value.as_object().cloned()
}

fn text(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&result.content).unwrap().to_string()
}

#[tokio::test]
async fn tools_are_listed_only_for_granted_principals() {
    let f = fixture().await;
    let alices: Vec<String> = f
        .catalog
        .list_tools(&caller(&f.alice))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(alices, ["notes_add", "notes_secret"]);
    assert!(f
        .catalog
        .list_tools(&caller(&f.bob))
        .await
        .unwrap()
        .is_empty());
    let tool = f
        .catalog
        .list_tools(&caller(&f.alice))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(tool.input_schema.get("required"), Some(&json!(["text"])));
    assert_eq!(tool.annotations.unwrap().read_only_hint, Some(false));
}

#[tokio::test]
async fn ungranted_and_unknown_tools_look_the_same_and_are_audited() {
    let f = fixture().await;
    let hidden = f
        .catalog
        .call_tool(&caller(&f.bob), "notes_add", args(json!({"text": "x"})))
        .await;
    let missing = f
        .catalog
        .call_tool(&caller(&f.bob), "notes_nothing", None)
        .await;
    assert!(matches!(hidden, Err(CatalogError::UnknownTool)));
    assert!(matches!(missing, Err(CatalogError::UnknownTool)));
    assert!(f.runner.calls.lock().unwrap().is_empty());
    f.catalog.flush_audit().await;
    let audited = f
        .store
        .list_tool_calls(&ToolCallFilter {
            principal_id: Some(f.bob.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.len(), 2);
    assert!(audited
        .iter()
        .all(|c| c.outcome == "unknown_tool" && c.arg_values.is_none()));
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_anything_runs() {
    let f = fixture().await;
    let result = f
        .catalog
        .call_tool(&caller(&f.alice), "notes_add", args(json!({"text": 5})))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(text(&result).contains("/text"), "{}", text(&result));
    let missing = f
        .catalog
        .call_tool(&caller(&f.alice), "notes_add", args(json!({})))
        .await
        .unwrap();
    assert!(text(&missing).contains("text"), "{}", text(&missing));
    assert!(f.runner.calls.lock().unwrap().is_empty());
    f.catalog.flush_audit().await;
    let audited = f
        .store
        .list_tool_calls(&ToolCallFilter {
            principal_id: Some(f.alice.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(audited.iter().all(|c| c.outcome == "invalid_arguments"));
}

#[tokio::test]
async fn outputs_map_to_mcp_results_and_calls_are_audited() {
    let f = fixture().await;
    let alice = caller(&f.alice);
    *f.runner.next.lock().unwrap() = vec![
        Err(RunnerError::Exited("killed".into())),
        Ok(CommandOutcome {
            exit_code: None,
            stdout: vec![],
            stderr_tail: String::new(),
            timed_out: true,
            runner_id: "runner-7".into(),
        }),
        finished(3, "", "line 1\nboom: it failed\n"),
        finished(0, "plain words", ""),
        finished(
            0,
            r#"{"content": [{"type": "text", "text": "full"}], "isError": false}"#,
            "",
        ),
        finished(0, r#"{"saved": 2}"#, ""),
    ];
    let call = |n: i64| {
        f.catalog
            .call_tool(&alice, "notes_add", args(json!({"text": "hi", "count": n})))
    };

    let structured = call(1).await.unwrap();
    assert_eq!(structured.structured_content, Some(json!({"saved": 2})));
    assert_eq!(structured.is_error, Some(false));
    let full = call(2).await.unwrap();
    assert!(text(&full).contains("full") && full.structured_content.is_none());
    let plain = call(3).await.unwrap();
    assert!(text(&plain).contains("plain words"));
    let failed = call(4).await.unwrap();
    assert_eq!(failed.is_error, Some(true));
    assert!(
        text(&failed).contains("status 3") && text(&failed).contains("boom: it failed"),
        "{}",
        text(&failed)
    );
    let timed_out = call(5).await.unwrap();
    assert!(
        text(&timed_out).contains("timed out after 7s"),
        "{}",
        text(&timed_out)
    );
    let crashed = call(6).await.unwrap();
    assert!(
        text(&crashed).contains("runner exited"),
        "{}",
        text(&crashed)
    );

    let sent = f.runner.calls.lock().unwrap()[0].clone();
    assert_eq!(sent.tool, "add");
    assert_eq!(sent.principal, f.alice.id);
    assert_eq!(sent.timeout, std::time::Duration::from_secs(7));
    assert_eq!(sent.arguments, json!({"text": "hi", "count": 1}));

    f.catalog.flush_audit().await;

    let audited = f
        .store
        .list_tool_calls(&ToolCallFilter {
            principal_id: Some(f.alice.id),
            ..Default::default()
        })
        .await
        .unwrap();
    let outcomes: Vec<&str> = audited.iter().rev().map(|c| c.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["ok", "ok", "ok", "tool_error", "timeout", "runner_error"]
    );
    let first = audited.last().unwrap();
    assert_eq!(first.arg_keys, ["count", "text"]);
    assert_eq!(
        first.arg_values.as_deref(),
        Some(r#"{"count":1,"text":"hi"}"#),
        "safe_to_log keeps values"
    );
    assert_eq!(first.runner_id.as_deref(), Some("runner-7"));
    assert_eq!(first.call_id, sent.call_id);
}

#[tokio::test]
async fn values_of_tools_not_marked_safe_are_not_audited() {
    let f = fixture().await;
    *f.runner.next.lock().unwrap() = vec![finished(0, "{}", "")];
    f.catalog
        .call_tool(
            &caller(&f.alice),
            "notes_secret",
            args(json!({"password": "hunter2"})),
        )
        .await
        .unwrap();
    f.catalog.flush_audit().await;
    let audited = f
        .store
        .list_tool_calls(&ToolCallFilter {
            principal_id: Some(f.alice.id),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited[0].arg_keys, ["password"]);
    assert_eq!(audited[0].arg_values, None);
    assert!(!chiron_store::testing::dump_all_tables(&f.store)
        .await
        .contains("hunter2"));
}

#[tokio::test]
async fn reloads_are_announced() {
    let f = fixture().await;
    let mut changes = f.catalog.changes().unwrap();
    f.catalog.reload(&load_packages(&[]));
    changes.changed().await.unwrap();
    assert!(f
        .catalog
        .list_tools(&caller(&f.alice))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn discovered_stdio_tools_are_prefixed_validated_and_sent_to_the_server() {
    let (store, _db) = store(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("clock")).unwrap();
    std::fs::write(
        dir.path().join("clock/chiron-tool.toml"),
        "name = \"clock\"\nversion = \"1\"\nkind = \"mcp-stdio\"\ncommand = [\"python3\", \"-m\", \"clock\"]\n",
    )
    .unwrap();
    let mut report = load_packages(&[dir.path().to_owned()]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let server_tool: rmcp::model::Tool = serde_json::from_value(json!({
        "name": "now",
        "description": "The time",
        "inputSchema": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
        "annotations": {"readOnlyHint": true}
    }))
    .unwrap();
    let decl = chiron_mcp::decl_from_server_tool(&server_tool, std::time::Duration::from_secs(9));
    report.add_discovered("clock", vec![decl]);
    let runner = Arc::new(FakeRunner::default());
    let catalog = PackageCatalog::new(store.clone(), runner.clone(), &report);
    let alice = store.create_principal("alice").await.unwrap();
    store
        .add_grant("clock", GrantSubject::Principal(alice.id), Actor::cli())
        .await
        .unwrap();
    let who = caller(&alice);

    let tools = catalog.list_tools(&who).await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "clock_now");
    assert_eq!(
        tools[0].annotations.as_ref().and_then(|a| a.read_only_hint),
        Some(true)
    );

    let bad = catalog
        .call_tool(&who, "clock_now", args(json!({"zone": 3})))
        .await
        .unwrap();
    assert_eq!(bad.is_error, Some(true));
    assert!(runner.stdio_calls.lock().unwrap().is_empty());

    let good = catalog
        .call_tool(&who, "clock_now", args(json!({"zone": "UTC"})))
        .await
        .unwrap();
    assert_ne!(good.is_error, Some(true));
    assert!(text(&good).contains("now"), "{}", text(&good));
    assert_eq!(*runner.stdio_calls.lock().unwrap(), vec!["now".to_owned()]);
}

#[test]
fn a_discovered_tool_that_collides_rejects_its_package() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("a_b", "name = \"a_b\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n[[tools]]\nname = \"c\"\ninput_schema = { type = \"object\" }\n"),
        ("a", "name = \"a\"\nversion = \"1\"\nkind = \"mcp-stdio\"\ncommand = [\"srv\"]\n"),
    ] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("chiron-tool.toml"), body).unwrap();
    }
    let mut report = load_packages(&[dir.path().to_owned()]);
    let tool: rmcp::model::Tool =
        serde_json::from_value(json!({"name": "b_c", "inputSchema": {"type": "object"}})).unwrap();
    report.add_discovered(
        "a",
        vec![chiron_mcp::decl_from_server_tool(
            &tool,
            std::time::Duration::from_secs(1),
        )],
    );
    assert!(!report.packages.contains_key("a"));
    assert!(report.packages.contains_key("a_b"));
    let error = report.errors.last().unwrap().to_string();
    assert!(
        error.contains("a/chiron-tool.toml") && error.contains("collides"),
        "{error}"
    );
}
