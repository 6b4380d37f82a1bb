//! chiron's egress CA: created once (`chiron init`, or the first start) under
//! `<data_dir>/egress/` — `ca.pem` (public) and `ca.key` (mode 0600) — and used to issue a
//! leaf certificate per intercepted host, cached in memory. Tool processes trust it through the
//! CA bundle mounted into every sandbox (system roots plus this CA).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's subject; the issuer of every leaf.
const CA_NAME: &str = "chiron egress CA";

/// Where the CA lives under a data directory.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("egress")
}

/// The CA and its leaf cache.
pub struct CertificateAuthority {
    /// The CA certificate, PEM (what tools trust).
    pem: String,
    issuer: Certificate,
    key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    name.push(DnType::OrganizationName, "chiron");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    params
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, creating it (key 0600) if it does not exist.
    pub fn load_or_create(dir: &Path) -> Result<Self, String> {
        let cert_file = dir.join("ca.pem");
        let key_file = dir.join("ca.key");
        let io = |path: &Path, err: std::io::Error| format!("{}: {err}", path.display());
        if !key_file.exists() {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
            let key = KeyPair::generate().map_err(|e| e.to_string())?;
            let cert = ca_params().self_signed(&key).map_err(|e| e.to_string())?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_file)
                .map_err(|e| io(&key_file, e))?;
            file.write_all(key.serialize_pem().as_bytes())
                .map_err(|e| io(&key_file, e))?;
            std::fs::write(&cert_file, cert.pem()).map_err(|e| io(&cert_file, e))?;
            let _ = std::fs::set_permissions(&cert_file, std::fs::Permissions::from_mode(0o644));
        }
        let key_pem = std::fs::read_to_string(&key_file).map_err(|e| io(&key_file, e))?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key_file.display()))?;
        let pem = std::fs::read_to_string(&cert_file).map_err(|e| io(&cert_file, e))?;
        // Leaves name the CA's subject as issuer and are signed by its key; an issuer object
        // with the same subject and key signs exactly as the stored certificate would.
        let issuer = ca_params().self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self {
            pem,
            issuer,
            key,
            leaves: Mutex::default(),
        })
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `host` signed by the CA (cached).
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, String> {
        if let Some(leaf) = self
            .leaves
            .lock()
            .expect("invariant: leaf cache lock")
            .get(host)
        {
            return Ok(leaf.clone());
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(90);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| e.to_string())?;
        let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&der_key).map_err(|e| e.to_string())?;
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let leaf = Arc::new(CertifiedKey::new(chain, signing));
        self.leaves
            .lock()
            .expect("invariant: leaf cache lock")
            .insert(host.to_owned(), leaf.clone());
        Ok(leaf)
    }

    /// Writes the bundle tools trust — the system roots (when found) plus this CA — to
    /// `path`, readable by the sandboxes.
    pub fn write_bundle(&self, path: &Path) -> Result<(), String> {
        let mut bundle = String::new();
        for system in [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
        ] {
            if let Ok(text) = std::fs::read_to_string(system) {
                bundle.push_str(&text);
                if !bundle.ends_with('\n') {
                    bundle.push('\n');
                }
                break;
            }
        }
        bundle.push_str(&self.pem);
        std::fs::write(path, bundle).map_err(|e| format!("{}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
        Ok(())
    }
}
