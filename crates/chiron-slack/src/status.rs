//! What `chiron slack status` shows, kept by the serving gateway in
//! `<data_dir>/slack-status.json`: transport, workspaces, connection state, last event.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The bot's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackStatus {
    /// `events` or `socket`.
    pub transport: String,
    /// Workspaces served.
    pub workspaces: Vec<String>,
    /// `serving` (Events API), `connected`, `connecting`, or `disconnected`.
    pub connection: String,
    /// When the last event arrived (RFC 3339).
    pub last_event: Option<String>,
}

/// The status, written to its file on every change.
#[derive(Clone)]
pub struct StatusFile {
    path: PathBuf,
    status: Arc<Mutex<SlackStatus>>,
}

impl StatusFile {
    /// A status file at `path`, written now.
    pub fn new(path: PathBuf, status: SlackStatus) -> Self {
        let file = Self {
            path,
            status: Arc::new(Mutex::new(status)),
        };
        file.write();
        file
    }

    fn write(&self) {
        let status = self.status.lock().expect("invariant: status lock").clone();
        if let Ok(text) = serde_json::to_string_pretty(&status) {
            let _ = std::fs::write(&self.path, text);
        }
    }

    /// Records an event's arrival.
    pub fn event(&self) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.status
            .lock()
            .expect("invariant: status lock")
            .last_event = Some(now);
        self.write();
    }

    /// Records the connection state.
    pub fn connection(&self, state: &str) {
        self.status
            .lock()
            .expect("invariant: status lock")
            .connection = state.to_owned();
        self.write();
    }

    /// Reads a status file.
    pub fn read(path: &std::path::Path) -> Option<SlackStatus> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }
}
