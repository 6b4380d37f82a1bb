use chiron_core::{GroupId, PrincipalId};
use chiron_store::{backend_tests, Store, StoreError};

backend_tests!(groups_and_membership, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let bob = store.create_principal("bob").await.unwrap();
    let eng = store.create_group("eng").await.unwrap();
    let ops = store.create_group("ops").await.unwrap();
    assert!(matches!(
        store.create_group("eng").await,
        Err(StoreError::Conflict("group"))
    ));
    assert_eq!(store.group_by_name("eng").await.unwrap(), Some(eng.clone()));
    assert_eq!(store.group_by_name("nope").await.unwrap(), None);
    assert_eq!(
        store.list_groups().await.unwrap(),
        vec![eng.clone(), ops.clone()]
    );

    store.add_group_member(eng.id, alice.id).await.unwrap();
    store.add_group_member(eng.id, alice.id).await.unwrap(); // idempotent
    store.add_group_member(eng.id, bob.id).await.unwrap();
    store.add_group_member(ops.id, alice.id).await.unwrap();
    assert_eq!(
        store.group_members(eng.id).await.unwrap(),
        vec![alice.clone(), bob.clone()]
    );
    assert_eq!(
        store.groups_of(alice.id).await.unwrap(),
        vec![eng.clone(), ops.clone()]
    );

    assert!(matches!(
        store.add_group_member(GroupId::new(), alice.id).await,
        Err(StoreError::NotFound("group"))
    ));
    assert!(matches!(
        store.add_group_member(eng.id, PrincipalId::new()).await,
        Err(StoreError::NotFound("principal"))
    ));

    assert!(store.remove_group_member(eng.id, bob.id).await.unwrap());
    assert!(!store.remove_group_member(eng.id, bob.id).await.unwrap());
    assert_eq!(
        store.group_members(eng.id).await.unwrap(),
        vec![alice.clone()]
    );

    store.delete_group(ops.id).await.unwrap();
    assert_eq!(store.groups_of(alice.id).await.unwrap(), vec![eng]);
    assert!(matches!(
        store.delete_group(ops.id).await,
        Err(StoreError::NotFound("group"))
    ));
});
