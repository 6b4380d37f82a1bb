//! Audit retention: tool call and egress rows older than `audit.retention` are deleted, once
//! when a server starts and then every hour. Every replica does it; deleting twice is harmless.
//! Administrative audit events are kept.

use std::time::Duration;

use chiron_core::time_util::now;
use chiron_store::audit::Pruned;
use chiron_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// How often a server prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// `d` as a person would write a retention: whole days as `90d`, else hours, minutes and
/// seconds (`humantime`'s months are 30.44 days: 90 days would read "2months 29days 2h…").
pub fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    if secs > 0 && secs.is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Deletes the rows older than `older_than`; `None` when that reaches back before any
/// representable time (nothing can be that old).
pub async fn prune(store: &Store, older_than: Duration) -> Result<Option<Pruned>, StoreError> {
    let Some(before) = time::Duration::try_from(older_than)
        .ok()
        .and_then(|age| now().checked_sub(age))
    else {
        return Ok(None);
    };
    store.prune_audit(before).await.map(Some)
}

/// Prunes now and every [`PRUNE_EVERY`] until `stop`; nothing when `retention` is zero.
pub fn spawn_pruner(
    store: Store,
    retention: Duration,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if retention.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match prune(&store, retention).await {
                Ok(Some(pruned)) if pruned != Pruned::default() => tracing::info!(
                    tool_calls = pruned.tool_calls,
                    egress_requests = pruned.egress_requests,
                    retention = %describe(retention),
                    "old audit rows deleted"
                ),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "could not delete old audit rows"),
            }
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => break,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chiron_store::testing::tool_call;

    #[tokio::test]
    async fn a_server_prunes_when_it_starts_and_not_with_retention_zero() {
        let (store, _db) = chiron_store::testing::store(chiron_store::Backend::Sqlite).await;
        store
            .record_tool_calls(&[
                tool_call("old", time::Duration::days(40)),
                tool_call("new", time::Duration::days(1)),
            ])
            .await
            .unwrap();
        let kept = || async {
            let calls = store.list_tool_calls(&Default::default()).await.unwrap();
            calls.into_iter().map(|c| c.call_id).collect::<Vec<_>>()
        };
        assert!(spawn_pruner(store.clone(), Duration::ZERO, CancellationToken::new()).is_none());

        let stop = CancellationToken::new();
        let pruner = spawn_pruner(
            store.clone(),
            Duration::from_secs(30 * 86_400),
            stop.clone(),
        )
        .expect("a pruner");
        stop.cancel();
        pruner.await.unwrap();
        assert_eq!(kept().await, ["new"]);
        assert_eq!(describe(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(describe(Duration::from_secs(36 * 3600)), "1day 12h");
    }
}
