//! The secret store: values by name, per principal with a team-wide fallback, sealed with the
//! master key before they reach storage. Only the egress proxy (and tool-output scrubbing)
//! ever asks for plaintext; listing shows names, owners and times.
//!
//! Fail closed: without a usable master key nothing can be set or read, and every caller gets
//! an error that says why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use zeroize::Zeroizing;

use chiron_core::{Actor, NewAuditEvent, PrincipalId};
use chiron_store::secrets::{SecretInfo, SecretOwner};
use chiron_store::Store;

use crate::keys::{KeyError, Keyring, MASTER_KEY_ENV};

/// Why a secret operation failed. Never contains a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The master key is missing or wrong.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A name outside `^[A-Z][A-Z0-9_]{0,63}$`.
    #[error("secret names are upper case letters, digits and _ (starting with a letter), at most 64: {0:?}")]
    BadName(String),
    /// An empty value.
    #[error("a secret value must not be empty")]
    Empty,
    /// A value too short to be found and scrubbed in responses.
    #[error("a secret value must be at least {MIN_VALUE_LEN} bytes: a shorter one could not be told apart from ordinary text, so it could not be scrubbed from responses")]
    TooShort,
    /// A value with control characters, which no HTTP header can carry.
    #[error("a secret value must not contain control characters: it is sent in HTTP headers")]
    ControlCharacters,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] chiron_store::StoreError),
}

/// The shortest value accepted (the scrubber ignores shorter strings).
pub const MIN_VALUE_LEN: usize = 4;

/// Checks a secret name.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=64).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The values that apply to one principal, by name: its own, else the team's.
pub type Values = HashMap<String, Zeroizing<String>>;

/// Opened values of one principal, and the sealed rows they came from: when storage returns
/// exactly the same sealed rows (every set draws a fresh nonce), the values are reused instead
/// of being opened again.
struct Opened {
    fingerprint: Vec<u8>,
    values: Arc<Values>,
    patterns: Arc<crate::scrub::Patterns>,
    /// What [`Freshness`] said when the rows were read; the entry serves requests without a
    /// storage read for as long as it still says the same.
    seen: Option<Seen>,
}

/// A point in the history of secret changes, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    generation: u64,
    /// The marker file's inode and length: writers only ever append to it, so its length
    /// grows with every change (one `fstat` per request tells).
    marker: (u64, u64),
}

/// The marker file, kept open: `fstat` on the open file costs a fraction of a `stat` by path,
/// which walks the path on every request. A marker that was deleted or replaced (its open
/// inode has no links left) is opened again by path, and so is one that did not exist yet.
struct Marker {
    path: PathBuf,
    open: RwLock<Option<std::fs::File>>,
}

impl Marker {
    /// The marker's inode and length; a missing marker (nothing changed since the data
    /// directory was made) reads as empty.
    fn read(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let current = |m: std::fs::Metadata| (m.nlink() > 0).then(|| (m.ino(), m.len()));
        if let Some(file) = self.open.read().expect("invariant: marker lock").as_ref() {
            if let Some(seen) = file.metadata().ok().and_then(current) {
                return seen;
            }
        }
        let mut open = self.open.write().expect("invariant: marker lock");
        *open = std::fs::File::open(&self.path).ok();
        open.as_ref()
            .and_then(|file| file.metadata().ok())
            .and_then(current)
            .unwrap_or((0, 0))
    }
}

/// How cached values learn that storage changed, without reading storage on every request:
///
/// - a generation counter, bumped by this process's own changes and by change notifications
///   from other replicas (PostgreSQL `LISTEN`, see [`Secrets::changed_elsewhere`]);
/// - a marker file on this host that every writer (the server, the admin API, the CLI)
///   appends a byte to after its change is committed, and whose length is checked (one
///   `stat`) before cached values are used. So a change made by any process on the host
///   applies to the very next request.
///
/// Without a marker file, storage is read on every request (the safe default).
#[derive(Default)]
struct Freshness {
    generation: std::sync::atomic::AtomicU64,
    marker: Option<Marker>,
}

impl Freshness {
    fn now(&self) -> Option<Seen> {
        let marker = self.marker.as_ref()?;
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        Some(Seen {
            generation,
            marker: marker.read(),
        })
    }

