//! Writing audit-like rows off the request path: callers hand rows to a [`BatchWriter`], a
//! background task collects them for up to [`LINGER`] after the first (or until
//! [`MAX_BATCH`]) and stores them in one call (one transaction), and [`BatchWriter::flush`]
//! waits until everything handed over so far is stored. Lingering makes a steady trickle of
//! calls cost one storage write per batch instead of one per row; the price is that a row
//! reaches storage up to [`LINGER`] later (shutdown flushes; a crash loses at most that).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::StoreError;

/// Rows stored in one call at most.
pub const MAX_BATCH: usize = 512;

/// How long the writer waits for more rows after the first of a batch.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(50);

enum Message<T> {
    Row(T),
    Flush(oneshot::Sender<()>),
}

/// Hands rows to a background writer. Cheap to clone.
pub struct BatchWriter<T> {
    tx: mpsc::UnboundedSender<Message<T>>,
    flush_now: Arc<Notify>,
}

impl<T> Clone for BatchWriter<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            flush_now: self.flush_now.clone(),
        }
    }
}

impl<T: Send + 'static> BatchWriter<T> {
    /// Starts the writer task (needs a Tokio runtime); `write` stores one batch, and `what`
    /// names the rows in the error log when it fails. The task ends when every handle is gone.
    pub fn start<F, Fut>(what: &'static str, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message<T>>();
        let flush_now = Arc::new(Notify::new());
        let flushes = flush_now.clone();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                let mut lingered = false;
                loop {
                    while let Some(message) = next.take() {
                        match message {
                            Message::Row(row) => batch.push(row),
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
                    let rows = batch.len();
                    if let Err(err) = write(std::mem::take(&mut batch)).await {
                        tracing::error!(error = %err, rows, "could not record {what}");
                    }
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Self { tx, flush_now }
    }

    /// Queues one row; false when the writer is gone.
    pub fn write(&self, row: T) -> bool {
        self.tx.send(Message::Row(row)).is_ok()
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::BatchWriter;

    #[tokio::test]
    async fn queued_rows_are_stored_together_and_flush_does_not_linger() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let writer = BatchWriter::start("numbers", move |rows| {
            seen.lock().unwrap().push(rows);
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
                let _ = stored.send(rows);
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
}
