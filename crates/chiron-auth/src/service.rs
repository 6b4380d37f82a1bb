//! [`AuthService`]: issue, verify, revoke and disable, with the verification cache and the
//! coalesced `last_used_at` writer.
//!
//! Verification order: format and checksum (no storage), hash lookup, expiry, revocation,
//! principal status — any failure is "invalid token" — then audience (also "invalid token"),
//! then scope ("insufficient scope"). Positive results are cached for `cache_ttl`; a revoke or
//! disable through this service evicts the affected entries at once. A revoke made by another
//! process directly on storage (the CLI) is seen once the entry ages out, within `cache_ttl`.
//! Any storage error fails closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use chiron_core::time_util::{now, rfc3339};
use chiron_core::{
    Actor, CreatedVia, McpToken, NewAuditEvent, Principal, PrincipalId, PrincipalStatus, Scope,
    Scopes, TokenId,
};
use chiron_store::{Store, StoreError};

use crate::hash::TokenHasher;
use crate::token::{check_format, TokenSecret};

/// Entries kept in the verification cache at most; past it, expired entries are dropped and,
/// if that is not enough, the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// What [`AuthService`] needs from configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The audience every token is issued for and checked against: `<public_url>/mcp`.
    pub audience: String,
    /// Lifetime when an issuer names none.
    pub default_ttl: Duration,
    /// The longest lifetime an issuer may ask for.
    pub max_ttl: Duration,
    /// How long a positive verification is reused.
    pub cache_ttl: Duration,
    /// Minimum time between two `last_used_at` writes of one token.
    pub last_used_interval: Duration,
}

/// A verified token: the principal it authenticates and the token's metadata. Verification
/// hands it out behind an `Arc`, so passing it along a request costs no copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The principal behind the token (active at verification time).
    pub principal: Principal,
    /// The token's metadata; never the token.
    pub token: McpToken,
}

/// Why a presented token is not accepted as valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// Not a well-formed token or a bad checksum; storage was not consulted.
    Malformed,
    /// No token with this hash exists.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
    /// Its principal is disabled.
    PrincipalDisabled,
    /// Issued for another resource.
    WrongAudience,
}

impl InvalidReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::PrincipalDisabled => "principal_disabled",
            Self::WrongAudience => "wrong_audience",
        }
    }
}

/// The outcome of a failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token is not valid for this resource (HTTP 401 `invalid_token`).
    #[error("invalid token ({})", .0.as_str())]
    Invalid(InvalidReason),
    /// Valid, but lacks the required scope (HTTP 403 `insufficient_scope`).
    #[error("token lacks scope {0}")]
    InsufficientScope(Scope),
    /// Storage failed; the request is refused (fail closed).
    #[error("token verification unavailable")]
    Unavailable(#[source] StoreError),
}

/// Errors of the management operations (issue, revoke, disable).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The principal does not exist.
    #[error("principal not found")]
    PrincipalNotFound,
    /// Tokens cannot be issued to a disabled principal.
    #[error("principal is disabled")]
    PrincipalDisabled,
    /// The token does not exist (or belongs to another principal where one was named).
    #[error("token not found")]
    TokenNotFound,
    /// The requested lifetime exceeds `auth.max_token_ttl` or is zero.
    #[error("token lifetime must be between 1s and {max}")]
    BadTtl {
        /// The configured maximum, humanly formatted.
        max: String,
    },
    /// No scope was requested.
    #[error("at least one scope is required")]
    NoScopes,
    /// Storage failed.
    #[error("storage error")]
    Store(#[from] StoreError),
}

/// A request to issue a token.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Whose token it is.
    pub principal_id: PrincipalId,
    /// A label, e.g. the client or machine it is for.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// Lifetime; `None` means the configured default.
    pub ttl: Option<Duration>,
    /// Which path issues it.
    pub created_via: CreatedVia,
    /// Who issues it, for the audit log.
    pub actor: Actor,
}

