//! The log as a compaction pass sees it, on PostgreSQL (see `crate::compaction`): each
//! rewrite is one short transaction. It only touches numbered entries at or below the
//! horizon, which no writer or stamper changes, so it takes no lock the app's writers
//! wait for; two instances compacting at once do the same work twice, harmlessly.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::{begin_read_committed, EFFECTIVE_HLC};
use crate::backend::ReadLog;
use crate::compaction::{self, Candidate, CompactLog, Held, Plan, Policy};
use crate::error::Result;

/// Unix milliseconds (bound as `$N`) as a timestamp.
fn at(n: u8) -> String {
    format!("to_timestamp(${n} / 1000.0)")
}

impl CompactLog for PgConnection {
    async fn written_by(&mut self, ms: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT coalesce(\
               (SELECT version - 1 FROM _rhtmx_sync_log \
                WHERE version IS NOT NULL AND created_at > {} ORDER BY version LIMIT 1), \
               (SELECT max(version) FROM _rhtmx_sync_log), 0)",
            at(1)
        ))
        .bind(ms)
        .fetch_one(self)
        .await?)
    }

    async fn horizon(&mut self) -> Result<i64> {
        ReadLog::horizon(self).await
    }

    async fn raise_horizon(&mut self, horizon: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('horizon', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value \
             WHERE _rhtmx_sync_meta.value::bigint < excluded.value::bigint",
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
            "SELECT entity, entity_id, count(*) FROM _rhtmx_sync_log \
             WHERE version <= $1 AND (entity, entity_id) > ($2, $3) \
             GROUP BY entity, entity_id \
             HAVING count(*) > 1 OR (max(action) = 'delete' AND max(created_at) <= {}) \
             ORDER BY entity, entity_id LIMIT $5",
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
        // Committed entries still waiting for their version are numbered first: a
        // rewrite only reads numbered ones.
        self.settled_head().await?;
        Ok(sqlx::query_as(
            "SELECT entity, entity_id, count(*) FROM _rhtmx_sync_log \
             WHERE entity = $1 AND entity_id = ANY($2) AND version IS NOT NULL \
             GROUP BY entity, entity_id ORDER BY entity_id",
        )
        .bind(entity)
        .bind(ids)
        .fetch_all(self)
        .await?)
    }

    async fn cuts(&mut self, row: &Candidate, horizon: i64, every: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT version FROM (SELECT version, row_number() OVER (ORDER BY version) AS n \
             FROM _rhtmx_sync_log WHERE entity = $1 AND entity_id = $2 AND version <= $3) AS run \
             WHERE n % $4 = 0 ORDER BY version",
        )
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
        let mut tx = begin_read_committed(self).await?;
        let started = Instant::now();
        let mut held = Vec::new();
        for (entity, id, _) in rows {
            let entries: Vec<Held> = sqlx::query_as(&format!(
                "SELECT version, entity, entity_id, action, data, changed, client_id, \
                 {EFFECTIVE_HLC} AS hlc, floor(extract(epoch FROM created_at) * 1000)::bigint \
                 AS created_ms, conflict IS NOT NULL AS conflict, digest, clocks, \
                 (scope_before IS NOT NULL AND scope_before IS DISTINCT FROM scope_after \
                  AND action <> 'delete') AS left_scope \
                 FROM _rhtmx_sync_log \
                 WHERE entity = $1 AND entity_id = $2 AND version <= $3 ORDER BY version"
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
                "INSERT INTO _rhtmx_sync_replays (digest, entity, entity_id, created_at) \
                 VALUES ($1, $2, $3, {}) ON CONFLICT DO NOTHING",
                at(4)
            ))
            .bind(digest)
            .bind(entity)
            .bind(id)
            .bind(ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE _rhtmx_sync_log SET conflict = NULL WHERE version = ANY($1)")
            .bind(&plan.clear_conflicts)
            .execute(&mut *tx)
            .await?;
        for (version, data) in &plan.scrub {
            sqlx::query("UPDATE _rhtmx_sync_log SET data = $1 WHERE version = $2")
                .bind(data)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        for (version, clocks) in &plan.clocks {
            sqlx::query("UPDATE _rhtmx_sync_log SET clocks = $1 WHERE version = $2")
                .bind(clocks)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM _rhtmx_sync_log WHERE version = ANY($1)")
            .bind(&plan.remove)
            .execute(&mut *tx)
            .await?;
        if plan.purges {
            // In the same transaction: a reader that read before it and after it sees the
            // count change (see `ReadLog::purges`).
            sqlx::query(
                "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('purges', '1') \
                 ON CONFLICT (key) DO UPDATE SET value = (_rhtmx_sync_meta.value::bigint + 1)::text",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((plan, started.elapsed()))
    }

    /// None: a pass's rewrite locks only the log entries it removes, which the app's
    /// writers never wait for.
    async fn pause(&mut self, _held: Duration) {}

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
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT entity_id FROM _rhtmx_sync_log \
             WHERE entity = $1 AND (scope_before = $2 OR scope_after = $2)",
        )
        .bind(entity)
        .bind(key)
        .fetch_all(self)
        .await?)
    }
}
