use axum::http::StatusCode;
use chiron_core::Scope;
use chiron_store::{backend_tests, Store};
use serde_json::json;

use crate::support::TestApp;

backend_tests!(admin_api_authentication, |store: Store| async move {
    let app = TestApp::new(store);
    let (admin_id, admin_token) = app.admin().await;
    let mcp_only = app.token(admin_id, &[Scope::McpTools]).await;

    let missing = app.get("/admin/api/principals", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error_code(), "unauthenticated");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");

    let invalid = app
        .get("/admin/api/principals", Some("chi_not_a_real_token"))
        .await;
    assert_eq!(invalid.status, StatusCode::UNAUTHORIZED);
    assert_eq!(invalid.error_code(), "invalid_token");
    assert_eq!(
        invalid.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );

    let not_admin = app.get("/admin/api/principals", Some(&mcp_only)).await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);
    assert_eq!(not_admin.error_code(), "insufficient_scope");

    // A token in the query string is ignored.
    let in_query = app
        .get(
            &format!("/admin/api/principals?access_token={admin_token}"),
            None,
        )
        .await;
    assert_eq!(in_query.status, StatusCode::UNAUTHORIZED);

    let ok = app.get("/admin/api/principals", Some(&admin_token)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["principals"][0]["display_name"], "admin");
});

backend_tests!(
    admin_issues_lists_and_revokes_tokens,
    |store: Store| async move {
        let app = TestApp::new(store);
        let (_, admin) = app.admin().await;
        let create_alice = || {
            app.call(
                "POST",
                "/admin/api/principals",
                Some(&admin),
                Some(json!({"display_name": "alice"})),
            )
        };
        let created = create_alice().await;
        assert_eq!(created.status, StatusCode::CREATED);
        let alice = created.json()["id"].as_str().unwrap().to_owned();
        let twice = create_alice().await;
        assert_eq!(twice.status, StatusCode::CONFLICT);
        assert_eq!(twice.error_code(), "conflict");

        let issued = app
            .call(
                "POST",
                &format!("/admin/api/principals/{alice}/tokens"),
                Some(&admin),
                Some(json!({"name": "laptop", "ttl": "7d"})),
            )
            .await;
        assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text);
        let body = issued.json();
        let token = body["token"].as_str().unwrap().to_owned();
        let token_id = body["metadata"]["id"].as_str().unwrap().to_owned();
        assert!(token.starts_with("chi_") && token.len() == 53);
        assert_eq!(body["metadata"]["created_via"], "admin-api");
        assert_eq!(body["metadata"]["scopes"], json!(["mcp:tools"]));

        // The issued token works: it verifies for MCP, and on the admin API it is a valid token
        // without the admin scope (403, not 401).
        app.state
            .auth
            .verify(&token, Scope::McpTools)
            .await
            .unwrap();
        assert_eq!(
            app.get("/admin/api/principals", Some(&token)).await.status,
            StatusCode::FORBIDDEN
        );

        let listed = app
            .get(
                &format!("/admin/api/principals/{alice}/tokens"),
                Some(&admin),
            )
            .await;
        assert_eq!(listed.status, StatusCode::OK);
        let tokens = listed.json()["tokens"].clone();
        assert_eq!(tokens.as_array().unwrap().len(), 1);
        assert!(
            !listed.text.contains(&token),
            "a listing must never contain the token"
        );
        assert_eq!(tokens[0]["display_prefix"], &token[..12]);

        let revoked = app
            .call(
                "POST",
                &format!("/admin/api/tokens/{token_id}/revoke"),
                Some(&admin),
                Some(json!({"reason": "test"})),
            )
            .await;
        assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
        assert_eq!(revoked.json()["revoke_reason"], "test");
        // Refused on the very next use.
        assert_eq!(
            app.get("/admin/api/principals", Some(&token)).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert!(app
            .state
            .auth
            .verify(&token, Scope::McpTools)
            .await
            .is_err());

        // Revoke-all with an empty body, and the audit trail.
        let second = app
            .call(
                "POST",
                &format!("/admin/api/principals/{alice}/tokens"),
                Some(&admin),
                Some(json!({})),
            )
            .await;
        let second_token = second.json()["token"].as_str().unwrap().to_owned();
        let all = app
            .call(
                "POST",
                &format!("/admin/api/principals/{alice}/tokens/revoke-all"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.text);
        assert_eq!(all.json()["revoked"].as_array().unwrap().len(), 1);
        assert!(app
            .state
            .auth
            .verify(&second_token, Scope::McpTools)
            .await
            .is_err());

        let audit = app.get("/admin/api/audit", Some(&admin)).await;
        let actions: Vec<String> = audit.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            actions.starts_with(&[
                "token.revoke_all".into(),
                "token.issue".into(),
                "token.revoke".into(),
                "token.issue".into()
            ]),
            "{actions:?}"
        );
        assert!(!audit.text.contains(&token) && !audit.text.contains(&second_token));
    }
);