/// A freshly issued token: the only value that ever carries the plaintext.
#[derive(Debug)]
pub struct IssuedToken {
    /// The token, to be shown once to its owner.
    pub secret: TokenSecret,
    /// Its stored metadata.
    pub record: McpToken,
}

/// Issues, verifies, revokes. Cheap to clone; clones share the cache.
#[derive(Clone, Debug)]
pub struct AuthService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    hasher: TokenHasher,
    settings: AuthSettings,
    /// Positive verifications by token digest. Guarded for short, await-free sections only.
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
    /// Per-token use tracking for coalesced `last_used_at` writes; drained by
    /// [`AuthService::flush_usage`].
    usage: Mutex<HashMap<TokenId, Usage>>,
    /// Storage lookups made by `verify`, exposed for metrics and tests.
    lookups: AtomicU64,
}

#[derive(Debug)]
struct CacheEntry {
    auth: Arc<Authenticated>,
    cached_at: Instant,
}

#[derive(Debug, Default)]
struct Usage {
    /// When a use was last queued for writing.
    queued_at: Option<Instant>,
    /// A use waiting to be written.
    pending: Option<OffsetDateTime>,
}

impl AuthService {
    /// A service over `store` with an optional token pepper.
    pub fn new(store: Store, settings: AuthSettings, pepper: Option<Vec<u8>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                hasher: TokenHasher::new(pepper),
                settings,
                cache: Mutex::new(HashMap::new()),
                usage: Mutex::new(HashMap::new()),
                lookups: AtomicU64::new(0),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &AuthSettings {
        &self.inner.settings
    }

    /// The store this service writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// How many storage lookups `verify` has made.
    pub fn storage_lookups(&self) -> u64 {
        self.inner.lookups.load(Ordering::Relaxed)
    }

    /// Verifies a presented bearer token for this deployment's audience and `required` scope.
    pub async fn verify(
        &self,
        presented: &str,
        required: Scope,
    ) -> Result<Arc<Authenticated>, VerifyError> {
        check_format(presented).map_err(|_| VerifyError::Invalid(InvalidReason::Malformed))?;
        let digest = self.inner.hasher.digest(presented);
        let auth = match self.cached(&digest) {
            Some(auth) => auth,
            None => {
                let auth = Arc::new(self.lookup(&digest).await?);
                self.remember(digest, &auth);
                auth
            }
        };
        // Expiry is checked again on cached entries: a token may expire while cached.
        if auth.token.expires_at <= now() {
            return Err(VerifyError::Invalid(InvalidReason::Expired));
        }
        if auth.token.audience != self.inner.settings.audience {
            return Err(VerifyError::Invalid(InvalidReason::WrongAudience));
        }
        if !auth.token.scopes.contains(required) {
            return Err(VerifyError::InsufficientScope(required));
        }
        self.note_use(auth.token.id);
        Ok(auth)
    }

    async fn lookup(&self, digest: &[u8; 32]) -> Result<Authenticated, VerifyError> {
        self.inner.lookups.fetch_add(1, Ordering::Relaxed);
        let found = self
            .inner
            .store
            .token_by_hash(&TokenHasher::hex(digest))
            .await
            .map_err(VerifyError::Unavailable)?;
        let Some((token, principal)) = found else {
            return Err(VerifyError::Invalid(InvalidReason::Unknown));
        };
        if token.expires_at <= now() {
            return Err(VerifyError::Invalid(InvalidReason::Expired));
        }
        if token.revoked_at.is_some() {
            return Err(VerifyError::Invalid(InvalidReason::Revoked));
        }
        if principal.status != PrincipalStatus::Active {
            return Err(VerifyError::Invalid(InvalidReason::PrincipalDisabled));
        }
        Ok(Authenticated { principal, token })
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<Authenticated>> {
        let ttl = self.inner.settings.cache_ttl;
        let cache = self
            .inner
            .cache
            .lock()
            .expect("invariant: cache lock is never poisoned");
        cache
            .get(digest)
            .filter(|entry| entry.cached_at.elapsed() < ttl)
            .map(|e| e.auth.clone())
    }

    fn remember(&self, digest: [u8; 32], auth: &Arc<Authenticated>) {
        let ttl = self.inner.settings.cache_ttl;
        if ttl.is_zero() {
            return;
        }
        let mut cache = self
            .inner
            .cache
            .lock()
            .expect("invariant: cache lock is never poisoned");
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, entry| entry.cached_at.elapsed() < ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            CacheEntry {
                auth: auth.clone(),
                cached_at: Instant::now(),
            },
        );
    }

    /// Drops cached verifications matching `predicate`.
    fn evict(&self, predicate: impl Fn(&Authenticated) -> bool) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .expect("invariant: cache lock is never poisoned");
        cache.retain(|_, entry| !predicate(&entry.auth));
    }

