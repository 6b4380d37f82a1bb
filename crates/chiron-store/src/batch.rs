//! Writing audit-like rows off the request path: callers hand rows to a [`BatchWriter`], a
//! background task collects them for up to [`LINGER`] after the first (or until
//! [`MAX_BATCH`]) and stores them in one call (one transaction), and [`BatchWriter::flush`]
//! waits until everything handed over so far is stored. Lingering makes a steady trickle of
//! calls cost one storage write per batch instead of one per row; the price is that a row
//! reaches storage up to [`LINGER`] later (shutdown flushes; a crash loses at most that).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

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
}

impl<T> Clone for BatchWriter<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
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
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut batch = Vec::new();
                let deadline = tokio::time::Instant::now() + LINGER;
                let mut next = Some(first);
                while let Some(message) = next.take() {
                    match message {
                        Message::Row(row) => batch.push(row),
                        Message::Flush(done) => waiting.push(done),
                    }
                    if batch.len() >= MAX_BATCH {
                        break;
                    }
                    next = match rx.try_recv() {
                        Ok(message) => Some(message),
                        // Someone waits for the rows: store them now.
                        Err(_) if !waiting.is_empty() => None,
                        Err(_) => tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten(),
                    };
                }
                if !batch.is_empty() {
                    let rows = batch.len();
                    if let Err(err) = write(batch).await {
                        tracing::error!(error = %err, rows, "could not record {what}");
                    }
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Self { tx }
    }

    /// Queues one row; false when the writer is gone.
    pub fn write(&self, row: T) -> bool {
        self.tx.send(Message::Row(row)).is_ok()
    }

    /// Waits until every row queued so far is stored (or its batch failed and was logged).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
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
}
