//! Preparing a chiron installation: the data directory, storage, the auth service, and the
//! bootstrap admin principal whose first token is printed once.

use std::fs;
use std::path::Path;

use chiron_auth::{AuthService, AuthSettings, IssueRequest, IssuedToken};
use chiron_core::{Actor, Config, CreatedVia, Principal, Scope, Scopes};
use chiron_store::{ConnectOptions, Store, StoreError};

use crate::config::database_url;

/// The external identity that marks chiron's own bootstrap principals.
pub const LOCAL_PROVIDER: &str = "chiron";
/// Tenant of chiron's own principals.
pub const LOCAL_TENANT: &str = "local";

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pepper file could not be read.
    #[error("cannot read auth.pepper_file {path}")]
    Pepper {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Issuing the bootstrap token failed.
    #[error("issuing the bootstrap token: {0}")]
    Auth(#[from] chiron_auth::AuthError),
}

/// Creates the data directory. Its mode is 0711: sandboxes run as unprivileged host ids and
/// must pass through it to their homes, but nobody else may list it, and the files holding
/// state (the SQLite database and its journals) are 0600.
pub fn prepare_data_dir(config: &Config) -> Result<(), SetupError> {
    let dir = &config.server.data_dir;
    fs::create_dir_all(dir).map_err(|source| SetupError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o711));
    }
    Ok(())
}

/// Makes the SQLite database file private (0600); SQLite gives its journals the same mode.
fn protect_database(config: &Config) {
    #[cfg(unix)]
    if config.database.url.is_empty() {
        use std::os::unix::fs::PermissionsExt;
        let file = config.server.data_dir.join("chiron.db");
        let _ = fs::set_permissions(file, fs::Permissions::from_mode(0o600));
    }
}

/// Connection options from the `[database]` section.
pub fn connect_options(config: &Config) -> ConnectOptions {
    ConnectOptions {
        url: database_url(config),
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
    }
}

/// Opens storage and applies migrations; for SQLite, creates the data directory first.
pub async fn open_store(config: &Config) -> Result<Store, SetupError> {
    if config.database.url.is_empty() {
        prepare_data_dir(config)?;
    }
    let store = Store::open(&connect_options(config)).await?;
    protect_database(config);
    Ok(store)
}

/// The auth service for this configuration.
pub fn auth_service(config: &Config, store: Store) -> Result<AuthService, SetupError> {
    let pepper = match &config.auth.pepper_file {
        Some(path) => Some(read_pepper(path)?),
        None => None,
    };
    let settings = AuthSettings {
        audience: config.server.mcp_url(),
        default_ttl: config.auth.default_token_ttl,
        max_ttl: config.auth.max_token_ttl,
        cache_ttl: config.auth.cache_ttl,
        last_used_interval: config.auth.last_used_interval,
    };
    Ok(AuthService::new(store, settings, pepper))
}

fn read_pepper(path: &Path) -> Result<Vec<u8>, SetupError> {
    let bytes = fs::read(path).map_err(|source| SetupError::Pepper {
        path: path.display().to_string(),
        source,
    })?;
    Ok(bytes.trim_ascii().to_vec())
}

/// Finds chiron's own principal `subject` (`admin`, `demo`), creating it if missing.
/// Returns the principal and whether it was created now.
pub async fn local_principal(
    store: &Store,
    subject: &str,
) -> Result<(Principal, bool), SetupError> {
    Ok(store
        .principal_for_identity(LOCAL_PROVIDER, LOCAL_TENANT, subject, subject)
        .await?)
}

/// Creates the `admin` principal and its first admin token if this installation has none.
/// Returns the token only when it was created now: it is shown once and never again.
pub async fn bootstrap_admin(
    auth: &AuthService,
    via: CreatedVia,
) -> Result<Option<IssuedToken>, SetupError> {
    let (admin, created) = local_principal(auth.store(), "admin").await?;
    if !created {
        return Ok(None);
    }
    let issued = auth
        .issue(IssueRequest {
            principal_id: admin.id,
            name: "bootstrap admin".into(),
            scopes: Scopes::new([Scope::Admin]),
            ttl: Some(auth.settings().max_ttl),
            created_via: via,
            actor: Actor::system(via.as_str()),
        })
        .await?;
    Ok(Some(issued))
}

/// Issues a fresh `mcp:tools` token for the `demo` principal, revoking the previous demo
/// tokens so only the one just printed works.
pub async fn demo_token(auth: &AuthService) -> Result<IssuedToken, SetupError> {
    let (demo, _) = local_principal(auth.store(), "demo").await?;
    auth.revoke_all(
        demo.id,
        "replaced by a new demo start",
        Actor::system("demo"),
    )
    .await?;
    let issued = auth
        .issue(IssueRequest {
            principal_id: demo.id,
            name: "demo".into(),
            scopes: Scopes::new([Scope::McpTools]),
            ttl: None,
            created_via: CreatedVia::Demo,
            actor: Actor::system("demo"),
        })
        .await?;
    Ok(issued)
}

/// Takes the data directory for this gateway: runner homes, leftovers of earlier runners and
/// the pid file belong to one gateway at a time. The lock lasts as long as the returned file
/// is open (the kernel drops it however the process ends).
pub fn lock_data_dir(config: &Config) -> Result<std::fs::File, String> {
    let dir = &config.server.data_dir;
    let path = dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(pid_file(config)).unwrap_or_default();
            let pid = pid.trim();
            Err(format!(
                "another chiron serve{} uses the data directory {}: one gateway per data \
                 directory (give this one its own server.data_dir)",
                if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
                dir.display()
            ))
        }
        Err(std::fs::TryLockError::Error(err)) => {
            Err(format!("cannot lock {}: {err}", path.display()))
        }
    }
}

/// The file where a serving gateway records its pid, for `chiron tool reload`.
pub fn pid_file(config: &Config) -> std::path::PathBuf {
    config.server.data_dir.join("chiron.pid")
}

/// Grants `package` to the demo principal (idempotent).
pub async fn grant_to_demo(store: &Store, package: &str) -> Result<(), SetupError> {
    let (demo, _) = local_principal(store, "demo").await?;
    store
        .add_grant(
            package,
            chiron_store::grants::GrantSubject::Principal(demo.id),
            Actor::system("demo"),
        )
        .await?;
    Ok(())
}