backend_tests!(
    admin_disables_principals_and_manages_groups,
    |store: Store| async move {
        let app = TestApp::new(store);
        let (_, admin) = app.admin().await;
        let bob = app.state.store.create_principal("bob").await.unwrap();
        let bobs_token = app.token(bob.id, &[Scope::McpTools]).await;
        app.state
            .auth
            .verify(&bobs_token, Scope::McpTools)
            .await
            .unwrap();

        let disabled = app
            .call(
                "POST",
                &format!("/admin/api/principals/{}/disable", bob.id),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(disabled.status, StatusCode::OK);
        assert_eq!(disabled.json()["status"], "disabled");
        assert!(app
            .state
            .auth
            .verify(&bobs_token, Scope::McpTools)
            .await
            .is_err());
        let issue = app
            .call(
                "POST",
                &format!("/admin/api/principals/{}/tokens", bob.id),
                Some(&admin),
                Some(json!({})),
            )
            .await;
        assert_eq!(issue.status, StatusCode::BAD_REQUEST);

        let group = app
            .call(
                "POST",
                "/admin/api/groups",
                Some(&admin),
                Some(json!({"name": "eng"})),
            )
            .await;
        assert_eq!(group.status, StatusCode::CREATED);
        let again = app
            .call(
                "POST",
                "/admin/api/groups",
                Some(&admin),
                Some(json!({"name": "eng"})),
            )
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert_eq!(again.error_code(), "conflict");
        let added = app
            .call(
                "PUT",
                &format!("/admin/api/groups/eng/members/{}", bob.id),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(added.status, StatusCode::NO_CONTENT);
        let shown = app.get("/admin/api/groups/eng", Some(&admin)).await;
        assert_eq!(shown.json()["members"][0]["display_name"], "bob");
        let detail = app
            .get(&format!("/admin/api/principals/{}", bob.id), Some(&admin))
            .await;
        assert_eq!(detail.json()["groups"][0]["name"], "eng");
        let removed = app
            .call(
                "DELETE",
                &format!("/admin/api/groups/eng/members/{}", bob.id),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        let deleted = app
            .call("DELETE", "/admin/api/groups/eng", Some(&admin), None)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        assert_eq!(
            app.get("/admin/api/groups/eng", Some(&admin)).await.status,
            StatusCode::NOT_FOUND
        );
    }
);

backend_tests!(
    admin_errors_are_json_with_stable_codes,
    |store: Store| async move {
        let app = TestApp::new(store);
        let (_, admin) = app.admin().await;
        let missing = app
            .get("/admin/api/principals/not-a-uuid", Some(&admin))
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.error_code(), "not_found");
        let unknown = app
            .get(
                &format!("/admin/api/principals/{}", uuid::Uuid::now_v7()),
                Some(&admin),
            )
            .await;
        assert_eq!(unknown.error_code(), "not_found");

        let request = axum::http::Request::post("/admin/api/principals")
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{not json"))
            .unwrap();
        let bad = app.send(request).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.error_code(), "bad_request");

        // Bad query values, unknown routes and unserved methods answer in the same shape.
        let query = app.get("/admin/api/egress?limit=many", Some(&admin)).await;
        assert_eq!(query.status, StatusCode::BAD_REQUEST);
        assert_eq!(query.error_code(), "bad_request");
        assert!(query.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"));
        let nowhere = app.get("/admin/api/nowhere", Some(&admin)).await;
        assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
        assert_eq!(nowhere.error_code(), "not_found");
        let patch = app
            .call("PATCH", "/admin/api/principals", Some(&admin), None)
            .await;
        assert_eq!(patch.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(patch.error_code(), "method_not_allowed");
        assert!(patch.headers["allow"].to_str().unwrap().contains("POST"));

        let empty = app
            .call(
                "POST",
                "/admin/api/principals",
                Some(&admin),
                Some(json!({"display_name": " "})),
            )
            .await;
        assert_eq!(empty.error_code(), "bad_request");
        let p = app.state.store.create_principal("carol").await.unwrap();
        let long = app
            .call(
                "POST",
                &format!("/admin/api/principals/{}/tokens", p.id),
                Some(&admin),
                Some(json!({"ttl": "9999d"})),
            )
            .await;
        assert_eq!(long.status, StatusCode::BAD_REQUEST);
        let scope = app
            .call(
                "POST",
                &format!("/admin/api/principals/{}/tokens", p.id),
                Some(&admin),
                Some(json!({"scopes": ["root"]})),
            )
            .await;
        assert_eq!(scope.status, StatusCode::BAD_REQUEST);
    }
);

backend_tests!(admin_manages_grants, |store: Store| async move {
    let app = TestApp::new(store);
    let (_, admin) = app.admin().await;
    let alice = app.state.store.create_principal("alice").await.unwrap();
    app.state.store.create_group("eng").await.unwrap();

    let added = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "github", "principal": alice.id})),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let again = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "github", "principal": alice.id})),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["added"], false);
    let group = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "slack", "group": "eng"})),
        )
        .await;
    assert_eq!(group.status, StatusCode::CREATED);
    let everyone = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "echo", "everyone": true})),
        )
        .await;
    assert_eq!(everyone.status, StatusCode::CREATED);
    let both = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "x", "everyone": true, "group": "eng"})),
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    let nobody = app
        .call(
            "POST",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "x", "group": "ops"})),
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);

    let listed = app.get("/admin/api/grants", Some(&admin)).await;
    assert_eq!(listed.json()["grants"].as_array().unwrap().len(), 3);
    assert_eq!(
        app.state.store.granted_packages(alice.id).await.unwrap(),
        ["echo", "github"]
    );

    let removed = app
        .call(
            "DELETE",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "github", "principal": alice.id})),
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let missing = app
        .call(
            "DELETE",
            "/admin/api/grants",
            Some(&admin),
            Some(json!({"package": "github", "principal": alice.id})),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let events = app
        .get("/admin/api/audit?action=grant.add", Some(&admin))
        .await;
    assert_eq!(events.json()["events"].as_array().unwrap().len(), 3);
});

