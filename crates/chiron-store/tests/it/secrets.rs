use chiron_core::time_util::now;
use chiron_core::PrincipalId;
use chiron_store::secrets::{EgressRecord, SealedSecret, SecretOwner};
use chiron_store::{backend_tests, Store};

fn sealed(name: &str, owner: SecretOwner, byte: u8) -> SealedSecret {
    SealedSecret {
        name: name.into(),
        owner,
        key_id: "k1".into(),
        nonce: vec![byte; 12],
        ciphertext: vec![byte; 20],
    }
}

backend_tests!(
    sealed_secrets_are_stored_per_owner_and_replaced,
    |store: Store| async move {
        let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
        store
            .put_secret(&sealed("GITHUB_TOKEN", SecretOwner::Principal(alice), 1))
            .await
            .unwrap();
        store
            .put_secret(&sealed("SLACK_TOKEN", SecretOwner::Team, 2))
            .await
            .unwrap();
        // Replacing keeps one row per (name, owner).
        store
            .put_secret(&sealed("GITHUB_TOKEN", SecretOwner::Principal(alice), 3))
            .await
            .unwrap();

        let alices = store.secrets_for(alice).await.unwrap();
        assert_eq!(alices.len(), 2);
        let github = alices.iter().find(|s| s.name == "GITHUB_TOKEN").unwrap();
        assert_eq!(github.ciphertext, vec![3; 20]);
        assert_eq!(github.nonce, vec![3; 12]);
        let bobs = store.secrets_for(bob).await.unwrap();
        assert_eq!(bobs.len(), 1);
        assert_eq!(bobs[0].owner, SecretOwner::Team);

        let listed = store.list_secrets(Some(bob)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(store.list_secrets(None).await.unwrap().len(), 2);

        // Re-sealing replaces values in place.
        let mut all = store.all_secrets().await.unwrap();
        for secret in &mut all {
            secret.key_id = "k2".into();
        }
        store.reseal_secrets(&all).await.unwrap();
        assert!(store
            .all_secrets()
            .await
            .unwrap()
            .iter()
            .all(|s| s.key_id == "k2"));

        assert!(store
            .delete_secret("GITHUB_TOKEN", SecretOwner::Principal(alice))
            .await
            .unwrap());
        assert!(!store
            .delete_secret("GITHUB_TOKEN", SecretOwner::Principal(alice))
            .await
            .unwrap());
        assert_eq!(store.secrets_for(alice).await.unwrap().len(), 1);
    }
);

backend_tests!(
    egress_requests_are_recorded_and_found_by_call,
    |store: Store| async move {
        let alice = PrincipalId::new();
        let record = |call: Option<&str>, outcome: &str| EgressRecord {
            at: now(),
            principal_id: alice,
            runner_id: "runner-1".into(),
            package: "github".into(),
            call_id: call.map(str::to_owned),
            method: "GET".into(),
            host: "api.github.com".into(),
            path: "/user".into(),
            status: 200,
            bytes_out: 0,
            bytes_in: 42,
            duration_ms: 5,
            injected: vec!["GITHUB_TOKEN".into()],
            outcome: outcome.into(),
        };
        store
            .record_egress(&record(Some("c1"), "ok"))
            .await
            .unwrap();
        store
            .record_egress(&record(None, "denied_host"))
            .await
            .unwrap();
        let all = store.egress_requests(None, 10).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].outcome, "denied_host", "newest first");
        let linked = store.egress_requests(Some("c1"), 10).await.unwrap();
        assert_eq!(
            linked,
            vec![record(Some("c1"), "ok")]
                .into_iter()
                .map(|mut r| {
                    r.at = linked[0].at;
                    r
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(linked[0].injected, ["GITHUB_TOKEN"]);

        // A batch larger than one multi-row statement lands whole, every row intact.
        let batch: Vec<EgressRecord> = (0..600)
            .map(|i| record(Some(&format!("batch-{i}")), "ok"))
            .collect();
        store.record_egress_batch(&batch).await.unwrap();
        assert_eq!(store.egress_requests(None, 1000).await.unwrap().len(), 602);
        let last = store.egress_requests(Some("batch-599"), 10).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].package.as_str(), last[0].bytes_in), ("github", 42));

        // Values that need escaping on their way in come back exactly.
        let odd = EgressRecord {
            path: "/a b/\"q\"/\\/\u{7}/é/\u{1F600}/'; DROP TABLE x; --".into(),
            host: String::new(),
            runner_id: "[1, 2]".into(),
            call_id: Some("odd".into()),
            status: i64::MAX,
            bytes_in: i64::MIN,
            bytes_out: -1,
            injected: vec![],
            ..record(None, "null")
        };
        store.record_egress(&odd).await.unwrap();
        let back = store.egress_requests(Some("odd"), 10).await.unwrap();
        assert_eq!(
            back,
            vec![EgressRecord {
                at: back[0].at,
                ..odd
            }]
        );
    }
);

backend_tests!(
    egress_credentials_are_found_by_hash_until_revoked,
    |store: Store| async move {
        let alice = PrincipalId::new();
        let id = store
            .insert_egress_credential("abc123", alice, "runner-9", "github")
            .await
            .unwrap();
        let found = store
            .find_egress_credential("abc123")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                found.principal_id,
                found.runner_id.as_str(),
                found.package.as_str()
            ),
            (alice, "runner-9", "github")
        );
        assert_eq!(store.find_egress_credential("other").await.unwrap(), None);
        assert!(store.revoke_egress_credential(&id).await.unwrap());
        assert!(!store.revoke_egress_credential(&id).await.unwrap());
        assert_eq!(store.find_egress_credential("abc123").await.unwrap(), None);
    }
);
