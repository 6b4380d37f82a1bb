use std::time::Duration;

use chiron_core::time_util::now;
use chiron_core::{PrincipalStatus, TokenId};
use chiron_store::{backend_tests, Store, StoreError};

use crate::support::{audit, token};

const DAY: Duration = Duration::from_secs(24 * 3600);

backend_tests!(insert_and_find_token_by_hash, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let record = token(alice.id, DAY);
    store
        .insert_token(&record, "hash-1", audit("token.issue", record.id))
        .await
        .unwrap();

    let (found, principal) = store.token_by_hash("hash-1").await.unwrap().unwrap();
    assert_eq!(found, record);
    assert_eq!(principal, alice);
    assert_eq!(store.token_by_hash("hash-2").await.unwrap(), None);
    assert_eq!(
        store.get_token(record.id).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.get_token(TokenId::new()).await.unwrap(), None);

    // The same hash twice is refused, and the refused insert leaves no audit row.
    let duplicate = token(alice.id, DAY);
    let again = store
        .insert_token(&duplicate, "hash-1", audit("token.issue", duplicate.id))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict("token"))));
    assert_eq!(
        store.list_audit(&Default::default()).await.unwrap().len(),
        1
    );

    // The principal's status travels with the token.
    store
        .set_principal_status(
            alice.id,
            PrincipalStatus::Disabled,
            audit("principal.disable", alice.id),
        )
        .await
        .unwrap();
    let (_, principal) = store.token_by_hash("hash-1").await.unwrap().unwrap();
    assert_eq!(principal.status, PrincipalStatus::Disabled);
});

backend_tests!(list_and_revoke_tokens, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let bob = store.create_principal("bob").await.unwrap();
    let first = token(alice.id, DAY);
    let second = token(alice.id, DAY);
    let expired = token(alice.id, Duration::ZERO);
    let bobs = token(bob.id, DAY);
    for (idx, t) in [&first, &second, &expired, &bobs].into_iter().enumerate() {
        store
            .insert_token(t, &format!("h{idx}"), audit("token.issue", t.id))
            .await
            .unwrap();
    }

    let live: Vec<_> = store
        .list_tokens(alice.id, false)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(live, vec![second.id, first.id]);
    assert_eq!(store.list_tokens(alice.id, true).await.unwrap().len(), 3);

    let revoked = store
        .revoke_token(first.id, "lost laptop", audit("token.revoke", first.id))
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.revoke_reason.as_deref(), Some("lost laptop"));
    // A second revoke keeps the first reason.
    let again = store
        .revoke_token(first.id, "other", audit("token.revoke", first.id))
        .await
        .unwrap();
    assert_eq!(again.revoke_reason.as_deref(), Some("lost laptop"));
    assert_eq!(again.revoked_at, revoked.revoked_at);
    assert!(matches!(
        store
            .revoke_token(TokenId::new(), "x", audit("token.revoke", "x"))
            .await,
        Err(StoreError::NotFound("token"))
    ));

    let all = store
        .revoke_all_tokens(alice.id, "offboarding", audit("token.revoke_all", alice.id))
        .await
        .unwrap();
    // `first` was already revoked; `second` and the expired one are revoked now.
    assert_eq!(all.len(), 2);
    assert!(all.contains(&second.id) && all.contains(&expired.id));
    assert!(store.list_tokens(alice.id, false).await.unwrap().is_empty());
    // Bob's token is untouched.
    assert_eq!(store.list_tokens(bob.id, false).await.unwrap().len(), 1);
});

backend_tests!(touch_tokens_only_moves_forward, |store: Store| async move {
    let alice = store.create_principal("alice").await.unwrap();
    let record = token(alice.id, DAY);
    store
        .insert_token(&record, "h", audit("token.issue", record.id))
        .await
        .unwrap();
    store.touch_tokens(&[]).await.unwrap();

    let later = now() + Duration::from_secs(60);
    store.touch_tokens(&[(record.id, later)]).await.unwrap();
    assert_eq!(
        store
            .get_token(record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(later)
    );
    store
        .touch_tokens(&[(record.id, later - Duration::from_secs(30))])
        .await
        .unwrap();
    assert_eq!(
        store
            .get_token(record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(later)
    );
});
