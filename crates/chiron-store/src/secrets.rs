//! Sealed secret values and the egress audit. This module stores and returns ciphertext only;
//! sealing and opening (and the master key) belong to the egress crate.

use serde::Serialize;
use sqlx::Row;
use time::OffsetDateTime;

use chiron_core::time_util::{now, to_millis};
use chiron_core::PrincipalId;

use crate::{Store, StoreError};

/// Whose value a secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum SecretOwner {
    /// One principal's value.
    Principal(PrincipalId),
    /// The team-wide fallback.
    Team,
}

impl SecretOwner {
    fn columns(self) -> (&'static str, String) {
        match self {
            Self::Principal(id) => ("principal", id.to_string()),
            Self::Team => ("team", String::new()),
        }
    }

    fn from_columns(kind: &str, id: &str) -> Result<Self, StoreError> {
        match kind {
            "team" => Ok(Self::Team),
            "principal" => id
                .parse()
                .map(Self::Principal)
                .map_err(|_| StoreError::Corrupt {
                    table: "secrets",
                    reason: "not a principal id".into(),
                }),
            _ => Err(StoreError::Corrupt {
                table: "secrets",
                reason: format!("unknown owner kind {kind:?}"),
            }),
        }
    }
}

/// A sealed value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The secret's name (e.g. `GITHUB_TOKEN`).
    pub name: String,
    /// Whose value.
    pub owner: SecretOwner,
    /// The master key that sealed it.
    pub key_id: String,
    /// AES-GCM nonce.
    pub nonce: Vec<u8>,
    /// AES-GCM ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

/// What `chiron secret list` shows: never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// Whose value.
    pub owner: SecretOwner,
    /// When the value was last set.
    #[serde(with = "chiron_core::time_util::serde_rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One proxied request, for the egress audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRecord {
    /// When it started.
    #[serde(with = "chiron_core::time_util::serde_rfc3339")]
    pub at: OffsetDateTime,
    /// Whose runner sent it.
    pub principal_id: PrincipalId,
    /// Which runner.
    pub runner_id: String,
    /// The package of the process that sent it (empty when unidentified).
    pub package: String,
    /// The MCP call it belongs to, if any.
    pub call_id: Option<String>,
    /// HTTP method (`CONNECT` for refused tunnels).
    pub method: String,
    /// Target host.
    pub host: String,
    /// Path without the query.
    pub path: String,
    /// Status returned to the tool.
    pub status: i64,
    /// Request body bytes sent upstream.
    pub bytes_out: i64,
    /// Response body bytes returned.
    pub bytes_in: i64,
    /// Wall time in milliseconds.
    pub duration_ms: i64,
    /// Names of injected secrets (never values).
    pub injected: Vec<String>,
    /// `ok`, `denied_host`, `denied_address`, `mismatch`, `placeholder_refused`,
    /// `unauthenticated`, `upstream_error`, `secrets_unavailable`.
    pub outcome: String,
}

fn hex_column(row: &sqlx::any::AnyRow, column: &'static str) -> Result<Vec<u8>, StoreError> {
    let text: String = row.try_get(column)?;
    hex::decode(text).map_err(|err| StoreError::Corrupt {
        table: "secrets",
        reason: format!("{column}: {err}"),
    })
}

fn sealed_row(row: &sqlx::any::AnyRow) -> Result<SealedSecret, StoreError> {
    let kind: String = row.try_get("owner_kind")?;
    let id: String = row.try_get("owner_id")?;
    Ok(SealedSecret {
        name: row.try_get("name")?,
        owner: SecretOwner::from_columns(&kind, &id)?,
        key_id: row.try_get("key_id")?,
        nonce: hex_column(row, "nonce")?,
        ciphertext: hex_column(row, "ciphertext")?,
    })
}

/// The PostgreSQL channel on which every change to the `secrets` table is announced, so that
/// replicas drop the values they keep in memory.
pub const SECRETS_CHANNEL: &str = "chiron_secrets";

/// Change notifications for the `secrets` table from every replica (PostgreSQL only).
pub struct SecretChanges {
    listener: sqlx::postgres::PgListener,
}

