//! Throwaway databases for tests: a fresh SQLite file in a temporary directory, or a fresh
//! database on the machine's PostgreSQL (`CHIRON_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) that is dropped when the guard drops.
//!
//! PostgreSQL tests never skip silently: an unreachable server fails the test. The only way to
//! skip them is `CHIRON_TEST_SKIP_POSTGRES=1` outside CI (`CI=true` ignores it).

use std::time::Duration;

use sqlx::Row;

use crate::{ConnectOptions, Store};

/// The PostgreSQL server tests use.
pub fn postgres_admin_url() -> String {
    std::env::var("CHIRON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether PostgreSQL tests were explicitly switched off (never in CI).
pub fn postgres_skipped() -> bool {
    let in_ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    !in_ci && std::env::var("CHIRON_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1")
}

/// Keeps a test database alive; dropping it removes the database.
pub enum TestDb {
    /// A temporary directory holding the SQLite file.
    Sqlite(tempfile::TempDir),
    /// A database created on the test server.
    Postgres {
        /// URL of the maintenance database, used to drop this one.
        admin_url: String,
        /// The database name.
        name: String,
    },
}

impl TestDb {
    /// A new empty database of the given backend and its URL.
    pub async fn create(backend: crate::Backend) -> (Self, String) {
        match backend {
            crate::Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create temp dir");
                let url = format!("sqlite:{}", dir.path().join("chiron.db").display());
                (Self::Sqlite(dir), url)
            }
            crate::Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("chiron_test_{}", uuid::Uuid::new_v4().simple());
                let admin = connect_admin(&admin_url).await;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .expect("create test database");
                admin.close().await;
                let mut url = url::Url::parse(&admin_url).expect("postgres url parses");
                url.set_path(&name);
                (Self::Postgres { admin_url, name }, url.to_string())
            }
        }
    }
}

async fn connect_admin(admin_url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(admin_url)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "PostgreSQL at {admin_url} is unreachable ({err}); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 or run scripts/test"
            )
        })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Self::Postgres { admin_url, name } = self else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which must not be blocked on; a short-lived
        // thread with its own runtime removes the database.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async {
                let admin = connect_admin(&admin_url).await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
                admin.close().await;
            });
        });
        let _ = dropper.join();
    }
}

/// A migrated store on a fresh database of `backend`, with the guard that keeps it.
pub async fn store(backend: crate::Backend) -> (Store, TestDb) {
    let (db, url) = TestDb::create(backend).await;
    let store = Store::open(&ConnectOptions {
        url,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .expect("open test store");
    (store, db)
}

/// Every value of every row of every table as text, for tests that search storage for bytes
/// that must never be stored (tokens, secret values). Each column is cast to text in SQL, so
/// no type is skipped.
pub async fn dump_all_tables(store: &Store) -> String {
    let tables_sql = match store.backend() {
        crate::Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table'",
        crate::Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables
             WHERE table_schema = 'public'"
        }
    };
    let mut dump = String::new();
    for table in text_column(store, tables_sql, "name").await {
        let columns_sql = match store.backend() {
            crate::Backend::Sqlite => format!("SELECT name FROM pragma_table_info('{table}')"),
            crate::Backend::Postgres => format!(
                "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = '{table}'"
            ),
        };
        let columns = text_column(store, &columns_sql, "name").await;
        let select = columns
            .iter()
            .map(|c| match store.backend() {
                // Blobs (the migration checksums) are not UTF-8: show them as hex.
                crate::Backend::Sqlite => format!(
                    "CASE WHEN typeof({c}) = 'blob' THEN hex({c}) ELSE CAST({c} AS TEXT) END"
                ),
                crate::Backend::Postgres => format!("CAST({c} AS TEXT)"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!("SELECT {select} FROM {table}"))
            .fetch_all(store.pool())
            .await
            .expect("read table");
        for row in &rows {
            dump.push_str(&table);
            dump.push(':');
            for (idx, column) in columns.iter().enumerate() {
                let value: Option<String> = row.get(idx);
                dump.push_str(&format!(" {column}={}", value.unwrap_or_default()));
            }
            dump.push('\n');
        }
    }
    dump
}

async fn text_column(store: &Store, sql: &str, column: &str) -> Vec<String> {
    sqlx::query(sql)
        .fetch_all(store.pool())
        .await
        .expect("catalog query")
        .iter()
        .map(|row| row.get::<String, _>(column))
        .collect()
}

/// Runs one async test body against both backends: `backend_tests!(name, |store| async {..})`
/// expands to `name::sqlite` and `name::postgres`, so the backend shows in the test name.
#[macro_export]
macro_rules! backend_tests {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, _db) = $crate::testing::store($crate::Backend::Sqlite).await;
                ($body)(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::testing::postgres_skipped() {
                    eprintln!("postgres test skipped by CHIRON_TEST_SKIP_POSTGRES=1");
                    return;
                }
                let (store, _db) = $crate::testing::store($crate::Backend::Postgres).await;
                ($body)(store).await;
            }
        }
    };
}

/// A tool call row of a new principal, `age` ago, with id `call_id`.
pub fn tool_call(call_id: &str, age: time::Duration) -> crate::tool_calls::ToolCallRecord {
    crate::tool_calls::ToolCallRecord {
        call_id: call_id.into(),
        at: chiron_core::time_util::now() - age,
        principal_id: chiron_core::PrincipalId::new(),
        token_id: chiron_core::TokenId::new(),
        tool: "echo_echo".into(),
        package: "echo".into(),
        arg_keys: vec![],
        arg_bytes: 0,
        arg_values: None,
        outcome: "ok".into(),
        duration_ms: 1,
        runner_id: None,
    }
}
