//! The master key that seals secret values: AES-256-GCM, from `CHIRON_MASTER_KEY` (32 bytes,
//! base64) or a key file that `chiron init` creates with mode 0600. Every sealed value records
//! the id of the key that sealed it, so keys can rotate (`chiron secret rotate-key`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use chiron_store::secrets::{SealedSecret, SecretOwner};

/// The environment variable holding the master key.
pub const MASTER_KEY_ENV: &str = "CHIRON_MASTER_KEY";

/// Why secrets cannot be sealed or opened. Never contains a secret or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key configured.
    #[error(
        "no master key: set {MASTER_KEY_ENV} (32 bytes, base64) or run `chiron init` to create {0}"
    )]
    Missing(PathBuf),
    /// The key is not 32 bytes of base64.
    #[error("the master key from {0} is not 32 bytes of base64")]
    Malformed(String),
    /// The key file could not be read or written.
    #[error("master key file {path}: {reason}")]
    File {
        /// The key file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A value was sealed with a key that is not loaded.
    #[error("secret {name} was sealed with master key {key_id}, which is not the configured key")]
    UnknownKey {
        /// The secret's name.
        name: String,
        /// The key id recorded with it.
        key_id: String,
    },
    /// Authentication failed: a wrong key with a colliding id, or a damaged value.
    #[error("secret {0} cannot be opened: wrong master key or damaged value")]
    Open(String),
}

/// One AES-256-GCM key and its id.
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        Self {
            id: hex::encode(&digest[..4]),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A key from its base64 text; `from` names where it came from, for errors.
    pub fn from_base64(text: &str, from: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Malformed(from.to_owned()))?,
        );
        let bytes: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed(from.to_owned()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// A fresh random key, as base64 text.
    pub fn generate() -> Zeroizing<String> {
        use rand::RngCore;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()))
    }

    /// The key's id (the first 4 bytes of its SHA-256, hex).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Binds a ciphertext to its row: a value cannot be moved to another name or owner.
fn associated_data(name: &str, owner: SecretOwner) -> Vec<u8> {
    let owner = match owner {
        SecretOwner::Principal(id) => format!("principal:{id}"),
        SecretOwner::Team => "team".to_owned(),
    };
    format!("chiron-secret\0{name}\0{owner}").into_bytes()
}

/// The keys in force: the current one seals; any of them opens.
#[derive(Debug)]
pub struct Keyring {
    current: MasterKey,
    others: Vec<MasterKey>,
}

/// The key file a rotation writes first; loaded too, so a rotation cut short loses nothing.
fn next_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

fn read_key_file(path: &Path) -> Result<Option<MasterKey>, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => MasterKey::from_base64(&text, &path.display().to_string()).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(KeyError::File {
            path: path.to_owned(),
            reason: err.to_string(),
        }),
    }
}

fn write_key_file(path: &Path, key: &str) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file_err = |err: std::io::Error| KeyError::File {
        path: path.to_owned(),
        reason: err.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(file_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err)?;
    file.write_all(key.as_bytes()).map_err(file_err)?;
    file.write_all(b"\n").map_err(file_err)?;
    file.sync_all().map_err(file_err)
}

impl Keyring {
    /// A keyring of one key.
    pub fn single(key: MasterKey) -> Self {
        Self {
            current: key,
            others: Vec::new(),
        }
    }

    /// The configured keys: `CHIRON_MASTER_KEY` if set, else `key_file` (and a rotation's
    /// `.next` file, if one was left behind).
    pub fn load(key_file: &Path) -> Result<Self, KeyError> {
        if let Some(text) = std::env::var(MASTER_KEY_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            return Ok(Self::single(MasterKey::from_base64(&text, MASTER_KEY_ENV)?));
        }
        let current =
            read_key_file(key_file)?.ok_or_else(|| KeyError::Missing(key_file.to_owned()))?;
        let others = read_key_file(&next_file(key_file))?.into_iter().collect();
        Ok(Self { current, others })
    }

