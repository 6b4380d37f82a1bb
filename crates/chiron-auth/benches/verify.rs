//! Token verification cost on SQLite: cached (the steady state of a busy client) and
//! uncached (cache disabled, so every verification is a storage lookup). The format-only
//! rejection of a malformed token is the baseline measured in the same run.
//!
//! Run: `cargo bench -p chiron-auth --bench verify`

use std::time::Duration;

use chiron_auth::{AuthService, AuthSettings, IssueRequest};
use chiron_core::{Actor, CreatedVia, Scope, Scopes};
use chiron_store::testing::store;
use chiron_store::Backend;
use criterion::{criterion_group, criterion_main, Criterion};

fn settings(cache_ttl: Duration) -> AuthSettings {
    AuthSettings {
        audience: "http://127.0.0.1:8787/mcp".into(),
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(7200),
        cache_ttl,
        last_used_interval: Duration::from_secs(60),
    }
}

fn bench_verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (db_store, _db) = runtime.block_on(store(Backend::Sqlite));
    let principal = runtime
        .block_on(db_store.create_principal("bench"))
        .unwrap();

    let mut group = c.benchmark_group("verify_sqlite");
    for (label, ttl) in [
        ("cached", Duration::from_secs(10)),
        ("uncached", Duration::ZERO),
    ] {
        let service = AuthService::new(db_store.clone(), settings(ttl), None);
        let issued = runtime
            .block_on(service.issue(IssueRequest {
                principal_id: principal.id,
                name: label.into(),
                scopes: Scopes::new([Scope::McpTools]),
                ttl: None,
                created_via: CreatedVia::Cli,
                actor: Actor::cli(),
            }))
            .unwrap();
        let token = issued.secret.expose().to_owned();
        runtime
            .block_on(service.verify(&token, Scope::McpTools))
            .unwrap();
        group.bench_function(label, |b| {
            b.to_async(&runtime).iter(|| async {
                service.verify(&token, Scope::McpTools).await.unwrap();
            })
        });
        if label == "cached" {
            let mut bad = token.clone();
            bad.replace_range(10..11, if &token[10..11] == "a" { "b" } else { "a" });
            group.bench_function("malformed_rejected", |b| {
                b.to_async(&runtime).iter(|| async {
                    service.verify(&bad, Scope::McpTools).await.unwrap_err();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
