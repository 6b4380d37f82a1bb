//! The call audit: one row per `tools/call`, with argument keys and size; argument values only
//! for tools whose manifest marks them safe to log.

use serde::Serialize;
use sqlx::Row;
use time::OffsetDateTime;

use chiron_core::time_util::to_millis;
use chiron_core::{PrincipalId, TokenId};

use crate::{rows, Store, StoreError};

/// A call to record or a recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallRecord {
    /// Unique call id, also given to the runner and to egress audit rows.
    pub call_id: String,
    /// When the call started.
    #[serde(with = "chiron_core::time_util::serde_rfc3339")]
    pub at: OffsetDateTime,
    /// Who called.
    pub principal_id: PrincipalId,
    /// With which token.
    pub token_id: TokenId,
    /// The MCP tool name as called.
    pub tool: String,
    /// The package serving it (empty when the tool was unknown).
    pub package: String,
    /// Top-level argument names.
    pub arg_keys: Vec<String>,
    /// Size of the serialized arguments.
    pub arg_bytes: i64,
    /// Serialized arguments, only for tools marked safe to log.
    pub arg_values: Option<String>,
    /// `ok`, `tool_error`, `invalid_arguments`, `unknown_tool`, `timeout`, `busy`,
    /// `runner_error`.
    pub outcome: String,
    /// Wall time in milliseconds.
    pub duration_ms: i64,
    /// The runner that ran it, if any.
    pub runner_id: Option<String>,
}

/// Which calls to return.
#[derive(Debug, Clone, Default)]
pub struct ToolCallFilter {
    /// Only this principal's calls.
    pub principal_id: Option<PrincipalId>,
    /// Only calls of this tool.
    pub tool: Option<String>,
    /// Only calls with this outcome.
    pub outcome: Option<String>,
    /// Only calls at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

impl Store {
    /// Appends a call audit row.
    pub async fn record_tool_call(&self, call: &ToolCallRecord) -> Result<(), StoreError> {
        self.record_tool_calls(std::slice::from_ref(call)).await
    }

    /// Appends call audit rows in one transaction.
    pub async fn record_tool_calls(&self, calls: &[ToolCallRecord]) -> Result<(), StoreError> {
        self.insert_rows(
            "INSERT INTO tool_calls (id, at, principal_id, token_id, tool, package, arg_keys,
                 arg_bytes, arg_values, outcome, duration_ms, runner_id, call_id)",
            13,
            calls,
            |query, call| {
                query
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(to_millis(call.at))
                    .bind(call.principal_id.to_string())
                    .bind(call.token_id.to_string())
                    .bind(call.tool.as_str())
                    .bind(call.package.as_str())
                    .bind(serde_json::to_string(&call.arg_keys).unwrap_or_else(|_| "[]".into()))
                    .bind(call.arg_bytes)
                    .bind(call.arg_values.as_deref())
                    .bind(call.outcome.as_str())
                    .bind(call.duration_ms)
                    .bind(call.runner_id.as_deref())
                    .bind(call.call_id.as_str())
            },
        )
        .await
    }

    /// Recorded calls matching `filter`, newest first.
    pub async fn list_tool_calls(
        &self,
        filter: &ToolCallFilter,
    ) -> Result<Vec<ToolCallRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM tool_calls
             WHERE ($1 IS NULL OR principal_id = $1) AND ($2 IS NULL OR tool = $2)
               AND ($3 IS NULL OR outcome = $3) AND at >= $4
             ORDER BY at DESC, id DESC LIMIT $5",
        )
        .bind(filter.principal_id.map(|id| id.to_string()))
        .bind(filter.tool.clone())
        .bind(filter.outcome.clone())
        .bind(filter.since.map(to_millis).unwrap_or(i64::MIN))
        .bind(i64::from(filter.limit.unwrap_or(100)))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let keys: String = row.try_get("arg_keys")?;
                Ok(ToolCallRecord {
                    call_id: row.try_get("call_id")?,
                    at: rows::millis(row, "at")?,
                    principal_id: rows::parsed(row, "tool_calls", "principal_id")?,
                    token_id: rows::parsed(row, "tool_calls", "token_id")?,
                    tool: row.try_get("tool")?,
                    package: row.try_get("package")?,
                    arg_keys: serde_json::from_str(&keys).map_err(|err| StoreError::Corrupt {
                        table: "tool_calls",
                        reason: format!("arg_keys: {err}"),
                    })?,
                    arg_bytes: row.try_get("arg_bytes")?,
                    arg_values: row.try_get("arg_values")?,
                    outcome: row.try_get("outcome")?,
                    duration_ms: row.try_get("duration_ms")?,
                    runner_id: row.try_get("runner_id")?,
                })
            })
            .collect()
    }
}
