//! The runner side of egress: every runner has a proxy listener on `127.0.0.1:3128` inside its
//! own network namespace (its only way out), and every tool process it starts gets its own
//! proxy credential. A connection on a runner's listener identifies the principal; the
//! credential in `Proxy-Authorization` identifies the package and the call. What is done with
//! the request is the [`EgressHook`]'s business (the egress proxy); without one, every request
//! is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::distributions::{Alphanumeric, DistString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use chiron_core::PrincipalId;

/// Who a proxy credential was given to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The package whose process holds the credential.
    pub package: String,
    /// The MCP call it serves; `None` for a long-lived `mcp-stdio` server.
    pub call_id: Option<String>,
}

/// The live proxy credentials of one runner's processes.
#[derive(Debug, Default)]
pub struct Credentials {
    live: Mutex<HashMap<String, ProcessIdentity>>,
}

impl Credentials {
    /// Issues a fresh credential for one process; it is valid until the guard is dropped.
    pub fn issue(self: &Arc<Self>, identity: ProcessIdentity) -> CredentialGuard {
        // The thread's CSPRNG (ChaCha, seeded from the OS): one getrandom call per character
        // with OsRng was a measurable share of a call's cost.
        let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
        self.live
            .lock()
            .expect("invariant: credentials lock")
            .insert(secret.clone(), identity);
        CredentialGuard {
            table: self.clone(),
            secret,
        }
    }

    /// The process a credential belongs to, if it is live on this runner.
    pub fn lookup(&self, secret: &str) -> Option<ProcessIdentity> {
        self.live
            .lock()
            .expect("invariant: credentials lock")
            .get(secret)
            .cloned()
    }

    /// How many credentials are live.
    pub fn len(&self) -> usize {
        self.live.lock().expect("invariant: credentials lock").len()
    }

    /// Whether none are live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a credential valid; revokes it when dropped.
#[derive(Debug)]
pub struct CredentialGuard {
    table: Arc<Credentials>,
    secret: String,
}

impl CredentialGuard {
    /// The proxy URL a process uses: `http://chiron:<credential>@127.0.0.1:3128`.
    pub fn proxy_url(&self) -> String {
        format!("http://chiron:{}@{}", self.secret, crate::agent::PROXY_ADDR)
    }
}

impl Drop for CredentialGuard {
    fn drop(&mut self) {
        self.table
            .live
            .lock()
            .expect("invariant: credentials lock")
            .remove(&self.secret);
    }
}

/// What the egress proxy knows about the runner behind a listener.
#[derive(Debug)]
pub struct RunnerEgress {
    /// The runner's id.
    pub runner_id: String,
    /// Whose runner it is.
    pub principal: PrincipalId,
    /// Its processes' credentials.
    pub credentials: Arc<Credentials>,
}

/// Serves the proxy listener of each runner.
pub trait EgressHook: Send + Sync + 'static {
    /// Serves `listener` for `runner` until `stop` is cancelled.
    fn serve(&self, runner: Arc<RunnerEgress>, listener: TcpListener, stop: CancellationToken);

    /// `principal`'s runner has stopped: whatever was kept for it (opened secret values) can
    /// go. Its next runner's requests load it again.
    fn stopped(&self, _principal: PrincipalId) {}
}

/// The hook used when no egress proxy is configured: every request is refused with
/// `403` and a `Proxy-Status` naming the reason.
#[derive(Debug, Default)]
pub struct DenyEgress;

impl EgressHook for DenyEgress {
    fn serve(&self, runner: Arc<RunnerEgress>, listener: TcpListener, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => break,
                };
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                let runner_id = runner.runner_id.clone();
                tokio::spawn(async move {
                    // Read the request head (bounded), then refuse.
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 2048];
                    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    tracing::debug!(runner = %runner_id, "egress refused: no egress proxy configured");
                    let body = "egress is not enabled on this chiron gateway\n";
                    let response = format!(
                        "HTTP/1.1 403 Forbidden\r\nProxy-Status: chiron; error=destination_not_allowed; details=\"egress disabled\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_live_exactly_as_long_as_their_guard() {
        let table = Arc::new(Credentials::default());
        let identity = ProcessIdentity {
            package: "github".into(),
            call_id: Some("c1".into()),
        };
        let guard = table.issue(identity.clone());
        let url = guard.proxy_url();
        let secret = url
            .strip_prefix("http://chiron:")
            .and_then(|rest| rest.split_once('@'))
            .map(|(secret, _)| secret.to_owned())
            .expect("credential in url");
        assert_eq!(secret.len(), 32);
        assert_eq!(table.lookup(&secret), Some(identity));
        assert_eq!(table.lookup("guess"), None);
        drop(guard);
        assert_eq!(table.lookup(&secret), None);
        assert!(table.is_empty());
    }
}
