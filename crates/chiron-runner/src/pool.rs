//! The runner pool: one persistent runner per principal. The first call for a principal starts
//! its runner (exactly once, however many calls arrive together); later calls reuse it; a
//! runner idle for `idle_timeout` is stopped; at most `max_runners` live at once, the least
//! recently used idle runner making room; each runner takes at most `max_concurrent` calls at a
//! time with a bounded queue behind them; a runner that dies is replaced on the next call.
//!
//! How a runner is started and how it runs a call is the [`RunnerBackend`]'s business (the
//! local namespace sandbox, Kubernetes pods); the pool only manages their lifecycle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use chiron_core::PrincipalId;

use crate::tool::{CommandCall, CommandOutcome, RunnerError, StdioCall, StdioOutcome, ToolRunner};

/// A running sandbox for one principal.
#[async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Stable id, for logs, audit rows and `chiron runner list`.
    fn id(&self) -> &str;
    /// Whether the runner is still usable.
    fn is_alive(&self) -> bool;
    /// Runs one `command` tool call inside the runner.
    async fn run_command(&self, call: CommandCall) -> Result<CommandOutcome, RunnerError>;
    /// Calls a tool of the package's `mcp-stdio` server, starting the server if it is not
    /// running.
    async fn call_stdio(&self, call: StdioCall) -> Result<StdioOutcome, RunnerError>;
    /// Stops the runner and everything in it.
    async fn stop(&self);
}

/// Starts runners.
#[async_trait]
pub trait RunnerBackend: Send + Sync + 'static {
    /// Starts a runner for `principal`.
    async fn start(&self, principal: PrincipalId) -> Result<Arc<dyn Runner>, RunnerError>;
}

/// Pool limits.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// A runner unused this long is stopped.
    pub idle_timeout: Duration,
    /// Live runners on this node at most.
    pub max_runners: usize,
    /// Calls running at once in one runner.
    pub max_concurrent: usize,
    /// Calls waiting for a slot in one runner before new ones are refused.
    pub max_queued: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(15 * 60),
            max_runners: 64,
            max_concurrent: 4,
            max_queued: 16,
        }
    }
}

/// One principal's slot. The runner is started at most once per slot; a dead runner's slot is
/// replaced, not restarted.
struct Slot {
    /// The pool generation this slot was created in (see [`RunnerPool::renew`]).
    generation: u64,
    runner: OnceCell<Arc<dyn Runner>>,
    /// Bounds concurrent calls; its permits are held across each call.
    permits: Semaphore,
    /// Calls waiting for a permit.
    queued: AtomicUsize,
    /// Calls holding a permit.
    running: AtomicUsize,
    /// Last time a call started or finished.
    last_used: Mutex<Instant>,
}