    /// Makes every cached entry stale.
    fn advance(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Records a change committed by this process.
    fn bump(&self) {
        self.advance();
        let Some(Marker { path: marker, .. }) = &self.marker else {
            return;
        };
        // One byte per change, appended atomically whoever writes: the length only grows.
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(marker)
            .and_then(|mut file| std::io::Write::write_all(&mut file, b"."));
        if let Err(err) = written {
            // Other processes on this host would keep using cached values: say so loudly.
            tracing::error!(marker = %marker.display(), error = %err, "could not announce a secret change to other processes");
        }
    }
}

/// Sealed secrets over storage.
pub struct Secrets {
    store: Store,
    key_file: PathBuf,
    keys: RwLock<Result<Arc<Keyring>, KeyError>>,
    /// The key file as `keys` were loaded from it (see [`Secrets::follow_key_file`]).
    key_stamp: std::sync::Mutex<Option<KeyStamp>>,
    opened: std::sync::Mutex<HashMap<PrincipalId, Opened>>,
    freshness: Freshness,
    /// The usernames each secret is sent with as HTTP Basic (from the loaded manifests):
    /// `user:value` is encoded whole on the wire, so the scrubber must know that form too.
    basic_users: RwLock<Arc<HashMap<String, Vec<String>>>>,
}

impl Secrets {
    /// The secret store; the keyring is loaded from `CHIRON_MASTER_KEY` or `key_file`. A missing
    /// or malformed key is kept as the error every operation returns.
    pub fn new(store: Store, key_file: PathBuf) -> Self {
        let key_stamp = std::sync::Mutex::new(KeyStamp::of(&key_file));
        let keys = Keyring::load(&key_file).map(Arc::new);
        Self {
            store,
            key_file,
            keys: RwLock::new(keys),
            key_stamp,
            opened: std::sync::Mutex::default(),
            freshness: Freshness::default(),
            basic_users: RwLock::default(),
        }
    }

    /// Keeps opened values in memory between requests, checking `marker` (a file in the data
    /// directory every writer on this host appends to after a change) before each use, instead
    /// of reading storage on every request. Replicas on other hosts must also call
    /// [`Secrets::changed_elsewhere`] on each change notification.
    pub fn with_change_marker(mut self, marker: PathBuf) -> Self {
        self.freshness.marker = Some(Marker {
            path: marker,
            open: RwLock::default(),
        });
        self
    }

    /// Forgets what is cached: storage changed in a way this process did not make (a change
    /// notification from another replica, or a lost notification connection).
    pub fn changed_elsewhere(&self) {
        self.freshness.advance();
    }

    /// A secret store with a given keyring (tests, tools).
    pub fn with_keyring(store: Store, keyring: Keyring) -> Self {
        Self {
            store,
            key_file: PathBuf::new(),
            keys: RwLock::new(Ok(Arc::new(keyring))),
            key_stamp: std::sync::Mutex::default(),
            opened: std::sync::Mutex::default(),
            freshness: Freshness::default(),
            basic_users: RwLock::default(),
        }
    }

    fn keyring(&self) -> Result<Arc<Keyring>, KeyError> {
        self.keys
            .read()
            .expect("invariant: keyring lock is never poisoned")
            .clone()
    }

    /// Whether secrets can be used, and if not why.
    pub fn status(&self) -> Result<String, KeyError> {
        self.keyring().map(|k| k.current_id().to_owned())
    }

    /// Sets `owner`'s value of `name`. Audited without the value.
    pub async fn set(
        &self,
        name: &str,
        owner: SecretOwner,
        value: &str,
        actor: Actor,
    ) -> Result<(), SecretError> {
        if !valid_name(name) {
            return Err(SecretError::BadName(name.to_owned()));
        }
        let value = value.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if value.len() < MIN_VALUE_LEN {
            return Err(SecretError::TooShort);
        }
        if value.chars().any(char::is_control) {
            return Err(SecretError::ControlCharacters);
        }
        self.follow_key_file();
        let sealed = self.keyring()?.seal(name, owner, value.as_bytes());
        self.store.put_secret(&sealed).await?;
        self.freshness.bump();
        self.audit(actor, "secret.set", name, owner).await;
        Ok(())
    }

    /// Deletes `owner`'s value of `name`; returns whether it existed. Audited.
    pub async fn delete(
        &self,
        name: &str,
        owner: SecretOwner,
        actor: Actor,
    ) -> Result<bool, SecretError> {
        let removed = self.store.delete_secret(name, owner).await?;
        if removed {
            self.freshness.bump();
            self.audit(actor, "secret.delete", name, owner).await;
        }
        Ok(removed)
    }