impl SecretChanges {
    /// Listens on [`SECRETS_CHANNEL`] of the PostgreSQL database at `url`.
    pub async fn listen(url: &str) -> Result<Self, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(SECRETS_CHANNEL).await?;
        Ok(Self { listener })
    }

    /// Waits for the next change. `Ok(false)` means the connection was lost (and is being
    /// re-established): changes in between are unknown, so callers must assume one.
    pub async fn next(&mut self) -> Result<bool, StoreError> {
        Ok(self.listener.try_recv().await?.is_some())
    }
}

impl Store {
    /// Tells other replicas that `secrets` changed (PostgreSQL `NOTIFY`; on SQLite every
    /// process shares the host, and the secret store's marker file does this).
    async fn announce_secret_change(&self) -> Result<(), StoreError> {
        if self.backend() == crate::Backend::Postgres {
            sqlx::query(&format!("NOTIFY {SECRETS_CHANNEL}"))
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    /// Stores (or replaces) a sealed value.
    pub async fn put_secret(&self, secret: &SealedSecret) -> Result<(), StoreError> {
        let (kind, id) = secret.owner.columns();
        let at = to_millis(now());
        sqlx::query(
            "INSERT INTO secrets (id, name, owner_kind, owner_id, key_id, nonce, ciphertext,
                                  created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (name, owner_kind, owner_id) DO UPDATE SET
                 key_id = excluded.key_id, nonce = excluded.nonce,
                 ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(secret.name.clone())
        .bind(kind)
        .bind(id)
        .bind(secret.key_id.clone())
        .bind(hex::encode(&secret.nonce))
        .bind(hex::encode(&secret.ciphertext))
        .bind(at)
        .execute(self.pool())
        .await?;
        self.announce_secret_change().await
    }

    /// Deletes a value; returns whether it existed.
    pub async fn delete_secret(&self, name: &str, owner: SecretOwner) -> Result<bool, StoreError> {
        let (kind, id) = owner.columns();
        let done = sqlx::query(
            "DELETE FROM secrets WHERE name = $1 AND owner_kind = $2 AND owner_id = $3",
        )
        .bind(name.to_owned())
        .bind(kind)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() > 0 {
            self.announce_secret_change().await?;
        }
        Ok(done.rows_affected() > 0)
    }

    /// The sealed values of `names` that apply to `principal`: its own and the team's.
    pub async fn secrets_for(
        &self,
        principal: PrincipalId,
    ) -> Result<Vec<SealedSecret>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM secrets
             WHERE (owner_kind = 'principal' AND owner_id = $1) OR owner_kind = 'team'",
        )
        .bind(principal.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(sealed_row).collect()
    }

    /// Every sealed value (for key rotation).
    pub async fn all_secrets(&self) -> Result<Vec<SealedSecret>, StoreError> {
        let rows = sqlx::query("SELECT * FROM secrets ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(sealed_row).collect()
    }

    /// Replaces every sealed value at once (key rotation); all or nothing.
    pub async fn reseal_secrets(&self, secrets: &[SealedSecret]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for secret in secrets {
            let (kind, id) = secret.owner.columns();
            sqlx::query(
                "UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3
                 WHERE name = $4 AND owner_kind = $5 AND owner_id = $6",
            )
            .bind(secret.key_id.clone())
            .bind(hex::encode(&secret.nonce))
            .bind(hex::encode(&secret.ciphertext))
            .bind(secret.name.clone())
            .bind(kind)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.announce_secret_change().await
    }

    /// Names, owners and update times; optionally only one principal's (and the team's).
    pub async fn list_secrets(
        &self,
        principal: Option<PrincipalId>,
    ) -> Result<Vec<SecretInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, owner_kind, owner_id, updated_at FROM secrets
             WHERE $1 IS NULL OR owner_kind = 'team' OR owner_id = $1
             ORDER BY name, owner_kind, owner_id",
        )
        .bind(principal.map(|p| p.to_string()))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("owner_kind")?;
                let id: String = row.try_get("owner_id")?;
                Ok(SecretInfo {
                    name: row.try_get("name")?,
                    owner: SecretOwner::from_columns(&kind, &id)?,
                    updated_at: crate::rows::millis(row, "updated_at")?,
                })
            })
            .collect()
    }