    fn note_use(&self, token_id: TokenId) {
        let interval = self.inner.settings.last_used_interval;
        let mut usage = self
            .inner
            .usage
            .lock()
            .expect("invariant: usage lock is never poisoned");
        let entry = usage.entry(token_id).or_default();
        let due = entry.queued_at.is_none_or(|at| at.elapsed() >= interval);
        if due {
            entry.queued_at = Some(Instant::now());
            entry.pending = Some(now());
        }
    }

    /// Writes queued `last_used_at` updates in one transaction. Called periodically by
    /// [`AuthService::spawn_usage_flusher`] and once more at shutdown.
    pub async fn flush_usage(&self) -> Result<usize, StoreError> {
        let pending: Vec<(TokenId, OffsetDateTime)> = {
            let mut usage = self
                .inner
                .usage
                .lock()
                .expect("invariant: usage lock is never poisoned");
            let pending = usage
                .iter_mut()
                .filter_map(|(id, entry)| entry.pending.take().map(|at| (*id, at)))
                .collect();
            // Forget tokens not used for a while so the map does not grow without bound.
            let horizon = self.inner.settings.last_used_interval * 2;
            usage.retain(|_, entry| entry.queued_at.is_some_and(|at| at.elapsed() < horizon));
            pending
        };
        self.inner.store.touch_tokens(&pending).await?;
        Ok(pending.len())
    }