    async fn audit(&self, actor: Actor, action: &str, name: &str, owner: SecretOwner) {
        let event = NewAuditEvent {
            actor,
            action: action.into(),
            target_kind: "secret".into(),
            target_id: name.into(),
            detail: serde_json::json!({ "owner": owner }),
        };
        if let Err(err) = self.store.record_audit(event).await {
            tracing::error!(error = %err, "could not audit a secret change");
        }
    }

    /// Names, owners and update times (never values).
    pub async fn list(
        &self,
        principal: Option<PrincipalId>,
    ) -> Result<Vec<SecretInfo>, SecretError> {
        Ok(self.store.list_secrets(principal).await?)
    }

    /// The plaintext values that apply to `principal`: its own, else the team's, as fresh as
    /// [`Secrets::current`] keeps them (a changed or deleted value takes effect on the next
    /// request).
    pub async fn values_for(&self, principal: PrincipalId) -> Result<Values, SecretError> {
        Ok((*self.current(principal).await?.0).clone())
    }

    /// The principal's values and the scrubbing patterns for them: read from storage unless
    /// nothing changed since the last read (see [`Secrets::with_change_marker`]), and opened
    /// only when the sealed rows changed.
    pub async fn current(
        &self,
        principal: PrincipalId,
    ) -> Result<(Arc<Values>, Arc<crate::scrub::Patterns>), SecretError> {
        // Fail closed, cached values or not.
        self.keyring()?;
        // Taken before reading storage: a change committed after this point moves it on, so
        // the next request reads again.
        let seen = self.freshness.now();
        if let Some(seen) = &seen {
            if let Some(opened) = self
                .opened
                .lock()
                .expect("invariant: opened-values lock")
                .get(&principal)
                .filter(|o| o.seen == Some(*seen))
            {
                return Ok((opened.values.clone(), opened.patterns.clone()));
            }
        }
        self.follow_key_file();
        let keys = self.keyring()?;
        let sealed = self.store.secrets_for(principal).await?;
        let mut fingerprint = keys.current_id().as_bytes().to_vec();
        for secret in &sealed {
            fingerprint.extend_from_slice(secret.name.as_bytes());
            fingerprint.extend_from_slice(&secret.nonce);
            fingerprint.extend_from_slice(&secret.ciphertext);
        }
        if let Some(opened) = self
            .opened
            .lock()
            .expect("invariant: opened-values lock")
            .get_mut(&principal)
            .filter(|o| o.fingerprint == fingerprint)
        {
            opened.seen = seen;
            return Ok((opened.values.clone(), opened.patterns.clone()));
        }
        let values = Arc::new(Self::open_all(&keys, &sealed)?);
        let patterns = Arc::new(self.patterns_for(&values));
        self.opened
            .lock()
            .expect("invariant: opened-values lock")
            .insert(
                principal,
                Opened {
                    fingerprint,
                    values: values.clone(),
                    patterns: patterns.clone(),
                    seen,
                },
            );
        Ok((values, patterns))
    }

    /// Tells the store which usernames each secret is sent with as HTTP Basic, so that the
    /// scrubbing patterns cover `user:value` in every encoding (a Basic header echoed back is
    /// base64 of the pair, not of the value). Values opened before are opened again.
    pub fn set_basic_usernames(&self, users: HashMap<String, Vec<String>>) {
        *self
            .basic_users
            .write()
            .expect("invariant: basic users lock is never poisoned") = Arc::new(users);
        self.opened
            .lock()
            .expect("invariant: opened-values lock")
            .clear();
    }

    /// The scrubbing patterns of `values`: each value, and each `user:value` pair it is sent
    /// as with HTTP Basic, in every encoding.
    fn patterns_for(&self, values: &Values) -> crate::scrub::Patterns {
        let users = self
            .basic_users
            .read()
            .expect("invariant: basic users lock is never poisoned")
            .clone();
        let pairs: Vec<Zeroizing<String>> = values
            .iter()
            .flat_map(|(name, value)| {
                users
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(move |user| Zeroizing::new(format!("{user}:{}", value.as_str())))
            })
            .collect();
        crate::scrub::Patterns::new(
            values
                .values()
                .map(|v| v.as_str())
                .chain(pairs.iter().map(|p| p.as_str())),
        )
    }

