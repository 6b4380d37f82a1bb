use std::time::Duration;

use chiron_auth::hash::TokenHasher;
use chiron_auth::token::{check_format, TokenSecret};
use chiron_auth::{AuthError, AuthService, InvalidReason, VerifyError};
use chiron_core::time_util::now;
use chiron_core::{Actor, PrincipalStatus, Scope, TokenId};
use chiron_store::testing::dump_all_tables;
use chiron_store::{backend_tests, Store};

use crate::support::{issue, request, service, settings, AUDIENCE};

fn invalid(
    result: Result<std::sync::Arc<chiron_auth::Authenticated>, VerifyError>,
) -> InvalidReason {
    match result {
        Err(VerifyError::Invalid(reason)) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

backend_tests!(
    issued_token_verifies_and_is_stored_hashed,
    |store: Store| async move {
        let auth = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let issued = issue(&auth, alice.id, &[Scope::McpTools]).await;
        let text = issued.secret.expose();
        assert!(text.starts_with("chi_"));
        assert_eq!(text.len(), 53);
        assert_eq!(check_format(text), Ok(()));
        assert_eq!(issued.record.display_prefix, &text[..12]);
        assert_eq!(issued.record.audience, AUDIENCE);

        let verified = auth.verify(text, Scope::McpTools).await.unwrap();
        assert_eq!(verified.principal.id, alice.id);
        assert_eq!(verified.token.id, issued.record.id);

        let dump = dump_all_tables(&store).await;
        assert!(!dump.contains(text), "storage holds the token");
        assert!(dump.contains(&TokenHasher::hex(&TokenHasher::new(None).digest(text))));
    }
);

backend_tests!(
    changed_character_is_rejected_without_a_query,
    |store: Store| async move {
        let auth = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let issued = issue(&auth, alice.id, &[Scope::McpTools]).await;
        let text = issued.secret.expose();
        let before = auth.storage_lookups();
        for idx in [4, 20, 47, 52] {
            let mut bytes = text.as_bytes().to_vec();
            bytes[idx] = if bytes[idx] == b'Z' { b'Y' } else { b'Z' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(
                invalid(auth.verify(&changed, Scope::McpTools).await),
                InvalidReason::Malformed
            );
        }
        assert_eq!(
            invalid(auth.verify("Bearer nonsense", Scope::McpTools).await),
            InvalidReason::Malformed
        );
        assert_eq!(
            auth.storage_lookups(),
            before,
            "a malformed token reached storage"
        );

        // A well-formed token that was never issued does reach storage, and is unknown.
        let stranger = TokenSecret::generate();
        assert_eq!(
            invalid(auth.verify(stranger.expose(), Scope::McpTools).await),
            InvalidReason::Unknown
        );
        assert_eq!(auth.storage_lookups(), before + 1);
    }
);

backend_tests!(expired_token_is_invalid, |store: Store| async move {
    let auth = service(&store);
    let alice = store.create_principal("alice").await.unwrap();
    // Store a record whose expiry has passed, as if issued long ago.
    let secret = TokenSecret::generate();
    let created_at = now() - Duration::from_secs(7200);
    let record = chiron_core::McpToken {
        id: TokenId::new(),
        principal_id: alice.id,
        name: "old".into(),
        display_prefix: secret.display_prefix().into(),
        scopes: chiron_core::Scopes::new([Scope::McpTools]),
        audience: AUDIENCE.into(),
        created_via: chiron_core::CreatedVia::Cli,
        created_at,
        expires_at: created_at + Duration::from_secs(3600),
        last_used_at: None,
        revoked_at: None,
        revoke_reason: None,
    };
    let hash = TokenHasher::hex(&TokenHasher::new(None).digest(secret.expose()));
    let audit = chiron_core::NewAuditEvent {
        actor: Actor::cli(),
        action: "token.issue".into(),
        target_kind: "token".into(),
        target_id: record.id.to_string(),
        detail: serde_json::json!({}),
    };
    store.insert_token(&record, &hash, audit).await.unwrap();
    assert_eq!(
        invalid(auth.verify(secret.expose(), Scope::McpTools).await),
        InvalidReason::Expired
    );
});

backend_tests!(
    revocation_through_the_service_applies_to_the_next_verification,
    |store: Store| async move {
        let auth = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let first = issue(&auth, alice.id, &[Scope::McpTools]).await;
        let second = issue(&auth, alice.id, &[Scope::McpTools]).await;
        // Warm the cache so the revoke must evict, not merely miss.
        auth.verify(first.secret.expose(), Scope::McpTools)
            .await
            .unwrap();
        auth.verify(second.secret.expose(), Scope::McpTools)
            .await
            .unwrap();

        auth.revoke(first.record.id, None, "lost", Actor::cli())
            .await
            .unwrap();
        assert_eq!(
            invalid(auth.verify(first.secret.expose(), Scope::McpTools).await),
            InvalidReason::Revoked
        );
        auth.verify(second.secret.expose(), Scope::McpTools)
            .await
            .unwrap();

        auth.revoke_all(alice.id, "offboarding", Actor::cli())
            .await
            .unwrap();
        assert_eq!(
            invalid(auth.verify(second.secret.expose(), Scope::McpTools).await),
            InvalidReason::Revoked
        );

        let actions: Vec<String> = store
            .list_audit(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "token.revoke_all",
                "token.revoke",
                "token.issue",
                "token.issue"
            ]
        );
    }
);

backend_tests!(
    revoking_someone_elses_token_looks_like_a_missing_one,
    |store: Store| async move {
        let auth = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let bob = store.create_principal("bob").await.unwrap();
        let alices = issue(&auth, alice.id, &[Scope::McpTools]).await;
        let by_bob = auth
            .revoke(
                alices.record.id,
                Some(bob.id),
                "x",
                Actor::principal(bob.id, "slack"),
            )
            .await;
        assert!(matches!(by_bob, Err(AuthError::TokenNotFound)));
        let missing = auth
            .revoke(TokenId::new(), Some(bob.id), "x", Actor::cli())
            .await;
        assert!(matches!(missing, Err(AuthError::TokenNotFound)));
        auth.verify(alices.secret.expose(), Scope::McpTools)
            .await
            .unwrap();
    }
);

backend_tests!(
    disabled_principal_is_refused_at_once,
    |store: Store| async move {
        let auth = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let issued = issue(&auth, alice.id, &[Scope::McpTools]).await;
        auth.verify(issued.secret.expose(), Scope::McpTools)
            .await
            .unwrap();
        auth.set_principal_status(alice.id, PrincipalStatus::Disabled, Actor::cli())
            .await
            .unwrap();
        assert_eq!(
            invalid(auth.verify(issued.secret.expose(), Scope::McpTools).await),
            InvalidReason::PrincipalDisabled
        );
        assert!(matches!(
            auth.issue(request(alice.id, &[Scope::McpTools])).await,
            Err(AuthError::PrincipalDisabled)
        ));
        auth.set_principal_status(alice.id, PrincipalStatus::Active, Actor::cli())
            .await
            .unwrap();
        auth.verify(issued.secret.expose(), Scope::McpTools)
            .await
            .unwrap();
    }
);

backend_tests!(audience_and_scope_are_enforced, |store: Store| async move {
    let auth = service(&store);
    let elsewhere = AuthService::new(store.clone(), settings("https://other.example/mcp"), None);
    let alice = store.create_principal("alice").await.unwrap();
    let mcp = issue(&auth, alice.id, &[Scope::McpTools]).await;
    let admin_only = issue(&auth, alice.id, &[Scope::Admin]).await;
    let both = issue(&auth, alice.id, &[Scope::McpTools, Scope::Admin]).await;

    assert_eq!(
        invalid(elsewhere.verify(mcp.secret.expose(), Scope::McpTools).await),
        InvalidReason::WrongAudience
    );
    assert!(matches!(
        auth.verify(admin_only.secret.expose(), Scope::McpTools)
            .await,
        Err(VerifyError::InsufficientScope(Scope::McpTools))
    ));
    assert!(matches!(
        auth.verify(mcp.secret.expose(), Scope::Admin).await,
        Err(VerifyError::InsufficientScope(Scope::Admin))
    ));
    auth.verify(both.secret.expose(), Scope::Admin)
        .await
        .unwrap();
    auth.verify(both.secret.expose(), Scope::McpTools)
        .await
        .unwrap();
});

backend_tests!(issue_rules, |store: Store| async move {
    let auth = service(&store);
    let alice = store.create_principal("alice").await.unwrap();
    let mut too_long = request(alice.id, &[Scope::McpTools]);
    too_long.ttl = Some(Duration::from_secs(2 * 24 * 3600));
    assert!(matches!(
        auth.issue(too_long).await,
        Err(AuthError::BadTtl { .. })
    ));
    assert!(matches!(
        auth.issue(request(alice.id, &[])).await,
        Err(AuthError::NoScopes)
    ));
    assert!(matches!(
        auth.issue(request(chiron_core::PrincipalId::new(), &[Scope::McpTools]))
            .await,
        Err(AuthError::PrincipalNotFound)
    ));
    let mut week = request(alice.id, &[Scope::McpTools]);
    week.ttl = Some(Duration::from_secs(3 * 3600));
    let issued = auth.issue(week).await.unwrap();
    assert_eq!(
        issued.record.expires_at - issued.record.created_at,
        time::Duration::hours(3)
    );
});

backend_tests!(
    last_used_at_advances_and_is_coalesced,
    |store: Store| async move {
        let auth = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let issued = issue(&auth, alice.id, &[Scope::McpTools]).await;
        assert_eq!(
            store
                .get_token(issued.record.id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            None
        );
        for _ in 0..5 {
            auth.verify(issued.secret.expose(), Scope::McpTools)
                .await
                .unwrap();
        }
        // Five uses within the interval coalesce into one write.
        assert_eq!(auth.flush_usage().await.unwrap(), 1);
        let used = store
            .get_token(issued.record.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at;
        assert!(used.is_some_and(|at| at >= issued.record.created_at));
        assert_eq!(auth.flush_usage().await.unwrap(), 0);
    }
);

backend_tests!(storage_errors_fail_closed, |store: Store| async move {
    let auth = service(&store);
    let alice = store.create_principal("alice").await.unwrap();
    let issued = issue(&auth, alice.id, &[Scope::McpTools]).await;
    store.close().await;
    assert!(matches!(
        auth.verify(issued.secret.expose(), Scope::McpTools).await,
        Err(VerifyError::Unavailable(_))
    ));
});

backend_tests!(
    peppered_hashes_differ_and_still_verify,
    |store: Store| async move {
        let peppered =
            AuthService::new(store.clone(), settings(AUDIENCE), Some(b"pepper".to_vec()));
        let plain = service(&store);
        let alice = store.create_principal("alice").await.unwrap();
        let issued = issue(&peppered, alice.id, &[Scope::McpTools]).await;
        peppered
            .verify(issued.secret.expose(), Scope::McpTools)
            .await
            .unwrap();
        assert_eq!(
            invalid(plain.verify(issued.secret.expose(), Scope::McpTools).await),
            InvalidReason::Unknown
        );
    }
);
