//! Wiring of the egress side: the secret store (sealed with the master key), chiron's CA and
//! the CA bundle mounted into sandboxes, and the proxy that serves every runner's listener.

use std::path::PathBuf;
use std::sync::Arc;

use chiron_core::Config;
use chiron_egress::ca::{ca_dir, CertificateAuthority};
use chiron_egress::proxy::parse_network;
use chiron_egress::{EgressProxy, EgressSettings, Secrets};
use chiron_store::Store;

/// The master key file in force.
pub fn master_key_file(config: &Config) -> PathBuf {
    config
        .egress
        .master_key_file
        .clone()
        .unwrap_or_else(|| config.server.data_dir.join("master.key"))
}

/// The file every process on this host appends to after changing a secret (see
/// [`Secrets::with_change_marker`]).
pub fn secrets_marker(config: &Config) -> PathBuf {
    std::fs::canonicalize(&config.server.data_dir)
        .unwrap_or_else(|_| config.server.data_dir.clone())
        .join("secrets.changed")
}

/// The secret store for `config`.
pub fn secrets(config: &Config, store: Store) -> Arc<Secrets> {
    Arc::new(
        Secrets::new(store, master_key_file(config)).with_change_marker(secrets_marker(config)),
    )
}

/// On PostgreSQL, follows change notifications from other replicas until `stop`, so values
/// kept in memory are dropped when another host changes one. (On SQLite every writer shares
/// this host and its marker file.)
pub fn follow_secret_changes(
    config: &Config,
    secrets: Arc<Secrets>,
    stop: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if chiron_store::Backend::from_url(&config.database.url).ok()?
        != chiron_store::Backend::Postgres
    {
        return None;
    }
    let url = config.database.url.clone();
    Some(tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let listened = tokio::select! {
                listened = chiron_store::secrets::SecretChanges::listen(&url) => listened,
                () = stop.cancelled() => return,
            };
            let mut changes = match listened {
                Ok(changes) => changes,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for secret changes; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                    continue;
                }
            };
            backoff = std::time::Duration::from_millis(100);
            // Whatever happened before listening is unknown.
            secrets.changed_elsewhere();
            loop {
                let next = tokio::select! {
                    next = changes.next() => next,
                    () = stop.cancelled() => return,
                };
                // A notification, a lost connection (changes may have been missed) or an
                // error: in every case the cached values may be stale.
                secrets.changed_elsewhere();
                if let Err(err) = next {
                    tracing::warn!(error = %err, "secret change notifications interrupted");
                    break;
                }
            }
        }
    }))
}

/// The egress proxy and what runners need from it.
pub struct Egress {
    /// Serves runners' listeners.
    pub proxy: Arc<EgressProxy>,
    /// The secret store (also used to scrub tool output).
    pub secrets: Arc<Secrets>,
    /// The CA bundle to mount into sandboxes.
    pub ca_bundle: PathBuf,
}

/// Builds the egress proxy: creates the CA on first use, writes the sandbox CA bundle, loads
/// the settings. Secrets that cannot be opened (no or wrong master key) do not stop the
/// gateway: the proxy then refuses every request and says why.
pub fn egress(config: &Config, store: Store) -> Result<Egress, String> {
    let data_dir = std::fs::canonicalize(&config.server.data_dir)
        .unwrap_or_else(|_| config.server.data_dir.clone());
    let dir = ca_dir(&data_dir);
    let ca = Arc::new(CertificateAuthority::load_or_create(&dir)?);
    let ca_bundle = dir.join("ca-bundle.pem");
    ca.write_bundle(&ca_bundle)?;
    let mut settings = EgressSettings::default();
    for network in &config.egress.allowed_networks {
        settings
            .allowed_networks
            .push(parse_network(network).map_err(|e| format!("egress.allowed_networks: {e}"))?);
    }
    settings.resolve = config.egress.resolve.clone().into_iter().collect();
    if let Some(path) = &config.egress.extra_ca {
        let pem =
            std::fs::read(path).map_err(|e| format!("egress.extra_ca {}: {e}", path.display()))?;
        for cert in pem_certs(&pem) {
            settings.extra_ca.push(cert);
        }
    }
    let secrets = secrets(config, store.clone());
    if let Err(err) = secrets.status() {
        tracing::warn!(error = %err, "secrets are unavailable; egress requests get no secrets and are refused");
    }
    let proxy = Arc::new(EgressProxy::new(store, secrets.clone(), ca, settings)?);
    Ok(Egress {
        proxy,
        secrets,
        ca_bundle,
    })
}

/// The certificates in a PEM file.
fn pem_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Scrubs the principal's secret values from tool results.
pub struct SecretScrubber(pub Arc<Secrets>);

#[async_trait::async_trait]
impl chiron_mcp::OutputScrubber for SecretScrubber {
    async fn scrub(
        &self,
        principal: chiron_core::PrincipalId,
        result: rmcp::model::CallToolResult,
    ) -> rmcp::model::CallToolResult {
        // Only values this gateway's proxy opened can have reached a tool; without any, there
        // is nothing to scrub.
        let Some(patterns) = self.0.opened_patterns(principal) else {
            return result;
        };
        if patterns.is_empty() {
            return result;
        }
        let Ok(text) = serde_json::to_string(&result) else {
            return result;
        };
        if !patterns.found_in(text.as_bytes()) {
            return result;
        }
        serde_json::from_str(&patterns.scrub_str(&text)).unwrap_or_else(|_| {
            rmcp::model::CallToolResult::error(vec![rmcp::model::ContentBlock::text(
                "the tool's output contained a secret and was withheld",
            )])
        })
    }
}
