//! The figures as `tracing` events, for a log pipeline or a metrics bridge: on demand
//! ([`OperatorFigures::emit`]) and, when the builder asks, every period
//! ([`SyncEngineBuilder::emit_figures_every`](crate::SyncEngineBuilder::emit_figures_every)).

use std::time::Duration;

use super::figures::OperatorFigures;
use crate::SyncEngine;

/// The `tracing` target of the figures' events: turn them on or off with a filter such
/// as `rhtmx_sync::metrics=info`.
pub const METRICS_TARGET: &str = "rhtmx_sync::metrics";

impl OperatorFigures {
    /// Logs these figures as one `INFO` event at target [`METRICS_TARGET`], message
    /// `"sync figures"`, with these fields (counts, bytes and versions as integers):
    ///
    /// `log_rows`, `log_bytes`, `log_oldest_version` (absent for an empty log),
    /// `log_head_version`, `log_horizon`, `changes_last_minute`, `changes_last_hour`,
    /// `log_conflicts`, `database_bytes`, `streams_open`, `streams_limit`,
    /// `streams_most_behind` (versions; 0 with no stream open), `idempotency_keys`,
    /// `idempotency_in_flight`, `idempotency_bytes`, `errors_total`, and after this
    /// engine's first compaction pass `compaction_removed`, `compaction_finished_at_ms`
    /// and `compaction_longest_transaction_us` (see [`crate::CompactionReport`]).
    ///
    /// Per-stream and per-conflict detail is left to the operator view: a metric
    /// should not grow with the number of clients.
    pub fn emit(&self) {
        let most_behind = self.streams.list.iter().map(|s| s.behind).max();
        let compaction = self.last_compaction.as_ref();
        tracing::info!(
            target: METRICS_TARGET,
            log_rows = self.log.rows,
            log_bytes = self.log.bytes,
            log_oldest_version = self.log.oldest_version,
            log_head_version = self.log.head_version,
            log_horizon = self.log.horizon,
            changes_last_minute = self.log.changes_last_minute,
            changes_last_hour = self.log.changes_last_hour,
            log_conflicts = self.log.conflicts,
            database_bytes = self.log.database_bytes,
            streams_open = self.streams.open as u64,
            streams_limit = self.streams.limit as u64,
            streams_most_behind = most_behind.unwrap_or(0),
            idempotency_keys = self.idempotency.keys,
            idempotency_in_flight = self.idempotency.in_flight,
            idempotency_bytes = self.idempotency.bytes,
            errors_total = self.errors.total,
            compaction_removed = compaction.map(|c| c.removed),
            compaction_finished_at_ms = compaction.map(|c| c.finished_at_ms),
            compaction_longest_transaction_us = compaction.map(|c| c.longest_transaction_us),
            "sync figures"
        );
    }
}

/// Reads and emits the figures of `engine` every `period`, the first one `period` after
/// the build, until the engine is dropped (the task holds it weakly, so it never keeps
/// the engine alive). A failed read is a warning at the same target; the next period
/// tries again.
pub(crate) fn emit_every(engine: &SyncEngine, period: Duration) {
    let span = tracing::info_span!("rhtmx_sync_metrics");
    crate::engine::every(engine, period, span, |engine| async move {
        match engine.figures().await {
            Ok(figures) => figures.emit(),
            Err(error) => {
                tracing::warn!(target: METRICS_TARGET, %error, "reading the sync figures failed");
            }
        }
    });
}
