use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chiron_core::PrincipalId;
use chiron_runner::{
    CommandCall, CommandOutcome, PoolConfig, Runner, RunnerBackend, RunnerError, RunnerPool,
    StdioCall, StdioOutcome, ToolRunner,
};
use chiron_tools::{PackageKind, ToolPackage};
use tokio::sync::Notify;

struct FakeRunner {
    id: String,
    alive: AtomicBool,
    stopped: AtomicBool,
    calls: AtomicUsize,
    /// When set, each call waits for a permit here (lets tests hold calls in flight).
    hold: Option<Arc<tokio::sync::Semaphore>>,
    /// The next call fails as if the runner died.
    die_on_next_call: AtomicBool,
}

#[async_trait]
impl Runner for FakeRunner {
    fn id(&self) -> &str {
        &self.id
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn call_stdio(&self, _call: StdioCall) -> Result<StdioOutcome, RunnerError> {
        Err(RunnerError::Server("no stdio servers in this fake".into()))
    }

    async fn run_command(&self, call: CommandCall) -> Result<CommandOutcome, RunnerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(hold) = &self.hold {
            hold.acquire().await.unwrap().forget();
        }
        if self.die_on_next_call.swap(false, Ordering::SeqCst) {
            self.alive.store(false, Ordering::SeqCst);
            return Err(RunnerError::Exited("killed".into()));
        }
        Ok(CommandOutcome {
            exit_code: Some(0),
            stdout: call.tool.into_bytes(),
            stderr_tail: String::new(),
            timed_out: false,
            runner_id: self.id.clone(),
        })
    }

    async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.alive.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct FakeBackend {
    starts: AtomicUsize,
    /// When set, starts wait until notified (to pile up concurrent first calls).
    start_gate: Option<Arc<Notify>>,
    hold: Option<Arc<tokio::sync::Semaphore>>,
    runners: Mutex<Vec<(PrincipalId, Arc<FakeRunner>)>>,
}

#[async_trait]
impl RunnerBackend for FakeBackend {
    async fn start(&self, principal: PrincipalId) -> Result<Arc<dyn Runner>, RunnerError> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.start_gate {
            gate.notified().await;
        }
        let runner = Arc::new(FakeRunner {
            id: format!("runner-{n}"),
            alive: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            hold: self.hold.clone(),
            die_on_next_call: AtomicBool::new(false),
        });
        self.runners
            .lock()
            .unwrap()
            .push((principal, runner.clone()));
        Ok(runner)
    }
}

impl FakeBackend {
    fn runner(&self, idx: usize) -> Arc<FakeRunner> {
        self.runners.lock().unwrap()[idx].1.clone()
    }
}

fn call(principal: PrincipalId) -> CommandCall {
    CommandCall {
        principal,
        package: Arc::new(ToolPackage {
            dir: "/tmp".into(),
            name: "echo".into(),
            version: "1".into(),
            description: String::new(),
            kind: PackageKind::Command,
            command: vec!["true".into()],
            env: Default::default(),
            source: None,
            timeout: Duration::from_secs(5),
            tools: vec![],
            egress: vec![],
        }),
        tool: "echo".into(),
        arguments: serde_json::json!({}),
        timeout: Duration::from_secs(5),
        call_id: "c".into(),
    }
}

fn pool(backend: &Arc<FakeBackend>, config: PoolConfig) -> Arc<RunnerPool> {
    Arc::new(RunnerPool::new(backend.clone(), config))
}

#[tokio::test]
async fn calls_of_one_principal_reuse_one_runner_and_principals_get_their_own() {
    let backend = Arc::new(FakeBackend::default());
    let pool = pool(&backend, PoolConfig::default());
    let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
    let first = pool.run_command(call(alice)).await.unwrap();
    let second = pool.run_command(call(alice)).await.unwrap();
    assert_eq!(first.runner_id, second.runner_id);
    assert_eq!(pool.stats().created.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().reused.load(Ordering::SeqCst), 1);
    let bobs = pool.run_command(call(bob)).await.unwrap();
    assert_ne!(bobs.runner_id, first.runner_id);
    assert_eq!(pool.list().len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_first_calls_start_exactly_one_runner() {
    let gate = Arc::new(Notify::new());
    let backend = Arc::new(FakeBackend {
        start_gate: Some(gate.clone()),
        ..Default::default()
    });
    let pool = pool(
        &backend,
        PoolConfig {
            max_concurrent: 16,
            ..Default::default()
        },
    );
    let alice = PrincipalId::new();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let pool = pool.clone();
                async move { pool.run_command(call(alice)).await }
            })
        })
        .collect();
    // On a single-threaded runtime every task runs until it waits: one in start, nine on it.
    while backend.starts.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap().runner_id);
    }
    assert_eq!(backend.starts.load(Ordering::SeqCst), 1);
    assert!(ids.iter().all(|id| id == "runner-0"));
}