    /// Drops the values opened for `principal` (its runner stopped): plaintext is kept only
    /// while it may be needed. The next request opens them again.
    pub fn forget(&self, principal: PrincipalId) {
        self.opened
            .lock()
            .expect("invariant: opened-values lock")
            .remove(&principal);
    }

    /// The scrubbing patterns of the values last opened for `principal` in this process,
    /// without reading storage. Tool processes can only have received values this process's
    /// proxy opened, so these cover everything a tool result could echo.
    pub fn opened_patterns(&self, principal: PrincipalId) -> Option<Arc<crate::scrub::Patterns>> {
        self.opened
            .lock()
            .expect("invariant: opened-values lock")
            .get(&principal)
            .map(|o| o.patterns.clone())
    }

    fn open_all(
        keys: &Keyring,
        sealed: &[chiron_store::secrets::SealedSecret],
    ) -> Result<Values, SecretError> {
        let mut values = Values::new();
        // Team values first, so the principal's own replace them.
        for secret in sealed
            .iter()
            .filter(|s| s.owner == SecretOwner::Team)
            .chain(sealed.iter().filter(|s| s.owner != SecretOwner::Team))
        {
            let plain = keys.open(secret)?;
            let text = Zeroizing::new(String::from_utf8_lossy(&plain).into_owned());
            values.insert(secret.name.clone(), text);
        }
        Ok(values)
    }

    /// Re-seals every value with a new key file key (see [`Keyring::rotate`]); returns how
    /// many values were re-sealed and the new key id.
    pub async fn rotate_key(&self) -> Result<(usize, String), String> {
        let store = self.store.clone();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let keyring = Keyring::rotate(&self.key_file, move |old, new| {
            let (store, counted) = (store.clone(), counted.clone());
            async move {
                let sealed = store.all_secrets().await.map_err(|e| e.to_string())?;
                let mut resealed = Vec::with_capacity(sealed.len());
                for secret in sealed.iter().filter(|s| !new.is_current(s)) {
                    let plain = old.open(secret).map_err(|e| e.to_string())?;
                    resealed.push(new.seal(&secret.name, secret.owner, &plain));
                }
                store
                    .reseal_secrets(&resealed)
                    .await
                    .map_err(|e| e.to_string())?;
                counted.fetch_add(resealed.len(), std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        })
        .await?;
        let id = keyring.current_id().to_owned();
        *self
            .keys
            .write()
            .expect("invariant: keyring lock is never poisoned") = Ok(Arc::new(keyring));
        *self.key_stamp.lock().expect("invariant: key stamp lock") = KeyStamp::of(&self.key_file);
        self.opened
            .lock()
            .expect("invariant: opened-values lock")
            .clear();
        self.freshness.bump();
        Ok((count.load(std::sync::atomic::Ordering::SeqCst), id))
    }

    /// Loads the key file again if it was replaced since it was loaded (a rotation by another
    /// process), so values are sealed with the key that seals now and opened with it.
    fn follow_key_file(&self) {
        if self.key_file.as_os_str().is_empty() || std::env::var_os(MASTER_KEY_ENV).is_some() {
            return;
        }
        let now = KeyStamp::of(&self.key_file);
        let mut stamp = self.key_stamp.lock().expect("invariant: key stamp lock");
        if *stamp == now {
            return;
        }
        let keys = Keyring::load(&self.key_file).map(Arc::new);
        match &keys {
            Ok(keyring) => {
                tracing::info!(
                    key_id = keyring.current_id(),
                    "master key file changed: loaded it again"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "master key file changed and cannot be loaded")
            }
        }
        *self
            .keys
            .write()
            .expect("invariant: keyring lock is never poisoned") = keys;
        *stamp = now;
    }
}

/// Which file a key file path holds (a rotation replaces it by rename), and its size and
/// modification time; `None` when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyStamp {
    device: u64,
    inode: u64,
    modified: i64,
    modified_nanos: i64,
    len: u64,
}

impl KeyStamp {
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            modified: meta.mtime(),
            modified_nanos: meta.mtime_nsec(),
            len: meta.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_are_upper_snake_case() {
        for good in ["GITHUB_TOKEN", "A", "SLACK_TOKEN_2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "github_token", "1TOKEN", "A-B", "A B", &"A".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
