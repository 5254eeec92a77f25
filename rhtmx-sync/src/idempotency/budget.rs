//! Bounds on the key table: what it holds (a metric), and keeping it within budget.
//!
//! Every keyed write adds a row, so without a bound the table grows with the write
//! rate, not with what replays need. Over budget, the oldest completed keys first lose
//! their bodies — the key row (status and headers, a few hundred bytes) still stops a
//! second execution — and only if that is not enough are the oldest completed keys
//! deleted. Keys in flight are never touched.

#[cfg(feature = "sqlite")]
use sqlx::{SqliteExecutor, SqlitePool};

use crate::error::Result;

/// What the key table holds, counted as it is written (by triggers, so every process
/// on the database counts): see [`IdempotencyLayer::usage`](super::IdempotencyLayer::usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IdempotencyUsage {
    /// Keys stored, completed or in flight.
    pub keys: u64,
    /// Bytes their data takes: keys, fingerprints, stored headers (as JSON) and
    /// bodies. SQLite's own overhead (pages, the index) is not included.
    pub bytes: u64,
}

/// The budget: the most keys and bytes the table may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub max_keys: u64,
    pub max_bytes: u64,
}

impl IdempotencyUsage {
    /// From the totals' columns (never negative in a consistent table).
    pub(crate) fn new(keys: i64, bytes: i64) -> IdempotencyUsage {
        IdempotencyUsage {
            keys: u64::try_from(keys).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        }
    }
}

#[cfg(feature = "sqlite")]
/// The running totals.
pub(super) async fn usage(db: impl SqliteExecutor<'_>) -> Result<IdempotencyUsage> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT keys, bytes FROM _rhtmx_sync_idempotency_usage WHERE id = 0")
            .fetch_optional(db)
            .await?;
    let (keys, bytes) = row.unwrap_or_default();
    Ok(IdempotencyUsage::new(keys, bytes))
}

#[cfg(feature = "sqlite")]
/// Drops the bodies of the oldest completed keys until `?1` bytes are freed.
const DROP_BODIES: &str = "
UPDATE _rhtmx_sync_idempotency SET body = NULL WHERE key IN (
    SELECT key FROM (
        SELECT key, coalesce(sum(length(body)) OVER (ORDER BY created_at, key
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS freed_before
        FROM _rhtmx_sync_idempotency
        WHERE state = 'completed' AND length(body) > 0
    ) WHERE freed_before < ?1
)";

#[cfg(feature = "sqlite")]
/// Deletes the oldest completed keys: at least `?1` of them, and until `?2` bytes are
/// freed.
const DELETE_OLDEST: &str = "
DELETE FROM _rhtmx_sync_idempotency WHERE key IN (
    SELECT key FROM (
        SELECT key,
            row_number() OVER w AS n,
            coalesce(sum(length(key) + length(fingerprint) + coalesce(length(headers), 0)
                + coalesce(length(body), 0)) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                AND 1 PRECEDING), 0) AS freed_before
        FROM _rhtmx_sync_idempotency
        WHERE state = 'completed'
        WINDOW w AS (ORDER BY created_at, key)
    ) WHERE n <= ?1 OR freed_before < ?2
)";

/// If the table is over `budget`, brings it down to 90% of it (so the next few writes
/// do not each pay for an eviction). Failure is logged only: the write it follows has
/// been stored, and the next one tries again.
pub(super) async fn keep_within(pool: &crate::Pool, budget: Budget) {
    if let Err(e) = evict(pool, budget).await {
        tracing::warn!(error = %e, "keeping the idempotency store within budget failed");
    }
}

async fn evict(pool: &crate::Pool, budget: Budget) -> Result<()> {
    let now = match pool {
        #[cfg(feature = "sqlite")]
        crate::Pool::Sqlite(pool) => usage(pool).await?,
        #[cfg(feature = "postgres")]
        crate::Pool::Postgres(pool) => {
            crate::backend::postgres::idempotency::usage(&mut *pool.acquire().await?).await?
        }
    };
    if now.keys <= budget.max_keys && now.bytes <= budget.max_bytes {
        return Ok(());
    }
    let goals = (
        budget.max_keys - budget.max_keys / 10,
        budget.max_bytes - budget.max_bytes / 10,
    );
    let (after, bodies, keys) = match pool {
        #[cfg(feature = "sqlite")]
        crate::Pool::Sqlite(pool) => evict_sqlite(pool, goals).await?,
        #[cfg(feature = "postgres")]
        crate::Pool::Postgres(pool) => {
            crate::backend::postgres::idempotency::evict(pool, goals).await?
        }
    };
    tracing::debug!(
        keys = after.keys,
        bytes = after.bytes,
        bodies_dropped = bodies,
        "idempotency store over budget: oldest bodies dropped"
    );
    if keys > 0 {
        // Within their retention these keys no longer stop a second execution.
        tracing::warn!(
            keys_evicted = keys,
            keys = after.keys,
            bytes = after.bytes,
            "idempotency key budget reached: the oldest keys were deleted before their \
             retention ended, and a replay of one runs again; raise max_keys or max_bytes"
        );
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
/// One eviction step on SQLite: the totals after it, and how many bodies and keys went.
async fn evict_sqlite(
    pool: &SqlitePool,
    (keys_goal, bytes_goal): (u64, u64),
) -> Result<(IdempotencyUsage, u64, u64)> {
    // IMMEDIATE: two requests over budget at once evict once, not twice as much.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let before = usage(&mut *tx).await?;
    let mut bodies = 0;
    if before.bytes > bytes_goal {
        bodies = sqlx::query(DROP_BODIES)
            .bind(to_i64(before.bytes - bytes_goal))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let mid = usage(&mut *tx).await?;
    let mut keys = 0;
    if mid.keys > keys_goal || mid.bytes > bytes_goal {
        keys = sqlx::query(DELETE_OLDEST)
            .bind(to_i64(mid.keys.saturating_sub(keys_goal)))
            .bind(to_i64(mid.bytes.saturating_sub(bytes_goal)))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let after = usage(&mut *tx).await?;
    tx.commit().await?;
    Ok((after, bodies, keys))
}

#[cfg(feature = "sqlite")]
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
