//! Decoding of rows into domain records, shared by the repository modules.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::Row;
use time::OffsetDateTime;

use chiron_core::time_util::from_millis;
use chiron_core::{
    Actor, AuditEvent, ExternalIdentity, Group, McpToken, Principal, PrincipalStatus,
};

use crate::StoreError;

/// Reads one column and parses it with `FromStr`, reporting the table on failure.
pub(crate) fn parsed<T>(row: &AnyRow, table: &'static str, column: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(column)?;
    text.parse().map_err(|err: T::Err| StoreError::Corrupt {
        table,
        reason: format!("{column}: {err}"),
    })
}

pub(crate) fn millis(row: &AnyRow, column: &str) -> Result<OffsetDateTime, StoreError> {
    Ok(from_millis(row.try_get::<i64, _>(column)?))
}

pub(crate) fn opt_millis(row: &AnyRow, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(from_millis))
}

pub(crate) fn principal(row: &AnyRow) -> Result<Principal, StoreError> {
    Ok(Principal {
        id: parsed(row, "principals", "id")?,
        display_name: row.try_get("display_name")?,
        status: parsed::<PrincipalStatus>(row, "principals", "status")?,
        created_at: millis(row, "created_at")?,
    })
}

pub(crate) fn identity(row: &AnyRow) -> Result<ExternalIdentity, StoreError> {
    Ok(ExternalIdentity {
        provider: row.try_get("provider")?,
        tenant: row.try_get("tenant")?,
        subject: row.try_get("subject")?,
        principal_id: parsed(row, "external_identities", "principal_id")?,
        created_at: millis(row, "created_at")?,
    })
}

pub(crate) fn group(row: &AnyRow) -> Result<Group, StoreError> {
    Ok(Group {
        id: parsed(row, "principal_groups", "id")?,
        name: row.try_get("name")?,
        created_at: millis(row, "created_at")?,
    })
}

pub(crate) fn token(row: &AnyRow) -> Result<McpToken, StoreError> {
    Ok(McpToken {
        id: parsed(row, "mcp_tokens", "id")?,
        principal_id: parsed(row, "mcp_tokens", "principal_id")?,
        name: row.try_get("name")?,
        display_prefix: row.try_get("display_prefix")?,
        scopes: parsed(row, "mcp_tokens", "scopes")?,
        audience: row.try_get("audience")?,
        created_via: parsed(row, "mcp_tokens", "created_via")?,
        created_at: millis(row, "created_at")?,
        expires_at: millis(row, "expires_at")?,
        last_used_at: opt_millis(row, "last_used_at")?,
        revoked_at: opt_millis(row, "revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
    })
}

pub(crate) fn audit(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let actor_principal: Option<String> = row.try_get("actor_principal_id")?;
    let actor_principal = actor_principal
        .map(|text| text.parse())
        .transpose()
        .map_err(|err: uuid::Error| StoreError::Corrupt {
            table: "audit_events",
            reason: format!("actor_principal_id: {err}"),
        })?;
    let detail: String = row.try_get("detail")?;
    Ok(AuditEvent {
        id: parsed(row, "audit_events", "id")?,
        at: millis(row, "at")?,
        actor: Actor {
            principal_id: actor_principal,
            via: row.try_get("actor_via")?,
        },
        action: row.try_get("action")?,
        target_kind: row.try_get("target_kind")?,
        target_id: row.try_get("target_id")?,
        detail: serde_json::from_str(&detail).map_err(|err| StoreError::Corrupt {
            table: "audit_events",
            reason: format!("detail: {err}"),
        })?,
    })
}