    /// Appends an egress audit row.
    pub async fn record_egress(&self, record: &EgressRecord) -> Result<(), StoreError> {
        self.record_egress_batch(std::slice::from_ref(record)).await
    }

    /// Appends egress audit rows: one statement per [`crate::INSERT_CHUNK`] rows, all in one
    /// transaction.
    pub async fn record_egress_batch(&self, records: &[EgressRecord]) -> Result<(), StoreError> {
        self.insert_rows(
            "INSERT INTO egress_requests (id, at, principal_id, runner_id, package, call_id,
                 method, host, path, status, bytes_in, bytes_out, duration_ms, injected, outcome)",
            15,
            records,
            |query, record| {
                query
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(to_millis(record.at))
                    .bind(record.principal_id.to_string())
                    .bind(record.runner_id.as_str())
                    .bind(record.package.as_str())
                    .bind(record.call_id.as_deref())
                    .bind(record.method.as_str())
                    .bind(record.host.as_str())
                    .bind(record.path.as_str())
                    .bind(record.status)
                    .bind(record.bytes_in)
                    .bind(record.bytes_out)
                    .bind(record.duration_ms)
                    .bind(record.injected.join(","))
                    .bind(record.outcome.as_str())
            },
        )
        .await
    }

    /// Egress audit rows, newest first: all, or one call's.
    pub async fn egress_requests(
        &self,
        call_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EgressRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM egress_requests WHERE $1 IS NULL OR call_id = $1
             ORDER BY id DESC LIMIT $2",
        )
        .bind(call_id.map(str::to_owned))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let injected: String = row.try_get("injected")?;
                Ok(EgressRecord {
                    at: crate::rows::millis(row, "at")?,
                    principal_id: crate::rows::parsed(row, "egress_requests", "principal_id")?,
                    runner_id: row.try_get("runner_id")?,
                    package: row.try_get("package")?,
                    call_id: row.try_get("call_id")?,
                    method: row.try_get("method")?,
                    host: row.try_get("host")?,
                    path: row.try_get("path")?,
                    status: row.try_get("status")?,
                    bytes_in: row.try_get("bytes_in")?,
                    bytes_out: row.try_get("bytes_out")?,
                    duration_ms: row.try_get("duration_ms")?,
                    injected: injected
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    outcome: row.try_get("outcome")?,
                })
            })
            .collect()
    }
}

/// A standalone-proxy credential as stored (its hash only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressCredential {
    /// Stable id, for revocation.
    pub id: String,
    /// Whose requests it makes.
    pub principal_id: PrincipalId,
    /// The runner it was issued to.
    pub runner_id: String,
    /// The package whose declarations apply.
    pub package: String,
    /// When it was revoked, if it was.
    #[serde(with = "chiron_core::time_util::serde_rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl Store {
    /// Records a standalone-proxy credential by the hash of its secret; returns its id.
    pub async fn insert_egress_credential(
        &self,
        token_hash: &str,
        principal_id: PrincipalId,
        runner_id: &str,
        package: &str,
    ) -> Result<String, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO egress_credentials (id, token_hash, principal_id, runner_id, package,
                 created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.clone())
        .bind(token_hash.to_owned())
        .bind(principal_id.to_string())
        .bind(runner_id.to_owned())
        .bind(package.to_owned())
        .bind(to_millis(now()))
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    /// The unrevoked credential with this hash.
    pub async fn find_egress_credential(
        &self,
        token_hash: &str,
    ) -> Result<Option<EgressCredential>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM egress_credentials WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash.to_owned())
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(EgressCredential {
                id: row.try_get("id")?,
                principal_id: crate::rows::parsed(&row, "egress_credentials", "principal_id")?,
                runner_id: row.try_get("runner_id")?,
                package: row.try_get("package")?,
                revoked_at: crate::rows::opt_millis(&row, "revoked_at")?,
            })
        })
        .transpose()
    }

    /// Revokes a credential; returns whether an unrevoked one existed.
    pub async fn revoke_egress_credential(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE egress_credentials SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(to_millis(now()))
        .bind(id.to_owned())
        .execute(self.pool())
        .await?;
        if done.rows_affected() > 0 {
            self.announce_secret_change().await?;
        }
        Ok(done.rows_affected() > 0)
    }
}