impl Slot {
    fn new(max_concurrent: usize, generation: u64) -> Self {
        Self {
            generation,
            runner: OnceCell::new(),
            permits: Semaphore::new(max_concurrent),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self
            .last_used
            .lock()
            .expect("invariant: slot lock is never poisoned") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .expect("invariant: slot lock is never poisoned")
            .elapsed()
    }

    fn busy(&self) -> bool {
        self.queued.load(Ordering::SeqCst) + self.running.load(Ordering::SeqCst) > 0
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Runners started.
    pub created: AtomicU64,
    /// Calls served by an already running runner.
    pub reused: AtomicU64,
    /// Runners stopped for idleness or to make room.
    pub reaped: AtomicU64,
    /// Runners found dead.
    pub crashed: AtomicU64,
    /// Durations (seconds) of calls finished since the last [`PoolStats::take_call_seconds`]
    /// (bounded; the metrics scrape drains them into a histogram).
    call_seconds: Mutex<Vec<f64>>,
}

/// Call durations kept between two metric scrapes at most.
const MAX_PENDING_DURATIONS: usize = 100_000;

impl PoolStats {
    fn record_call(&self, seconds: f64) {
        let mut pending = self.call_seconds.lock().expect("invariant: durations lock");
        if pending.len() < MAX_PENDING_DURATIONS {
            pending.push(seconds);
        }
    }

    /// The durations of calls finished since the last time, in seconds.
    pub fn take_call_seconds(&self) -> Vec<f64> {
        std::mem::take(&mut *self.call_seconds.lock().expect("invariant: durations lock"))
    }
}

/// What `chiron runner list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerInfo {
    /// Whose runner.
    pub principal_id: PrincipalId,
    /// The runner's id (empty while starting).
    pub runner_id: String,
    /// Calls running.
    pub running: usize,
    /// Calls waiting.
    pub queued: usize,
    /// Seconds since last use.
    pub idle_secs: u64,
}

/// Runners removed from the pool that still need stopping.
type Evicted = Vec<Arc<dyn Runner>>;

/// The pool. Cheap to share behind an `Arc`.
pub struct RunnerPool {
    backend: Arc<dyn RunnerBackend>,
    config: PoolConfig,
    /// Slots by principal. Held only for map operations, never across an await.
    slots: Mutex<HashMap<PrincipalId, Arc<Slot>>>,
    stats: PoolStats,
    /// Bumped by [`RunnerPool::renew`]; older idle runners are replaced on their next call.
    generation: AtomicU64,
}

impl RunnerPool {
    /// A pool over `backend`.
    pub fn new(backend: Arc<dyn RunnerBackend>, config: PoolConfig) -> Self {
        Self {
            backend,
            config,
            slots: Mutex::new(HashMap::new()),
            stats: PoolStats::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PrincipalId, Arc<Slot>>> {
        self.slots
            .lock()
            .expect("invariant: pool lock is never poisoned")
    }

    /// The principal's slot, creating it (and making room under `max_runners`) if needed; also
    /// returns runners evicted to make room, for the caller to stop outside the lock.
    fn slot(&self, principal: PrincipalId) -> Result<(Arc<Slot>, Evicted), RunnerError> {
        let mut slots = self.lock();
        let generation = self.generation.load(Ordering::SeqCst);
        let mut evicted = Vec::new();
        if let Some(slot) = slots.get(&principal) {
            if slot.generation == generation || slot.busy() {
                return Ok((slot.clone(), Vec::new()));
            }
            // Started before the last renew and idle now: replace it.
            if let Some(slot) = slots.remove(&principal) {
                evicted.extend(slot.runner.get().cloned());
            }
        }
        if slots.len() >= self.config.max_runners {
            let victim = slots
                .iter()
                .filter(|(_, slot)| !slot.busy())
                .max_by_key(|(_, slot)| slot.idle_for())
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Err(RunnerError::Start(format!(
                    "all {} runners on this node are busy",
                    self.config.max_runners
                )));
            };
            if let Some(slot) = slots.remove(&victim) {
                if let Some(runner) = slot.runner.get() {
                    tracing::info!(principal_id = %victim, runner = runner.id(), "persistent_tool_runner_reaped");
                    evicted.push(runner.clone());
                }
                self.stats.reaped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let slot = Arc::new(Slot::new(self.config.max_concurrent, generation));
        slots.insert(principal, slot.clone());
        Ok((slot, evicted))
    }

    /// Forgets `slot` if it is still the principal's current one.
    fn forget(&self, principal: PrincipalId, slot: &Arc<Slot>) {
        let mut slots = self.lock();
        if slots
            .get(&principal)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            slots.remove(&principal);
        }
    }

    /// The principal's live runner, starting one if needed (single-flight).
    async fn runner(
        &self,
        principal: PrincipalId,
    ) -> Result<(Arc<Slot>, Arc<dyn Runner>), RunnerError> {
        for _ in 0..2 {
            let (slot, evicted) = self.slot(principal)?;
            for runner in evicted {
                runner.stop().await;
            }
            let mut started_now = false;
            let runner = slot
                .runner
                .get_or_try_init(|| async {
                    started_now = true;
                    let runner = self.backend.start(principal).await?;
                    self.stats.created.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(principal_id = %principal, runner = runner.id(), "persistent_tool_runner_created");
                    Ok::<_, RunnerError>(runner)
                })
                .await;
            let runner = match runner {
                Ok(runner) => runner.clone(),
                Err(err) => {
                    self.forget(principal, &slot);
                    return Err(err);
                }
            };
            if runner.is_alive() {
                if !started_now {
                    self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(principal_id = %principal, runner = runner.id(), "persistent_tool_runner_reused");
                }
                return Ok((slot, runner));
            }
            self.stats.crashed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(principal_id = %principal, runner = runner.id(), "persistent_tool_runner_crashed");
            self.forget(principal, &slot);
        }
        Err(RunnerError::Start(
            "the runner died right after starting".into(),
        ))
    }

    /// Marks every current runner as outdated (after tool packages were reloaded): each is
    /// replaced by a fresh one at its next call that finds it idle.
    pub fn renew(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops runners idle for longer than `idle_timeout`; returns how many.
    pub async fn reap_idle(&self) -> usize {
        let idle: Vec<(PrincipalId, Arc<Slot>)> = {
            let mut slots = self.lock();
            let ids: Vec<PrincipalId> = slots
                .iter()
                .filter(|(_, slot)| !slot.busy() && slot.idle_for() >= self.config.idle_timeout)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| slots.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (principal, slot) in &idle {
            if let Some(runner) = slot.runner.get() {
                tracing::info!(principal_id = %principal, runner = runner.id(), "persistent_tool_runner_reaped");
                runner.stop().await;
            }
            self.stats.reaped.fetch_add(1, Ordering::Relaxed);
        }
        idle.len()
    }

    /// Reaps idle runners periodically until `shutdown`, then stops every runner.
    pub fn spawn_reaper(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        let period = (self.config.idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => { pool.reap_idle().await; }
                    () = shutdown.cancelled() => break,
                }
            }
            pool.stop_all().await;
        })
    }

    /// Stops one principal's runner; returns whether there was one.
    pub async fn stop(&self, principal: PrincipalId) -> bool {
        let slot = self.lock().remove(&principal);
        match slot.as_ref().and_then(|s| s.runner.get()) {
            Some(runner) => {
                runner.stop().await;
                true
            }
            None => slot.is_some(),
        }
    }

    /// Stops every runner (gateway shutdown).
    pub async fn stop_all(&self) {
        let slots: Vec<Arc<Slot>> = self.lock().drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            if let Some(runner) = slot.runner.get() {
                runner.stop().await;
            }
        }
    }

