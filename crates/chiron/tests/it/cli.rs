use std::time::Duration;

use chiron_auth::{AuthService, AuthSettings, VerifyError};
use chiron_core::Scope;
use chiron_store::{ConnectOptions, Store};

use crate::support::Chiron;

async fn auth_for(chiron: &Chiron) -> AuthService {
    let store = Store::open(&ConnectOptions {
        url: format!("sqlite:{}", chiron.data_dir().join("chiron.db").display()),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let settings = AuthSettings {
        audience: format!("{}/mcp", chiron.base()),
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(3600),
        cache_ttl: Duration::ZERO,
        last_used_interval: Duration::from_secs(60),
    };
    AuthService::new(store, settings, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_prints_the_admin_token_once() {
    let mut chiron = Chiron::new();
    let first = chiron.ok(&["init"]);
    assert!(first.contains("ADMIN TOKEN"), "{first}");
    let token = first
        .split_whitespace()
        .find(|w| w.starts_with("chi_"))
        .unwrap()
        .to_owned();
    let auth = auth_for(&chiron).await;
    let admin = auth.verify(&token, Scope::Admin).await.unwrap();
    assert_eq!(admin.principal.display_name, "admin");

    let second = chiron.ok(&["init"]);
    assert!(!second.contains("chi_"), "{second}");
    assert!(second.contains("already initialised"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_groups_and_tokens_from_the_command_line() {
    let mut chiron = Chiron::new();
    chiron.ok(&["migrate"]);
    let added = chiron.ok(&["principal", "add", "alice"]);
    assert!(
        added.contains("alice") && added.contains("active"),
        "{added}"
    );
    let listed = chiron.ok(&["principal", "list"]);
    assert!(listed.contains("alice"), "{listed}");
    // Names pick principals: a second alice is refused, naming the first.
    let again = chiron.run(&["principal", "add", "alice"]);
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("already exists"), "{said}");
    assert_eq!(
        chiron.ok(&["principal", "list"]).matches("alice").count(),
        1
    );

    // `token issue` prints exactly the token on stdout; the description goes to stderr.
    let token = chiron.ok(&[
        "token",
        "issue",
        "--principal",
        "alice",
        "--ttl",
        "7d",
        "--name",
        "laptop",
    ]);
    let token = token.trim().to_owned();
    assert!(token.starts_with("chi_") && token.len() == 53, "{token}");
    let auth = auth_for(&chiron).await;
    let verified = auth.verify(&token, Scope::McpTools).await.unwrap();
    assert_eq!(verified.principal.display_name, "alice");
    assert_eq!(verified.token.name, "laptop");
    assert_eq!(
        verified.token.expires_at - verified.token.created_at,
        time::Duration::days(7)
    );
    assert!(matches!(
        auth.verify(&token, Scope::Admin).await,
        Err(VerifyError::InsufficientScope(_))
    ));

    let list = chiron.ok(&["token", "list", "--principal", "alice"]);
    assert!(
        list.contains(&token[..12]) && !list.contains(&token),
        "{list}"
    );
    let token_id = verified.token.id.to_string();
    assert!(list.contains(&token_id), "{list}");

    chiron.ok(&["token", "revoke", &token_id, "--reason", "rotated"]);
    assert!(auth.verify(&token, Scope::McpTools).await.is_err());
    let list = chiron.ok(&["token", "list", "--principal", "alice", "--all"]);
    assert!(list.contains("(revoked)"), "{list}");

    let admin_token = chiron.ok(&[
        "token",
        "issue",
        "--principal",
        "alice",
        "--scope",
        "admin",
        "--scope",
        "mcp:tools",
    ]);
    auth.verify(admin_token.trim(), Scope::Admin).await.unwrap();
    let revoked = chiron.ok(&["token", "revoke", "--all", "--principal", "alice"]);
    assert!(revoked.contains("revoked 1 token"), "{revoked}");
    assert!(auth.verify(admin_token.trim(), Scope::Admin).await.is_err());

    let bad_scope = chiron.run(&["token", "issue", "--principal", "alice", "--scope", "root"]);
    assert!(!bad_scope.status.success());
    let nobody = chiron.run(&["token", "issue", "--principal", "nobody"]);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no principal"));

    chiron.ok(&["group", "create", "eng"]);
    chiron.ok(&["group", "add", "eng", "alice"]);
    assert!(chiron.ok(&["group", "members", "eng"]).contains("alice"));
    chiron.ok(&["group", "remove", "eng", "alice"]);
    assert!(!chiron.ok(&["group", "members", "eng"]).contains("alice"));
    chiron.ok(&["group", "delete", "eng"]);
    assert!(!chiron.ok(&["group", "list"]).contains("eng"));

    let fresh = chiron.ok(&["token", "issue", "--principal", "alice"]);
    chiron.ok(&["principal", "disable", "alice"]);
    assert!(auth.verify(fresh.trim(), Scope::McpTools).await.is_err());
    chiron.ok(&["principal", "enable", "alice"]);
    auth.verify(fresh.trim(), Scope::McpTools).await.unwrap();
}

#[test]
fn tool_check_and_list_report_packages_and_errors() {
    let mut chiron = Chiron::new();
    let shipped = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools");
    let ok = chiron.ok(&["tool", "check", shipped.to_str().unwrap()]);
    assert!(ok.starts_with("ok: "), "{ok}");

    let broken = chiron.dir.path().join("pkgs/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("chiron-tool.toml"),
        "name = \"broken\"\nversion = \"1\"\nkind = \"command\"\ncommand = [\"true\"]\n\n[[tools]]\nname = \"bad name\"\ninput_schema = { type = \"object\" }\n",
    )
    .unwrap();
    let output = chiron.run(&["tool", "check", "pkgs"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pkgs/broken/chiron-tool.toml:7: tools[0].name:"),
        "{stderr}"
    );

    chiron.set_env(
        "CHIRON_TOOLS__DIRS",
        &format!("[\"{}\", \"pkgs\"]", shipped.display()),
    );
    let output = chiron.run(&["tool", "list"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("echo_echo"), "{stdout}");
    assert!(
        !output.status.success(),
        "the broken package makes list fail"
    );
}

#[test]
fn grants_from_the_command_line() {
    let mut chiron = Chiron::new();
    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["group", "create", "eng"]);
    assert!(chiron
        .ok(&["grant", "add", "echo", "--principal", "alice"])
        .contains("granted echo to principal alice"));
    assert!(chiron
        .ok(&["grant", "add", "echo", "--principal", "alice"])
        .contains("already granted"));
    chiron.ok(&["grant", "add", "slack", "--group", "eng"]);
    chiron.ok(&["grant", "add", "time", "--everyone"]);
    let listed = chiron.ok(&["grant", "list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains("everyone"));
    // Subjects by name, with the id for the ambiguous cases.
    assert!(listed.contains("principal alice ("), "{listed}");
    assert!(listed.contains("group eng ("), "{listed}");
    chiron.ok(&["grant", "remove", "echo", "--principal", "alice"]);
    assert!(!chiron
        .run(&["grant", "remove", "echo", "--principal", "alice"])
        .status
        .success());
    let neither = chiron.run(&["grant", "add", "echo"]);
    assert!(!neither.status.success(), "a subject is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_and_search() {
    let mut chiron = Chiron::new();
    chiron.ok(&["principal", "add", "alice"]);
    chiron.ok(&["token", "issue", "--principal", "alice"]);
    chiron.ok(&["grant", "add", "echo", "--principal", "alice"]);
    let auth = auth_for(&chiron).await;
    let alice = auth
        .store()
        .principals_named("alice")
        .await
        .unwrap()
        .remove(0);
    let call = chiron_store::tool_calls::ToolCallRecord {
        call_id: "call-1".into(),
        at: chiron_core::time_util::now(),
        principal_id: alice.id,
        token_id: chiron_core::TokenId::new(),
        tool: "echo_echo".into(),
        package: "echo".into(),
        arg_keys: vec!["text".into()],
        arg_bytes: 10,
        arg_values: None,
        outcome: "ok".into(),
        duration_ms: 4,
        runner_id: Some("r1".into()),
    };
    auth.store().record_tool_call(&call).await.unwrap();

    let tail = chiron.ok(&["audit", "tail"]);
    assert!(
        tail.contains("token.issue") && tail.contains("grant.add") && tail.contains("echo_echo"),
        "{tail}"
    );
    let calls = chiron.ok(&[
        "audit",
        "search",
        "--principal",
        "alice",
        "--tool",
        "echo_echo",
        "--json",
    ]);
    let parsed: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    assert_eq!(parsed["call_id"], "call-1");
    assert!(chiron
        .ok(&["audit", "search", "--outcome", "timeout"])
        .trim()
        .is_empty());
    let events = chiron.ok(&["audit", "search", "--action", "grant.add", "--since", "1h"]);
    assert_eq!(events.lines().count(), 1, "{events}");

    // Pruning by age: an old call goes, the recent one and every event stay.
    let old = chiron_store::tool_calls::ToolCallRecord {
        call_id: "call-old".into(),
        at: chiron_core::time_util::now() - time::Duration::days(120),
        ..call
    };
    auth.store().record_tool_call(&old).await.unwrap();
    let pruned = chiron.ok(&["audit", "prune"]);
    assert_eq!(
        pruned.trim(),
        "deleted 1 tool call and 0 egress rows older than 90d"
    );
    let calls = chiron.ok(&["audit", "search", "--json"]);
    assert!(
        calls.contains("call-1") && !calls.contains("call-old"),
        "{calls}"
    );
    chiron.set_env("CHIRON_AUDIT__RETENTION", "0s");
    let refused = chiron.run(&["audit", "prune"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--older-than"));
}