    /// Creates `key_file` with a fresh key (mode 0600) unless it exists; returns whether it
    /// was created.
    pub fn create_file(key_file: &Path) -> Result<bool, KeyError> {
        if key_file.exists() {
            return Ok(false);
        }
        write_key_file(key_file, &MasterKey::generate())?;
        Ok(true)
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Seals `value` as `name` of `owner` with the current key.
    pub fn seal(&self, name: &str, owner: SecretOwner, value: &[u8]) -> SealedSecret {
        use rand::RngCore;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(name, owner);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("invariant: AES-GCM encryption of an in-memory buffer cannot fail");
        SealedSecret {
            name: name.to_owned(),
            owner,
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens a sealed value.
    pub fn open(&self, sealed: &SealedSecret) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| KeyError::UnknownKey {
                name: sealed.name.clone(),
                key_id: sealed.key_id.clone(),
            })?;
        if sealed.nonce.len() != 12 {
            return Err(KeyError::Open(sealed.name.clone()));
        }
        let aad = associated_data(&sealed.name, sealed.owner);
        key.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Open(sealed.name.clone()))
    }

    /// Rotates the key file: a new key is written beside it (`.next`), `reseal(old, new)`
    /// re-encrypts every value with it, and only then does it replace the old file. `reseal`
    /// runs once more after the replacement, for values another process sealed with the old
    /// key meanwhile (processes that hold the old keyring load the new file before they seal,
    /// see [`crate::Secrets`]). Returns the new keyring. Keys from `CHIRON_MASTER_KEY` are
    /// rotated where they are kept, not here.
    pub async fn rotate<F, Fut>(key_file: &Path, reseal: F) -> Result<Keyring, String>
    where
        F: Fn(Arc<Keyring>, Arc<Keyring>) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return Err(format!(
                "the master key comes from {MASTER_KEY_ENV}: rotate it where it is kept (re-seal with `chiron secret rotate-key` after moving it to a key file)"
            ));
        }
        let old = Arc::new(Keyring::load(key_file).map_err(|e| e.to_string())?);
        let next = next_file(key_file);
        let _ = std::fs::remove_file(&next);
        let text = MasterKey::generate();
        write_key_file(&next, &text).map_err(|e| e.to_string())?;
        let new = Arc::new(Keyring::single(
            MasterKey::from_base64(&text, &next.display().to_string())
                .map_err(|e| e.to_string())?,
        ));
        reseal(old.clone(), new.clone()).await?;
        std::fs::rename(&next, key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
        reseal(old, new).await.map_err(|err| {
            format!("the new key is in place, but values sealed meanwhile could not be re-sealed: {err}")
        })?;
        Keyring::load(key_file).map_err(|e| e.to_string())
    }

    /// Whether `sealed` was sealed with the key that seals now.
    pub fn is_current(&self, sealed: &SealedSecret) -> bool {
        sealed.key_id == self.current.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chiron_core::PrincipalId;

    #[test]
    fn values_open_only_with_their_key_name_and_owner() {
        let ring = Keyring::single(MasterKey::from_bytes(&[7; 32]));
        let alice = SecretOwner::Principal(PrincipalId::new());
        let sealed = ring.seal("GITHUB_TOKEN", alice, b"ghp_value");
        assert!(!sealed.ciphertext.windows(9).any(|w| w == b"ghp_value"));
        assert_eq!(ring.open(&sealed).unwrap().as_slice(), b"ghp_value");

        // Moved to another owner or name: refused.
        let mut moved = sealed.clone();
        moved.owner = SecretOwner::Team;
        assert_eq!(
            ring.open(&moved),
            Err(KeyError::Open("GITHUB_TOKEN".into()))
        );
        // Another key: refused, naming the key.
        let other = Keyring::single(MasterKey::from_bytes(&[8; 32]));
        assert!(matches!(
            other.open(&sealed),
            Err(KeyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn key_files_are_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.key");
        assert!(Keyring::create_file(&path).unwrap());
        assert!(!Keyring::create_file(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "too short").unwrap();
        assert!(matches!(Keyring::load(&path), Err(KeyError::Malformed(_))));
        let missing = dir.path().join("none.key");
        let err = Keyring::load(&missing).unwrap_err().to_string();
        assert!(
            err.contains("CHIRON_MASTER_KEY") && err.contains("none.key"),
            "{err}"
        );
    }
}
