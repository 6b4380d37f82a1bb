//! Writing audit-like rows off the request path: callers hand rows to a [`BatchWriter`], a
//! background task stores whatever has queued up in one call (one transaction), and
//! [`BatchWriter::flush`] waits until everything handed over so far is stored.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::StoreError;

/// Rows stored in one call at most.
const MAX_BATCH: usize = 512;

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
                let mut next = Some(first);
                while let Some(message) = next.take() {
                    match message {
                        Message::Row(row) => batch.push(row),
                        Message::Flush(done) => waiting.push(done),
                    }
                    if batch.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
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
