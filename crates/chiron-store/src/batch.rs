//! Writing audit-like rows off the request path: callers hand rows to a [`BatchWriter`], a
//! background task collects them for up to [`LINGER`] after the first (or until
//! [`MAX_BATCH`]) and stores them in one call (one transaction), and [`BatchWriter::flush`]
//! waits until everything handed over so far is stored. Lingering makes a steady trickle of
//! calls cost one storage write per batch instead of one per row; the price is that a row
//! reaches storage up to [`LINGER`] later (shutdown flushes; a crash loses at most that).
//!
//! A batch that storage refuses is kept and tried again, with a growing pause, for up to
//! [`RETRY_FOR`]: a database restarting or failing over loses no rows. Rows that arrive
//! meanwhile wait in the queue. Only a batch still refused after that is dropped (and logged
//! with its size); until a write succeeds again, later batches are tried once each, so that a
//! database that stays down cannot hold shutdown for [`RETRY_FOR`] per batch. At most
//! [`MAX_QUEUED`] rows wait: past that (storage down under heavy traffic) new rows are dropped
//! rather than memory growing without end. Every dropped row is counted
//! ([`BatchWriter::dropped`], exported as a metric) and logged.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::StoreError;

/// Rows stored in one call at most.
pub const MAX_BATCH: usize = 512;

/// How long the writer waits for more rows after the first of a batch.
pub const LINGER: Duration = Duration::from_millis(50);

/// Rows waiting for the writer at most (about 300 bytes each).
pub const MAX_QUEUED: usize = 200_000;

/// How long a refused batch is tried again before it is dropped.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// The first pause before a refused batch is tried again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

enum Message<T> {
    Row(T),
    Flush(oneshot::Sender<()>),
}

/// Hands rows to a background writer. Cheap to clone.
pub struct BatchWriter<T> {
    tx: mpsc::UnboundedSender<Message<T>>,
    flush_now: Arc<Notify>,
    counts: Arc<Counts>,
}

impl<T> Clone for BatchWriter<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            flush_now: self.flush_now.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// What the writer and its handles share.
struct Counts {
    /// What the rows are, for the log.
    what: &'static str,
    /// Rows handed over and not yet taken by the writer.
    queued: AtomicUsize,
    /// At most this many.
    limit: usize,
    /// Rows dropped since the start: the queue was full, or storage refused them for good.
    dropped: AtomicU64,
    /// Whether the queue is full (logged once each time it fills).
    full: AtomicBool,
}