    /// The live runners.
    pub fn list(&self) -> Vec<RunnerInfo> {
        let slots = self.lock();
        let mut list: Vec<RunnerInfo> = slots
            .iter()
            .map(|(principal, slot)| RunnerInfo {
                principal_id: *principal,
                runner_id: slot
                    .runner
                    .get()
                    .map(|r| r.id().to_owned())
                    .unwrap_or_default(),
                running: slot.running.load(Ordering::SeqCst),
                queued: slot.queued.load(Ordering::SeqCst),
                idle_secs: slot.idle_for().as_secs(),
            })
            .collect();
        list.sort_by_key(|info| info.principal_id);
        list
    }
}

impl RunnerPool {
    /// Runs `work` in the principal's runner under the runner's concurrency limit, replacing
    /// the runner if it died.
    async fn with_runner<T, F, Fut>(
        &self,
        principal: PrincipalId,
        work: F,
    ) -> Result<T, RunnerError>
    where
        F: FnOnce(Arc<dyn Runner>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RunnerError>>,
    {
        let (slot, runner) = self.runner(principal).await?;
        // Invariant: `queued` counts callers between this check and acquiring a permit.
        if slot.queued.fetch_add(1, Ordering::SeqCst) >= self.config.max_queued
            && slot.permits.available_permits() == 0
        {
            slot.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(RunnerError::Busy);
        }
        let permit = slot.permits.acquire().await;
        slot.queued.fetch_sub(1, Ordering::SeqCst);
        let Ok(_permit) = permit else {
            return Err(RunnerError::Exited("runner stopped".into()));
        };
        slot.running.fetch_add(1, Ordering::SeqCst);
        slot.touch();
        let started = Instant::now();
        let result = work(runner.clone()).await;
        self.stats.record_call(started.elapsed().as_secs_f64());
        slot.running.fetch_sub(1, Ordering::SeqCst);
        slot.touch();
        if matches!(result, Err(RunnerError::Exited(_))) || !runner.is_alive() {
            self.stats.crashed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(principal_id = %principal, runner = runner.id(), "persistent_tool_runner_crashed");
            self.forget(principal, &slot);
        }
        result
    }
}

#[async_trait]
impl ToolRunner for RunnerPool {
    async fn run_command(&self, call: CommandCall) -> Result<CommandOutcome, RunnerError> {
        self.with_runner(call.principal, |runner| async move {
            runner.run_command(call).await
        })
        .await
    }

    async fn call_stdio(&self, call: StdioCall) -> Result<StdioOutcome, RunnerError> {
        self.with_runner(call.principal, |runner| async move {
            runner.call_stdio(call).await
        })
        .await
    }
}
