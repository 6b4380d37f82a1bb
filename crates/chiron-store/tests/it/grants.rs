use chiron_store::grants::GrantSubject;
use chiron_store::{backend_tests, Store};

use chiron_core::Actor;

backend_tests!(
    grants_reach_principals_directly_through_groups_and_everyone,
    |store: Store| async move {
        let alice = store.create_principal("alice").await.unwrap();
        let bob = store.create_principal("bob").await.unwrap();
        let carol = store.create_principal("carol").await.unwrap();
        let eng = store.create_group("eng").await.unwrap();
        store.add_group_member(eng.id, bob.id).await.unwrap();

        assert!(store
            .add_grant("github", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap());
        assert!(!store
            .add_grant("github", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap());
        store
            .add_grant("slack", GrantSubject::Group(eng.id), Actor::cli())
            .await
            .unwrap();
        store
            .add_grant("echo", GrantSubject::Everyone, Actor::cli())
            .await
            .unwrap();

        assert_eq!(
            store.granted_packages(alice.id).await.unwrap(),
            ["echo", "github"]
        );
        assert_eq!(
            store.granted_packages(bob.id).await.unwrap(),
            ["echo", "slack"]
        );
        assert_eq!(store.granted_packages(carol.id).await.unwrap(), ["echo"]);

        let all = store.list_grants(None).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].package, "echo");
        assert_eq!(all[0].subject, GrantSubject::Everyone);
        assert_eq!(
            store.list_grants(Some("slack")).await.unwrap()[0].subject,
            GrantSubject::Group(eng.id)
        );

        assert!(store
            .remove_grant("github", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap());
        assert!(!store
            .remove_grant("github", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap());
        assert_eq!(store.granted_packages(alice.id).await.unwrap(), ["echo"]);
        store.remove_group_member(eng.id, bob.id).await.unwrap();
        assert_eq!(store.granted_packages(bob.id).await.unwrap(), ["echo"]);

        // Only changes were audited: three adds and one removal.
        let actions: Vec<String> = store
            .list_audit(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            ["grant.remove", "grant.add", "grant.add", "grant.add"]
        );
    }
);

backend_tests!(
    the_access_revision_changes_with_grants_and_memberships,
    |store: Store| async move {
        let alice = store.create_principal("alice").await.unwrap();
        let eng = store.create_group("eng").await.unwrap();
        let mut seen = vec![store.access_revision().await.unwrap()];
        let mut changed = |revision: String| {
            assert!(
                !seen.contains(&revision),
                "{revision} seen before: {seen:?}"
            );
            seen.push(revision);
        };
        store
            .add_grant("echo", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap();
        changed(store.access_revision().await.unwrap());
        store.add_group_member(eng.id, alice.id).await.unwrap();
        changed(store.access_revision().await.unwrap());
        store
            .remove_grant("echo", GrantSubject::Principal(alice.id), Actor::cli())
            .await
            .unwrap();
        changed(store.access_revision().await.unwrap());
        // Unchanged state, unchanged revision.
        let now = store.access_revision().await.unwrap();
        assert_eq!(now, store.access_revision().await.unwrap());
    }
);