impl<T: Send + Sync + 'static> BatchWriter<T> {
    /// Starts the writer task (needs a Tokio runtime); `write` stores one batch (all or
    /// nothing: it may be called again with the same rows), and `what` names the rows in the
    /// log when it fails. The task ends when every handle is gone.
    pub fn start<F, Fut>(what: &'static str, write: F) -> Self
    where
        F: Fn(Arc<Vec<T>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send,
    {
        Self::with_limit(what, MAX_QUEUED, write)
    }

    /// [`BatchWriter::start`] with at most `limit` rows waiting.
    fn with_limit<F, Fut>(what: &'static str, limit: usize, write: F) -> Self
    where
        F: Fn(Arc<Vec<T>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message<T>>();
        let flush_now = Arc::new(Notify::new());
        let flushes = flush_now.clone();
        let counts = Arc::new(Counts {
            what,
            queued: AtomicUsize::new(0),
            limit,
            dropped: AtomicU64::new(0),
            full: AtomicBool::new(false),
        });
        let shared = counts.clone();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            let mut batch = Vec::new();
            // Whether the last batch was dropped: storage is down, so no long retries.
            let mut failing = false;
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                let mut lingered = false;
                loop {
                    while let Some(message) = next.take() {
                        match message {
                            Message::Row(row) => {
                                shared.queued.fetch_sub(1, Ordering::Relaxed);
                                batch.push(row);
                            }
                            Message::Flush(done) => waiting.push(done),
                        }
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if lingered || batch.len() >= MAX_BATCH || !waiting.is_empty() {
                        break;
                    }
                    // Linger without polling the channel, so rows queued meanwhile wake
                    // nobody (a wake-up of this task from a request's thread cost more than
                    // the row); a flush cuts the wait short.
                    tokio::select! {
                        () = tokio::time::sleep(LINGER) => {}
                        () = flushes.notified() => {}
                    }
                    lingered = true;
                    next = rx.try_recv().ok();
                }
                if !batch.is_empty() {
                    let rows = Arc::new(std::mem::take(&mut batch));
                    let retry_for = if failing { Duration::ZERO } else { RETRY_FOR };
                    let count = rows.len() as u64;
                    failing = !store_with_retries(what, &write, rows, retry_for).await;
                    if failing {
                        shared.dropped.fetch_add(count, Ordering::Relaxed);
                    }
                }
                if shared.queued.load(Ordering::Relaxed) < shared.limit {
                    shared.full.store(false, Ordering::Relaxed);
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Self {
            tx,
            flush_now,
            counts,
        }
    }

    /// Queues one row; false when it was dropped: the queue is full, or the writer is gone.
    pub fn write(&self, row: T) -> bool {
        let counts = &*self.counts;
        if counts.queued.fetch_add(1, Ordering::Relaxed) >= counts.limit {
            counts.queued.fetch_sub(1, Ordering::Relaxed);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            if !counts.full.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    limit = counts.limit,
                    "could not record {}: {} rows wait for storage already, new ones are dropped",
                    counts.what,
                    counts.limit
                );
            }
            return false;
        }
        if self.tx.send(Message::Row(row)).is_ok() {
            return true;
        }
        counts.queued.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Rows dropped since the writer started (see the module documentation).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every row queued so far is stored (or its batch failed and was logged).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            self.flush_now.notify_one();
            let _ = wait.await;
        }
    }
}

/// Stores `rows` with `write`, trying again after a growing pause while storage refuses them,
/// for up to `retry_for`; false when they were dropped.
async fn store_with_retries<T, F, Fut>(
    what: &str,
    write: &F,
    rows: Arc<Vec<T>>,
    retry_for: Duration,
) -> bool
where
    F: Fn(Arc<Vec<T>>) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut pause = FIRST_PAUSE;
    loop {
        let err = match write(rows.clone()).await {
            Ok(()) => return true,
            Err(err) => err,
        };
        let now = tokio::time::Instant::now();
        if now + pause > deadline {
            tracing::error!(error = %err, rows = rows.len(), "could not record {what}: dropped");
            return false;
        }
        tracing::warn!(
            error = %err,
            rows = rows.len(),
            "could not record {what}: trying again in {} ms",
            pause.as_millis()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::BatchWriter;

    #[tokio::test]
    async fn queued_rows_are_stored_together_and_flush_does_not_linger() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let writer = BatchWriter::start("numbers", move |rows| {
            seen.lock().unwrap().push(rows.to_vec());
            async { Ok(()) }
        });
        for row in 1..=3 {
            assert!(writer.write(row));
        }
        writer.flush().await;
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3]]);
        writer.write(4);
        writer.flush().await;
        assert_eq!(batches.lock().unwrap().last(), Some(&vec![4]));
    }

    #[tokio::test(start_paused = true)]
    async fn rows_queued_while_lingering_join_the_batch() {
        let (stored, first_batch) = tokio::sync::oneshot::channel::<Vec<u32>>();
        let stored = Arc::new(Mutex::new(Some(stored)));
        let writer = BatchWriter::start("numbers", move |rows| {
            if let Some(stored) = stored.lock().unwrap().take() {
                let _ = stored.send(rows.to_vec());
            }
            async { Ok(()) }
        });
        writer.write(1);
        // Let the writer take the first row and start lingering.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        writer.write(2);
        // The paused clock jumps to the end of the linger once every task waits.
        assert_eq!(first_batch.await.unwrap(), vec![1, 2]);
    }

    /// A storage stand-in that refuses a write while `down` and keeps what it stored.
    #[derive(Clone, Default)]
    struct Flaky {
        stored: Arc<Mutex<Vec<Vec<u32>>>>,
        attempts: Arc<AtomicUsize>,
        down: Arc<AtomicBool>,
    }

    impl Flaky {
        fn down() -> Self {
            let flaky = Self::default();
            flaky.down.store(true, Ordering::SeqCst);
            flaky
        }

        fn write(&self, rows: &[u32]) -> std::future::Ready<Result<(), crate::StoreError>> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if self.down.load(Ordering::SeqCst) {
                Err(crate::StoreError::NotFound("database"))
            } else {
                self.stored.lock().unwrap().push(rows.to_vec());
                Ok(())
            })
        }

        fn attempts(&self) -> usize {
            self.attempts.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_tried_again_and_stored_once_storage_is_back() {
        let storage = Flaky::down();
        // Storage comes back at the writer's fourth try.
        let store = storage.clone();
        let writer = BatchWriter::start("numbers", move |rows| {
            if store.attempts() == 3 {
                store.down.store(false, Ordering::SeqCst);
            }
            store.write(&rows)
        });
        for row in 1..=3 {
            writer.write(row);
        }
        writer.flush().await;
        assert_eq!(*storage.stored.lock().unwrap(), vec![vec![1, 2, 3]]);
        assert_eq!(storage.attempts(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn storage_that_stays_down_costs_one_retry_period_not_one_per_batch() {
        let storage = Flaky::down();
        let store = storage.clone();
        let writer = BatchWriter::start("numbers", move |rows| store.write(&rows));
        writer.write(1);
        let started = tokio::time::Instant::now();
        writer.flush().await;
        // Tried again and again for the retry period, then dropped.
        assert!(started.elapsed() >= super::RETRY_FOR - super::MAX_PAUSE);
        assert!(storage.attempts() > 2);
        assert_eq!(writer.dropped(), 1);
        // The next batch, with storage still down, is tried once.
        let before = storage.attempts();
        writer.write(2);
        writer.flush().await;
        assert_eq!(storage.attempts(), before + 1);
        // Once storage is back, rows are stored, and a later refusal is retried again.
        storage.down.store(false, Ordering::SeqCst);
        writer.write(3);
        writer.flush().await;
        assert_eq!(*storage.stored.lock().unwrap(), vec![vec![3]]);
        storage.down.store(true, Ordering::SeqCst);
        let before = storage.attempts();
        writer.write(4);
        writer.flush().await;
        assert!(storage.attempts() > before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_new_rows_and_counts_them() {
        let storage = Flaky::default();
        let store = storage.clone();
        let writer = BatchWriter::with_limit("numbers", 3, move |rows| store.write(&rows));
        // Nothing yields in between: the writer has not taken any row yet.
        let queued: Vec<bool> = (1..=5).map(|row| writer.write(row)).collect();
        assert_eq!(queued, [true, true, true, false, false]);
        assert_eq!(writer.dropped(), 2);
        writer.flush().await;
        assert_eq!(*storage.stored.lock().unwrap(), vec![vec![1, 2, 3]]);
        // Taken by the writer, the rows left room for more.
        assert!(writer.write(6));
        writer.flush().await;
        assert_eq!(storage.stored.lock().unwrap().last(), Some(&vec![6]));
        assert_eq!(writer.dropped(), 2);
    }
}
