use chiron_core::time_util::now;
use chiron_core::{Actor, NewAuditEvent, PrincipalId};
use chiron_store::audit::AuditFilter;
use chiron_store::{backend_tests, Store};

use crate::support::audit;

backend_tests!(record_and_filter_audit, |store: Store| async move {
    let start = now();
    let actor = PrincipalId::new();
    let first = store
        .record_audit(NewAuditEvent {
            actor: Actor::principal(actor, "admin-api"),
            action: "token.issue".into(),
            target_kind: "token".into(),
            target_id: "t1".into(),
            detail: serde_json::json!({ "name": "laptop", "scopes": ["mcp:tools"] }),
        })
        .await
        .unwrap();
    store
        .record_audit(audit("token.revoke", "t1"))
        .await
        .unwrap();
    store
        .record_audit(audit("token.revoke", "t2"))
        .await
        .unwrap();

    let all = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all.last().unwrap(),
        &first,
        "newest first, round trip intact"
    );
    assert_eq!(first.actor.principal_id, Some(actor));

    let revokes = AuditFilter {
        action: Some("token.revoke".into()),
        ..Default::default()
    };
    assert_eq!(store.list_audit(&revokes).await.unwrap().len(), 2);
    let on_t1 = AuditFilter {
        target_id: Some("t1".into()),
        ..Default::default()
    };
    assert_eq!(store.list_audit(&on_t1).await.unwrap().len(), 2);
    let limited = AuditFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(store.list_audit(&limited).await.unwrap().len(), 1);
    let future = AuditFilter {
        since: Some(start + std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    assert!(store.list_audit(&future).await.unwrap().is_empty());
});

backend_tests!(ping_and_migrate_twice, |store: Store| async move {
    store.ping().await.unwrap();
    // Migrations are idempotent: running them again changes nothing.
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
});

backend_tests!(
    pruning_deletes_old_call_and_egress_rows_and_keeps_admin_events,
    |store: Store| async move {
        use chiron_store::audit::Pruned;
        use chiron_store::secrets::EgressRecord;
        use chiron_store::testing::tool_call;

        let old = now() - time::Duration::days(100);
        let recent = now();
        let principal = PrincipalId::new();
        let egress = |at| EgressRecord {
            at,
            principal_id: principal,
            runner_id: "runner-1".into(),
            package: "echo".into(),
            call_id: None,
            method: "GET".into(),
            host: "api.example.com".into(),
            path: "/".into(),
            status: 200,
            bytes_out: 0,
            bytes_in: 0,
            duration_ms: 1,
            injected: vec![],
            outcome: "ok".into(),
        };
        store
            .record_tool_calls(&[
                tool_call("old", time::Duration::days(100)),
                tool_call("recent", time::Duration::ZERO),
            ])
            .await
            .unwrap();
        // More old rows than one delete statement takes.
        let old_egress: Vec<_> = (0..5003).map(|_| egress(old)).collect();
        store.record_egress_batch(&old_egress).await.unwrap();
        store.record_egress_batch(&[egress(recent)]).await.unwrap();
        store
            .record_audit(audit("token.revoke", "t1"))
            .await
            .unwrap();

        let cutoff = now() - time::Duration::days(90);
        let pruned = store.prune_audit(cutoff).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                tool_calls: 1,
                egress_requests: 5003
            }
        );
        let calls = store.list_tool_calls(&Default::default()).await.unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].call_id, "recent");
        assert_eq!(store.egress_requests(None, 10).await.unwrap().len(), 1);
        assert_eq!(
            store
                .list_audit(&AuditFilter::default())
                .await
                .unwrap()
                .len(),
            1,
            "administrative events are kept"
        );
        assert_eq!(store.prune_audit(cutoff).await.unwrap(), Pruned::default());
    }
);
