//! Tokens never reach storage or logs. With logging at trace level, tokens are issued (CLI,
//! admin API) and used (accepted, refused, revoked); then every table and every log line is
//! searched for each token's text.

use chiron_store::testing::{dump_all_tables, postgres_skipped, TestDb};
use chiron_store::{Backend, ConnectOptions, Store};
use serde_json::json;

use crate::support::Chiron;

async fn no_token_leaks(backend: Backend) {
    let mut chiron = Chiron::new();
    chiron.set_env("RUST_LOG", "trace");
    let (_db, url) = TestDb::create(backend).await;
    if backend == Backend::Postgres {
        chiron.set_env("CHIRON_DATABASE_URL", &url);
    }
    let db_url = match backend {
        Backend::Sqlite => format!("sqlite:{}", chiron.data_dir().join("chiron.db").display()),
        Backend::Postgres => url.clone(),
    };

    let init = chiron.ok(&["init"]);
    let admin = init
        .split_whitespace()
        .find(|w| w.starts_with("chi_"))
        .unwrap()
        .to_owned();
    chiron.ok(&["principal", "add", "alice"]);
    let cli_token = chiron
        .ok(&["token", "issue", "--principal", "alice"])
        .trim()
        .to_owned();

    let server = chiron.serve(&["serve"]);
    let client = reqwest::Client::new();
    let base = chiron.base();
    let bob: serde_json::Value = client
        .post(format!("{base}/admin/api/principals"))
        .bearer_auth(&admin)
        .json(&json!({"display_name": "bob"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issued: serde_json::Value = client
        .post(format!(
            "{base}/admin/api/principals/{}/tokens",
            bob["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .json(&json!({"name": "api"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_token = issued["token"].as_str().unwrap().to_owned();
    let api_token_id = issued["metadata"]["id"].as_str().unwrap().to_owned();

    // Use each token: valid non-admin tokens are refused with 403, the admin's works.
    for token in [&cli_token, &api_token] {
        let status = client
            .get(format!("{base}/admin/api/principals"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403);
    }
    let status = client
        .get(format!("{base}/admin/api/audit"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    client
        .post(format!("{base}/admin/api/tokens/{api_token_id}/revoke"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let status = client
        .get(format!("{base}/admin/api/principals"))
        .bearer_auth(&api_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    let (code, server_logs) = server.terminate();
    assert_eq!(code, Some(0));
    chiron.ok(&["token", "revoke", "--all", "--principal", "alice"]);

    let logs = format!("{}{}", chiron.logs, server_logs);
    assert!(
        logs.contains("TRACE") || logs.contains("trace"),
        "logging was not at trace level"
    );
    let store = Store::connect(&ConnectOptions {
        url: db_url,
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(10),
    })
    .await
    .unwrap();
    let tables = dump_all_tables(&store).await;
    assert!(
        tables.contains("token.revoke"),
        "audit rows are part of the dump"
    );
    for (label, token) in [("admin", &admin), ("cli", &cli_token), ("api", &api_token)] {
        assert!(
            !tables.contains(token.as_str()),
            "{label} token found in storage"
        );
        assert!(
            !logs.contains(token.as_str()),
            "{label} token found in logs"
        );
        // Not even the secret part without its prefix.
        assert!(
            !logs.contains(&token[4..]),
            "{label} token body found in logs"
        );
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_leaks_sqlite() {
    no_token_leaks(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_leaks_postgres() {
    if postgres_skipped() {
        return;
    }
    no_token_leaks(Backend::Postgres).await;
}