    /// Runs [`AuthService::flush_usage`] every `period` until `shutdown` fires, then flushes
    /// once more.
    pub fn spawn_usage_flusher(
        &self,
        period: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                if let Err(err) = service.flush_usage().await {
                    tracing::warn!(error = %err, "could not record token use");
                }
            }
            if let Err(err) = service.flush_usage().await {
                tracing::warn!(error = %err, "could not record token use at shutdown");
            }
        })
    }

    /// Issues a token for an active principal. The returned [`IssuedToken`] is the only place
    /// the plaintext exists.
    pub async fn issue(&self, request: IssueRequest) -> Result<IssuedToken, AuthError> {
        let settings = &self.inner.settings;
        let ttl = request.ttl.unwrap_or(settings.default_ttl);
        if ttl.is_zero() || ttl > settings.max_ttl {
            return Err(AuthError::BadTtl {
                max: humanize(settings.max_ttl),
            });
        }
        if request.scopes.is_empty() {
            return Err(AuthError::NoScopes);
        }
        let principal = self
            .inner
            .store
            .get_principal(request.principal_id)
            .await?
            .ok_or(AuthError::PrincipalNotFound)?;
        if !principal.is_active() {
            return Err(AuthError::PrincipalDisabled);
        }
        let secret = TokenSecret::generate();
        let created_at = now();
        let record = McpToken {
            id: TokenId::new(),
            principal_id: principal.id,
            name: request.name,
            display_prefix: secret.display_prefix().to_owned(),
            scopes: request.scopes,
            audience: settings.audience.clone(),
            created_via: request.created_via,
            created_at,
            expires_at: created_at + ttl,
            last_used_at: None,
            revoked_at: None,
            revoke_reason: None,
        };
        let digest = self.inner.hasher.digest(secret.expose());
        let audit = NewAuditEvent {
            actor: request.actor,
            action: "token.issue".into(),
            target_kind: "token".into(),
            target_id: record.id.to_string(),
            detail: serde_json::json!({
                "principal_id": record.principal_id,
                "name": record.name,
                "scopes": record.scopes,
                "created_via": record.created_via,
                "expires_at": rfc3339(record.expires_at),
            }),
        };
        self.inner
            .store
            .insert_token(&record, &TokenHasher::hex(&digest), audit)
            .await?;
        tracing::info!(
            token_id = %record.id,
            principal_id = %record.principal_id,
            via = record.created_via.as_str(),
            "token issued"
        );
        Ok(IssuedToken { secret, record })
    }

    /// Revokes one token. With `owner`, the token must belong to that principal (a principal
    /// revoking its own tokens); otherwise it looks like a missing token.
    pub async fn revoke(
        &self,
        token_id: TokenId,
        owner: Option<PrincipalId>,
        reason: &str,
        actor: Actor,
    ) -> Result<McpToken, AuthError> {
        if let Some(owner) = owner {
            let token = self.inner.store.get_token(token_id).await?;
            if token.is_none_or(|t| t.principal_id != owner) {
                return Err(AuthError::TokenNotFound);
            }
        }
        let audit = NewAuditEvent {
            actor,
            action: "token.revoke".into(),
            target_kind: "token".into(),
            target_id: token_id.to_string(),
            detail: serde_json::json!({ "reason": reason }),
        };
        let revoked = self
            .inner
            .store
            .revoke_token(token_id, reason, audit)
            .await
            .map_err(|err| match err {
                StoreError::NotFound(_) => AuthError::TokenNotFound,
                other => AuthError::Store(other),
            })?;
        self.evict(|auth| auth.token.id == token_id);
        tracing::info!(token_id = %token_id, "token revoked");
        Ok(revoked)
    }

    /// Revokes every live token of a principal; returns how many were revoked.
    pub async fn revoke_all(
        &self,
        principal_id: PrincipalId,
        reason: &str,
        actor: Actor,
    ) -> Result<Vec<TokenId>, AuthError> {
        if self
            .inner
            .store
            .get_principal(principal_id)
            .await?
            .is_none()
        {
            return Err(AuthError::PrincipalNotFound);
        }
        let audit = NewAuditEvent {
            actor,
            action: "token.revoke_all".into(),
            target_kind: "principal".into(),
            target_id: principal_id.to_string(),
            detail: serde_json::json!({ "reason": reason }),
        };
        let revoked = self
            .inner
            .store
            .revoke_all_tokens(principal_id, reason, audit)
            .await?;
        self.evict(|auth| auth.principal.id == principal_id);
        tracing::info!(principal_id = %principal_id, count = revoked.len(), "tokens revoked");
        Ok(revoked)
    }

    /// Disables or re-enables a principal. Disabling makes every token of the principal fail
    /// its next verification.
    pub async fn set_principal_status(
        &self,
        principal_id: PrincipalId,
        status: PrincipalStatus,
        actor: Actor,
    ) -> Result<Principal, AuthError> {
        let action = match status {
            PrincipalStatus::Active => "principal.enable",
            PrincipalStatus::Disabled => "principal.disable",
        };
        let audit = NewAuditEvent {
            actor,
            action: action.into(),
            target_kind: "principal".into(),
            target_id: principal_id.to_string(),
            detail: serde_json::json!({}),
        };
        let principal = self
            .inner
            .store
            .set_principal_status(principal_id, status, audit)
            .await
            .map_err(|err| match err {
                StoreError::NotFound(_) => AuthError::PrincipalNotFound,
                other => AuthError::Store(other),
            })?;
        self.evict(|auth| auth.principal.id == principal_id);
        tracing::info!(principal_id = %principal_id, status = status.as_str(), "principal status set");
        Ok(principal)
    }
}

/// `30d`-style text for a duration, for error messages.
pub fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}
