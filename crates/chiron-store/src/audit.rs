//! The audit log: append-only rows naming who did what to which object. Values that could be
//! secret (tokens, secret values) never appear; only ids and names do.

use sqlx::any::Any;
use sqlx::Transaction;
use time::OffsetDateTime;

use chiron_core::time_util::{now, to_millis};
use chiron_core::{AuditEvent, AuditId, NewAuditEvent};

use crate::{rows, Store, StoreError};

/// Which audit events to return, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events with exactly this action.
    pub action: Option<String>,
    /// Only events on this target id.
    pub target_id: Option<String>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// What [`Store::prune_audit`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Tool call rows.
    pub tool_calls: u64,
    /// Egress request rows.
    pub egress_requests: u64,
}

/// Rows deleted per statement: a long delete would hold SQLite's write lock (and keep audit
/// writers waiting) for its whole length.
const PRUNE_CHUNK: i64 = 5000;

impl Store {
    /// Deletes tool call and egress rows from before `before`, a chunk at a time.
    /// Administrative audit events are kept.
    pub async fn prune_audit(&self, before: OffsetDateTime) -> Result<Pruned, StoreError> {
        let before = to_millis(before);
        let mut pruned = Pruned::default();
        for (table, count) in [
            ("tool_calls", &mut pruned.tool_calls),
            ("egress_requests", &mut pruned.egress_requests),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE id IN \
                 (SELECT id FROM {table} WHERE at < $1 ORDER BY at LIMIT $2)"
            );
            loop {
                let done = sqlx::query(&sql)
                    .bind(before)
                    .bind(PRUNE_CHUNK)
                    .execute(self.pool())
                    .await?;
                *count += done.rows_affected();
                if done.rows_affected() < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// Appends one audit event on its own.
    pub async fn record_audit(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let mut tx = self.pool().begin().await?;
        let recorded = insert_audit(&mut tx, event).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Audit events matching `filter`, newest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let since = filter.since.map(to_millis).unwrap_or(i64::MIN);
        let limit = i64::from(filter.limit.unwrap_or(100));
        let rows = sqlx::query(
            "SELECT * FROM audit_events
             WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR target_id = $2) AND at >= $3
             ORDER BY at DESC, id DESC LIMIT $4",
        )
        .bind(filter.action.clone())
        .bind(filter.target_id.clone())
        .bind(since)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(rows::audit).collect()
    }
}

/// Inserts an audit event inside a caller's transaction, so the audited change and its row
/// commit together.
pub(crate) async fn insert_audit(
    tx: &mut Transaction<'_, Any>,
    event: NewAuditEvent,
) -> Result<AuditEvent, StoreError> {
    let recorded = AuditEvent {
        id: AuditId::new(),
        at: now(),
        actor: event.actor,
        action: event.action,
        target_kind: event.target_kind,
        target_id: event.target_id,
        detail: event.detail,
    };
    sqlx::query(
        "INSERT INTO audit_events
         (id, at, actor_principal_id, actor_via, action, target_kind, target_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(recorded.id.to_string())
    .bind(to_millis(recorded.at))
    .bind(recorded.actor.principal_id.map(|id| id.to_string()))
    .bind(recorded.actor.via.clone())
    .bind(recorded.action.clone())
    .bind(recorded.target_kind.clone())
    .bind(recorded.target_id.clone())
    .bind(recorded.detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(recorded)
}
