use chiron_core::{PrincipalId, PrincipalStatus};
use chiron_store::{backend_tests, Store, StoreError};

use crate::support::audit;

backend_tests!(create_get_list_principals, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let bob = store.create_principal("bob").await.unwrap();
    assert_eq!(alice.status, PrincipalStatus::Active);
    assert_eq!(
        store.get_principal(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.get_principal(PrincipalId::new()).await.unwrap(), None);
    assert_eq!(
        store.list_principals().await.unwrap(),
        vec![alice.clone(), bob]
    );
    assert_eq!(store.principals_named("alice").await.unwrap(), vec![alice]);
    assert!(store.principals_named("carol").await.unwrap().is_empty());
});

backend_tests!(disable_principal_is_audited, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let disabled = store
        .set_principal_status(
            alice.id,
            PrincipalStatus::Disabled,
            audit("principal.disable", alice.id),
        )
        .await
        .unwrap();
    assert_eq!(disabled.status, PrincipalStatus::Disabled);
    assert!(!store
        .get_principal(alice.id)
        .await
        .unwrap()
        .unwrap()
        .is_active());
    let events = store.list_audit(&Default::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "principal.disable");
    assert_eq!(events[0].target_id, alice.id.to_string());

    let missing = store
        .set_principal_status(
            PrincipalId::new(),
            PrincipalStatus::Disabled,
            audit("x", "y"),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound("principal"))));
    // The failed change wrote no audit row.
    assert_eq!(
        store.list_audit(&Default::default()).await.unwrap().len(),
        1
    );
});

backend_tests!(external_identities_are_unique, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let bob = store.create_principal("bob").await.unwrap();
    let linked = store
        .link_identity("slack", "T1", "U1", alice.id)
        .await
        .unwrap();
    assert_eq!(linked.principal_id, alice.id);
    let again = store.link_identity("slack", "T1", "U1", bob.id).await;
    assert!(matches!(
        again,
        Err(StoreError::Conflict("external identity"))
    ));
    // Another tenant with the same subject is a different identity.
    store
        .link_identity("slack", "T2", "U1", bob.id)
        .await
        .unwrap();

    let found = store
        .find_identity("slack", "T1", "U1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.principal_id, alice.id);
    assert_eq!(
        store.find_identity("slack", "T1", "U9").await.unwrap(),
        None
    );
    let of_bob = store.identities_of(bob.id).await.unwrap();
    assert_eq!(of_bob.len(), 1);
    assert_eq!(of_bob[0].tenant, "T2");
});

backend_tests!(
    first_uses_of_an_identity_at_once_make_one_principal,
    |store: Store| async move {
        // Eight first messages from the same new user at once.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .principal_for_identity("slack", "T1", "U9", "Dana")
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.unwrap());
        }
        let first = results[0].0.id;
        assert!(results.iter().all(|(p, _)| p.id == first));
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
        // No orphan: the losers' principals were rolled back with their links.
        assert_eq!(store.principals_named("Dana").await.unwrap().len(), 1);
        let again = store
            .principal_for_identity("slack", "T1", "U9", "Someone else")
            .await
            .unwrap();
        assert_eq!((again.0.id, again.1), (first, false));
    }
);