backend_tests!(admin_lists_tool_calls, |store: Store| async move {
    let app = TestApp::new(store);
    let (_, admin) = app.admin().await;
    let alice = app.state.store.create_principal("alice").await.unwrap();
    let record = chiron_store::tool_calls::ToolCallRecord {
        call_id: "c1".into(),
        at: chiron_core::time_util::now(),
        principal_id: alice.id,
        token_id: chiron_core::TokenId::new(),
        tool: "echo_echo".into(),
        package: "echo".into(),
        arg_keys: vec![],
        arg_bytes: 2,
        arg_values: None,
        outcome: "ok".into(),
        duration_ms: 1,
        runner_id: None,
    };
    app.state.store.record_tool_call(&record).await.unwrap();
    let calls = app
        .get(
            &format!("/admin/api/calls?principal={}&tool=echo_echo", alice.id),
            Some(&admin),
        )
        .await;
    assert_eq!(calls.status, StatusCode::OK, "{}", calls.text);
    assert_eq!(calls.json()["calls"][0]["call_id"], "c1");
    let none = app
        .get("/admin/api/calls?outcome=timeout", Some(&admin))
        .await;
    assert!(none.json()["calls"].as_array().unwrap().is_empty());
});

backend_tests!(
    admin_manages_secrets_without_ever_returning_values,
    |store: Store| async move {
        let keys = tempfile::tempdir().unwrap();
        let key_file = keys.path().join("master.key");
        chiron_egress::Keyring::create_file(&key_file).unwrap();
        let mut config = chiron_core::Config::default();
        config.egress.master_key_file = Some(key_file);
        let app = TestApp::with_config(store, config);
        let (_, admin) = app.admin().await;
        let alice = app.state.store.create_principal("alice").await.unwrap();
        const VALUE: &str = "admin-api-secret-value-31337";

        let set = app
            .call(
                "PUT",
                "/admin/api/secrets",
                Some(&admin),
                Some(json!({"name": "GITHUB_TOKEN", "principal": alice.id, "value": VALUE})),
            )
            .await;
        assert_eq!(set.status, StatusCode::NO_CONTENT, "{}", set.text);
        let team = app
            .call(
                "PUT",
                "/admin/api/secrets",
                Some(&admin),
                Some(json!({"name": "SLACK_TOKEN", "team": true, "value": VALUE})),
            )
            .await;
        assert_eq!(team.status, StatusCode::NO_CONTENT, "{}", team.text);
        let bad = app
            .call(
                "PUT",
                "/admin/api/secrets",
                Some(&admin),
                Some(json!({"name": "lower", "team": true, "value": VALUE})),
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(!bad.text.contains(VALUE));

        let listed = app
            .call(
                "GET",
                &format!("/admin/api/secrets?principal={}", alice.id),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_eq!(listed.json()["secrets"].as_array().unwrap().len(), 2);
        assert!(listed.text.contains("GITHUB_TOKEN") && !listed.text.contains(VALUE));

        let deleted = app
            .call(
                "DELETE",
                "/admin/api/secrets",
                Some(&admin),
                Some(json!({"name": "GITHUB_TOKEN", "principal": alice.id})),
            )
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        let again = app
            .call(
                "DELETE",
                "/admin/api/secrets",
                Some(&admin),
                Some(json!({"name": "GITHUB_TOKEN", "principal": alice.id})),
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        // Stored sealed only; audited by name only.
        let tables = chiron_store::testing::dump_all_tables(&app.state.store).await;
        assert!(!tables.contains(VALUE));
        assert!(tables.contains("secret.set") && tables.contains("secret.delete"));
    }
);