#[tokio::test(start_paused = true)]
async fn idle_runners_are_reaped_and_restarted_on_demand() {
    let backend = Arc::new(FakeBackend::default());
    let pool = pool(
        &backend,
        PoolConfig {
            idle_timeout: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let alice = PrincipalId::new();
    pool.run_command(call(alice)).await.unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(pool.reap_idle().await, 0, "not idle long enough");
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(pool.reap_idle().await, 1);
    assert!(backend.runner(0).stopped.load(Ordering::SeqCst));
    let next = pool.run_command(call(alice)).await.unwrap();
    assert_eq!(next.runner_id, "runner-1");
    assert_eq!(pool.stats().reaped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_idle_runner_makes_room() {
    let backend = Arc::new(FakeBackend::default());
    let pool = pool(
        &backend,
        PoolConfig {
            max_runners: 2,
            ..Default::default()
        },
    );
    let (a, b, c) = (PrincipalId::new(), PrincipalId::new(), PrincipalId::new());
    pool.run_command(call(a)).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    pool.run_command(call(b)).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    pool.run_command(call(c)).await.unwrap();
    assert!(
        backend.runner(0).stopped.load(Ordering::SeqCst),
        "a was least recently used"
    );
    assert!(!backend.runner(1).stopped.load(Ordering::SeqCst));
    let principals: Vec<PrincipalId> = pool.list().into_iter().map(|i| i.principal_id).collect();
    assert!(principals.contains(&b) && principals.contains(&c) && !principals.contains(&a));
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_is_refused_with_a_clear_error() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let backend = Arc::new(FakeBackend {
        hold: Some(hold.clone()),
        ..Default::default()
    });
    let pool = pool(
        &backend,
        PoolConfig {
            max_concurrent: 1,
            max_queued: 1,
            ..Default::default()
        },
    );
    let alice = PrincipalId::new();
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run_command(call(alice)).await }
    });
    while backend.runners.lock().unwrap().is_empty()
        || backend.runner(0).calls.load(Ordering::SeqCst) == 0
    {
        tokio::task::yield_now().await;
    }
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.run_command(call(alice)).await }
    });
    while pool.list()[0].queued == 0 {
        tokio::task::yield_now().await;
    }
    let refused = pool.run_command(call(alice)).await;
    assert!(matches!(refused, Err(RunnerError::Busy)), "{refused:?}");
    assert!(RunnerError::Busy.to_string().contains("too many calls"));
    hold.add_permits(2);
    running.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dead_runner_is_replaced_on_the_next_call() {
    let backend = Arc::new(FakeBackend::default());
    let pool = pool(&backend, PoolConfig::default());
    let alice = PrincipalId::new();
    pool.run_command(call(alice)).await.unwrap();
    backend
        .runner(0)
        .die_on_next_call
        .store(true, Ordering::SeqCst);
    let failed = pool.run_command(call(alice)).await;
    assert!(matches!(failed, Err(RunnerError::Exited(_))));
    let next = pool.run_command(call(alice)).await.unwrap();
    assert_eq!(next.runner_id, "runner-1");

    // A runner found dead before a call is replaced too.
    backend.runner(1).alive.store(false, Ordering::SeqCst);
    let again = pool.run_command(call(alice)).await.unwrap();
    assert_eq!(again.runner_id, "runner-2");
    assert_eq!(pool.stats().crashed.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stop_and_stop_all() {
    let backend = Arc::new(FakeBackend::default());
    let pool = pool(&backend, PoolConfig::default());
    let (alice, bob) = (PrincipalId::new(), PrincipalId::new());
    pool.run_command(call(alice)).await.unwrap();
    pool.run_command(call(bob)).await.unwrap();
    assert!(pool.stop(alice).await);
    assert!(!pool.stop(alice).await);
    assert!(backend.runner(0).stopped.load(Ordering::SeqCst));
    pool.stop_all().await;
    assert!(backend.runner(1).stopped.load(Ordering::SeqCst));
    assert!(pool.list().is_empty());
}

#[tokio::test]
async fn renewed_runners_are_replaced_at_their_next_idle_call() {
    let backend = Arc::new(FakeBackend::default());
    let pool = pool(&backend, PoolConfig::default());
    let alice = PrincipalId::new();
    assert_eq!(
        pool.run_command(call(alice)).await.unwrap().runner_id,
        "runner-0"
    );
    pool.renew();
    assert_eq!(
        pool.run_command(call(alice)).await.unwrap().runner_id,
        "runner-1"
    );
    assert!(
        backend.runner(0).stopped.load(Ordering::SeqCst),
        "the outdated runner was stopped"
    );
    // Without another renew the new runner is kept.
    assert_eq!(
        pool.run_command(call(alice)).await.unwrap().runner_id,
        "runner-1"
    );
}
