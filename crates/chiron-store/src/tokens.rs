//! MCP token records. Storage holds the token's keyed hash and metadata, never the token.

use time::OffsetDateTime;

use chiron_core::time_util::{now, to_millis};
use chiron_core::{McpToken, NewAuditEvent, Principal, PrincipalId, TokenId};

use crate::audit::insert_audit;
use crate::{conflict_or, rows, Store, StoreError};

/// The columns of `mcp_tokens` plus its principal's, with the principal's prefixed `p_`.
const TOKEN_WITH_PRINCIPAL: &str = "SELECT t.*, p.display_name AS p_display_name, \
     p.status AS p_status, p.created_at AS p_created_at \
     FROM mcp_tokens t JOIN principals p ON p.id = t.principal_id";

impl Store {
    /// Stores a newly issued token's record and hash and its audit event together.
    pub async fn insert_token(
        &self,
        token: &McpToken,
        token_hash: &str,
        audit: NewAuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO mcp_tokens (id, principal_id, token_hash, display_prefix, name, scopes,
                 audience, created_via, created_at, expires_at, last_used_at, revoked_at,
                 revoke_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, NULL)",
        )
        .bind(token.id.to_string())
        .bind(token.principal_id.to_string())
        .bind(token_hash.to_owned())
        .bind(token.display_prefix.clone())
        .bind(token.name.clone())
        .bind(token.scopes.to_string())
        .bind(token.audience.clone())
        .bind(token.created_via.as_str())
        .bind(to_millis(token.created_at))
        .bind(to_millis(token.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|err| conflict_or(err, "token"))?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token with this hash and its principal, in one query (the verification path).
    pub async fn token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(McpToken, Principal)>, StoreError> {
        let row = sqlx::query(&format!("{TOKEN_WITH_PRINCIPAL} WHERE t.token_hash = $1"))
            .bind(token_hash.to_owned())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let token = rows::token(&row)?;
        let principal = Principal {
            id: token.principal_id,
            display_name: sqlx::Row::try_get(&row, "p_display_name")?,
            status: rows::parsed(&row, "principals", "p_status")?,
            created_at: rows::millis(&row, "p_created_at")?,
        };
        Ok(Some((token, principal)))
    }

    /// The token record with this id, if any.
    pub async fn get_token(&self, id: TokenId) -> Result<Option<McpToken>, StoreError> {
        let row = sqlx::query("SELECT * FROM mcp_tokens WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(rows::token).transpose()
    }

    /// A principal's tokens, newest first; with `include_inactive` also revoked and expired
    /// ones.
    pub async fn list_tokens(
        &self,
        principal_id: PrincipalId,
        include_inactive: bool,
    ) -> Result<Vec<McpToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM mcp_tokens
             WHERE principal_id = $1 AND ($2 OR (revoked_at IS NULL AND expires_at > $3))
             ORDER BY id DESC",
        )
        .bind(principal_id.to_string())
        .bind(include_inactive)
        .bind(to_millis(now()))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rows::token).collect()
    }

    /// Revokes one token and records `audit` with it. Revoking a revoked token keeps the first
    /// revocation's time and reason. `NotFound` if no such token exists.
    pub async fn revoke_token(
        &self,
        id: TokenId,
        reason: &str,
        audit: NewAuditEvent,
    ) -> Result<McpToken, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "UPDATE mcp_tokens SET revoked_at = COALESCE(revoked_at, $1),
                 revoke_reason = COALESCE(revoke_reason, $2)
             WHERE id = $3 RETURNING *",
        )
        .bind(to_millis(now()))
        .bind(reason.to_owned())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound("token"));
        };
        let token = rows::token(&row)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Revokes every live token of a principal and records `audit`; returns the ids revoked.
    pub async fn revoke_all_tokens(
        &self,
        principal_id: PrincipalId,
        reason: &str,
        audit: NewAuditEvent,
    ) -> Result<Vec<TokenId>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(
            "UPDATE mcp_tokens SET revoked_at = $1, revoke_reason = $2
             WHERE principal_id = $3 AND revoked_at IS NULL RETURNING id",
        )
        .bind(to_millis(now()))
        .bind(reason.to_owned())
        .bind(principal_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let ids = rows
            .iter()
            .map(|row| rows::parsed(row, "mcp_tokens", "id"))
            .collect::<Result<Vec<TokenId>, _>>()?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Records that tokens were used; a time only ever moves `last_used_at` forward.
    pub async fn touch_tokens(&self, uses: &[(TokenId, OffsetDateTime)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for (id, at) in uses {
            sqlx::query(
                "UPDATE mcp_tokens SET last_used_at = $1
                 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(to_millis(*at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
