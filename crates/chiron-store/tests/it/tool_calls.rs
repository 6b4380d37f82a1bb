use chiron_core::time_util::now;
use chiron_core::{PrincipalId, TokenId};
use chiron_store::tool_calls::{ToolCallFilter, ToolCallRecord};
use chiron_store::{backend_tests, Store};

fn call(principal_id: PrincipalId, tool: &str, values: Option<&str>) -> ToolCallRecord {
    ToolCallRecord {
        call_id: uuid::Uuid::new_v4().to_string(),
        at: now(),
        principal_id,
        token_id: TokenId::new(),
        tool: tool.into(),
        package: "echo".into(),
        arg_keys: vec!["text".into()],
        arg_bytes: 15,
        arg_values: values.map(str::to_owned),
        outcome: "ok".into(),
        duration_ms: 3,
        runner_id: Some("runner-1".into()),
    }
}

backend_tests!(
    tool_calls_are_recorded_and_listed,
    |store: Store| async move {
        let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
        let first = call(alice, "echo_echo", Some(r#"{"text":"hi"}"#));
        let second = call(bob, "echo_echo", None);
        store.record_tool_call(&first).await.unwrap();
        store.record_tool_call(&second).await.unwrap();
        let all = store.list_tool_calls(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        let alices = store
            .list_tool_calls(&ToolCallFilter {
                principal_id: Some(alice),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(alices, vec![first]);
        assert_eq!(
            store
                .list_tool_calls(&ToolCallFilter {
                    principal_id: Some(bob),
                    ..Default::default()
                })
                .await
                .unwrap()[0]
                .arg_values,
            None
        );
    }
);

backend_tests!(
    tool_call_values_that_need_escaping_come_back_exactly,
    |store: Store| async move {
        let mut odd = call(
            PrincipalId::new(),
            "t\"o\\o\u{1}l",
            Some("{\"k\":\"é\u{1F600}\"}"),
        );
        odd.arg_keys = vec!["a,b".into(), "\"".into(), String::new()];
        odd.runner_id = None;
        odd.arg_bytes = i64::MAX;
        odd.duration_ms = i64::MIN;
        store.record_tool_call(&odd).await.unwrap();
        let back = store.list_tool_calls(&Default::default()).await.unwrap();
        assert_eq!(back, vec![odd]);
    }
);
