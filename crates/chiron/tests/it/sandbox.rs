//! Real sandboxes: the local backend behind the runner pool, running tools through
//! `chiron runner-agent`. Escape attempts are each paired with a positive control.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chiron_core::PrincipalId;
use chiron_runner::local::{LocalBackend, LocalConfig};
use chiron_runner::{CommandCall, CommandOutcome, PoolConfig, RunnerPool, ToolRunner};
use chiron_tools::{PackageKind, ToolPackage};

struct Sandbox {
    pool: Arc<RunnerPool>,
    data: tempfile::TempDir,
    package: Arc<ToolPackage>,
}

/// A package whose one tool runs `python3 -c <code>` with the call's arguments on stdin.
fn sandbox() -> Sandbox {
    // Agent failures are logged by the backend; show them in the test output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let data = tempfile::tempdir().unwrap();
    // The sandbox runs as an unprivileged host id that must pass through to its home.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::create_dir_all(data.path().join("data")).unwrap();
    std::fs::set_permissions(
        data.path().join("data"),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let tools = data.path().join("tools/probe");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(
        tools.join("probe.py"),
        "import json, sys\nrequest = json.load(sys.stdin)\nexec(request['arguments']['code'])\n",
    )
    .unwrap();
    let package = Arc::new(ToolPackage {
        dir: tools.clone(),
        name: "probe".into(),
        version: "1".into(),
        description: String::new(),
        kind: PackageKind::Command,
        command: vec!["python3".into(), "probe.py".into()],
        env: Default::default(),
        source: None,
        tools: vec![],
        egress: vec![],
    });
    let config = LocalConfig {
        agent: vec![env!("CARGO_BIN_EXE_chiron").into(), "runner-agent".into()],
        data_dir: data.path().join("data"),
        tools: BTreeMap::from([("probe".to_owned(), tools)]),
        memory_limit: 256 * 1024 * 1024,
        pids_limit: 64,
    };
    let pool = Arc::new(RunnerPool::new(
        Arc::new(LocalBackend::new(config)),
        PoolConfig::default(),
    ));
    Sandbox {
        pool,
        data,
        package,
    }
}

impl Sandbox {
    async fn run(&self, principal: PrincipalId, code: &str) -> CommandOutcome {
        self.run_with_timeout(principal, code, Duration::from_secs(30))
            .await
    }

    async fn run_with_timeout(
        &self,
        principal: PrincipalId,
        code: &str,
        timeout: Duration,
    ) -> CommandOutcome {
        self.pool
            .run_command(CommandCall {
                principal,
                package: self.package.clone(),
                tool: "probe".into(),
                arguments: serde_json::json!({ "code": code }),
                timeout,
                call_id: "test".into(),
            })
            .await
            .unwrap()
    }
}

fn stdout(outcome: &CommandOutcome) -> String {
    assert_eq!(
        outcome.exit_code,
        Some(0),
        "tool failed: {}",
        outcome.stderr_tail
    );
    String::from_utf8_lossy(&outcome.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_runs_in_a_persistent_sandbox() {
    let s = sandbox();
    let alice = PrincipalId::new();
    let first = s.run(alice, "import os; open(os.path.expanduser('~/note'), 'w').write('kept'); print(os.getpid(), os.getuid())").await;
    let out = stdout(&first);
    let (pid, uid) = out.split_once(' ').unwrap();
    assert!(
        pid.parse::<u32>().unwrap() < 100,
        "not in a fresh pid namespace: {out}"
    );
    assert_eq!(uid, "1000");
    let second = s
        .run(
            alice,
            "import os; print(open(os.path.expanduser('~/note')).read())",
        )
        .await;
    assert_eq!(stdout(&second), "kept");
    assert_eq!(
        first.runner_id, second.runner_id,
        "the runner was not reused"
    );
    assert_eq!(
        s.pool
            .stats()
            .created
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let _ = PathBuf::from(s.data.path());
}
