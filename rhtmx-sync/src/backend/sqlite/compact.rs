//! The log as a compaction pass sees it, on SQLite (see `crate::compaction`): each
//! rewrite is one `BEGIN IMMEDIATE` transaction, so it takes its turn with the app's
//! writers and holds the write lock only while it rewrites a few thousand entries.

use std::time::{Duration, Instant};

use sqlx::{Connection, SqliteConnection};

use crate::compaction::{self, Candidate, CompactLog, Held, Plan, Policy};
use crate::error::Result;
use crate::log::{self, EFFECTIVE_HLC, LOG_TABLE};

/// `created_at` in Unix milliseconds.
const CREATED_MS: &str = "CAST(round((julianday(created_at) - 2440587.5) * 86400000.0) AS INTEGER)";

/// Unix milliseconds (bound as `?N`) in `created_at`'s format.
fn at(n: u8) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', ?{n} / 1000.0, 'unixepoch')")
}

impl CompactLog for SqliteConnection {
    async fn written_by(&mut self, ms: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT coalesce(\
               (SELECT version - 1 FROM {LOG_TABLE} WHERE created_at > {} \
                ORDER BY version LIMIT 1), \
               (SELECT max(version) FROM {LOG_TABLE}), 0)",
            at(1)
        ))
        .bind(ms)
        .fetch_one(self)
        .await?)
    }

    async fn horizon(&mut self) -> Result<i64> {
        log::horizon(self).await
    }

    async fn raise_horizon(&mut self, horizon: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('horizon', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = ?1 WHERE CAST(value AS INTEGER) < ?1",
        )
        .bind(horizon.to_string())
        .execute(self)
        .await?;
        Ok(())
    }

    async fn candidates(
        &mut self,
        horizon: i64,
        after: &(String, String),
        tombstones: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>> {
        Ok(sqlx::query_as(&format!(
            "SELECT entity, entity_id, count(*) FROM {LOG_TABLE} \
             WHERE version <= ?1 AND (entity, entity_id) > (?2, ?3) \
             GROUP BY entity, entity_id \
             HAVING count(*) > 1 OR (max(action) = 'delete' AND max(created_at) <= {}) \
             ORDER BY entity, entity_id LIMIT ?5",
            at(4)
        ))
        .bind(horizon)
        .bind(&after.0)
        .bind(&after.1)
        .bind(tombstones)
        .bind(limit)
        .fetch_all(self)
        .await?)
    }

    async fn counts(&mut self, entity: &str, ids: &[String]) -> Result<Vec<Candidate>> {
        let ids = serde_json::to_string(ids).expect("strings serialize");
        Ok(sqlx::query_as(&format!(
            "SELECT entity, entity_id, count(*) FROM {LOG_TABLE} \
             WHERE entity = ?1 AND entity_id IN (SELECT value FROM json_each(?2)) \
             GROUP BY entity, entity_id ORDER BY entity_id"
        ))
        .bind(entity)
        .bind(ids)
        .fetch_all(self)
        .await?)
    }

    async fn cuts(&mut self, row: &Candidate, horizon: i64, every: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT version FROM (SELECT version, row_number() OVER (ORDER BY version) AS n \
             FROM {LOG_TABLE} WHERE entity = ?1 AND entity_id = ?2 AND version <= ?3) \
             WHERE n % ?4 = 0 ORDER BY version"
        ))
        .bind(&row.0)
        .bind(&row.1)
        .bind(horizon)
        .bind(every)
        .fetch_all(self)
        .await?)
    }

    async fn rewrite(
        &mut self,
        rows: &[Candidate],
        horizon: i64,
        policy: Policy<'_>,
    ) -> Result<(Plan, Duration)> {
        let mut tx = self.begin_with("BEGIN IMMEDIATE").await?;
        // From when the lock is held: waiting for it is not holding it.
        let started = Instant::now();
        let mut held = Vec::new();
        for (entity, id, _) in rows {
            let entries: Vec<Held> = sqlx::query_as(&format!(
                "SELECT version, entity, entity_id, action, data, changed, client_id, \
                 {EFFECTIVE_HLC} AS hlc, {CREATED_MS} AS created_ms, \
                 conflict IS NOT NULL AS conflict, digest, clocks, \
                 (scope_before IS NOT NULL AND scope_before IS NOT scope_after \
                  AND action <> 'delete') AS left_scope \
                 FROM {LOG_TABLE} \
                 WHERE entity = ? AND entity_id = ? AND version <= ? ORDER BY version"
            ))
            .bind(entity)
            .bind(id)
            .bind(horizon)
            .fetch_all(&mut *tx)
            .await?;
            held.extend(entries);
        }
        let plan = compaction::plan(&held, policy);
        for (digest, entity, id, ms) in &plan.replays {
            sqlx::query(&format!(
                "INSERT OR IGNORE INTO _rhtmx_sync_replays (digest, entity, entity_id, created_at) \
                 VALUES (?1, ?2, ?3, {})",
                at(4)
            ))
            .bind(digest)
            .bind(entity)
            .bind(id)
            .bind(ms)
            .execute(&mut *tx)
            .await?;
        }
        for version in &plan.clear_conflicts {
            sqlx::query(&format!(
                "UPDATE {LOG_TABLE} SET conflict = NULL WHERE version = ?"
            ))
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        for (version, data) in &plan.scrub {
            sqlx::query(&format!(
                "UPDATE {LOG_TABLE} SET data = ? WHERE version = ?"
            ))
            .bind(data)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        for (version, clocks) in &plan.clocks {
            sqlx::query(&format!(
                "UPDATE {LOG_TABLE} SET clocks = ? WHERE version = ?"
            ))
            .bind(clocks)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        let versions = serde_json::to_string(&plan.remove).expect("numbers serialize");
        sqlx::query(&format!(
            "DELETE FROM {LOG_TABLE} WHERE version IN (SELECT value FROM json_each(?))"
        ))
        .bind(versions)
        .execute(&mut *tx)
        .await?;
        if plan.purges {
            // In the same transaction: a reader that read before it and after it sees the
            // count change (see `ReadLog::purges`).
            sqlx::query(
                "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('purges', '1') \
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((plan, started.elapsed()))
    }

    /// Twice as long as the lock was held. A writer that found the lock taken sleeps
    /// in SQLite's busy handler, 1, 2, 5 … then 100 ms between tries: with batches back
    /// to back it mostly woke while the next one held the lock, and waited up to
    /// 433 ms during one pass. With the lock free two thirds of the time it waits a few
    /// times what it does with no pass (BENCHMARKS.md, section 6); holding it free half
    /// the time was not enough.
    async fn pause(&mut self, held: Duration) {
        tokio::time::sleep(held * 2).await;
    }

    async fn expire_replays(&mut self, ms: i64) -> Result<u64> {
        Ok(sqlx::query(&format!(
            "DELETE FROM _rhtmx_sync_replays WHERE created_at <= {}",
            at(1)
        ))
        .bind(ms)
        .execute(self)
        .await?
        .rows_affected())
    }

    async fn ever_in_scope(&mut self, entity: &str, key: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT DISTINCT entity_id FROM {LOG_TABLE} \
             WHERE entity = ?1 AND (scope_before = ?2 OR scope_after = ?2)"
        ))
        .bind(entity)
        .bind(key)
        .fetch_all(self)
        .await?)
    }
}
