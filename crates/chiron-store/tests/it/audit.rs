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
