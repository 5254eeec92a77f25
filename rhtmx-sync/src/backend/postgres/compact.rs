//! A compaction pass on PostgreSQL (see `crate::compaction`): each batch is one short
//! transaction. It only touches numbered entries at or below the horizon, which no
//! writer or stamper changes, so it takes no lock the app's writers wait for; two
//! instances compacting at once do the same work twice, harmlessly.

use sqlx::{PgConnection, PgPool};

use super::{begin_read_committed, EFFECTIVE_HLC};
use crate::backend::ReadLog;
use crate::compaction::{self, Candidate, CompactionReport, Cutoffs, Held, Policy, Timer};
use crate::erasure::Erase;
use crate::error::Result;

pub(crate) async fn compact(pool: &PgPool, cut: Cutoffs) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    let mut conn = pool.acquire().await?;
    let newest: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM _rhtmx_sync_log \
         WHERE version IS NOT NULL AND created_at <= to_timestamp($1 / 1000.0) \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(cut.history)
    .fetch_optional(&mut *conn)
    .await?;
    let old = conn.horizon().await?;
    let horizon = newest.unwrap_or(0).max(old);
    report.horizon = horizon;
    if horizon > old {
        // Raised before anything below it goes (see the SQLite pass).
        sqlx::query(
            "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('horizon', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value \
             WHERE _rhtmx_sync_meta.value::bigint < excluded.value::bigint",
        )
        .bind(horizon.to_string())
        .execute(&mut *conn)
        .await?;
    }
    let mut after = (String::new(), String::new());
    loop {
        let rows: Vec<Candidate> = sqlx::query_as(
            "SELECT entity, entity_id, count(*) FROM _rhtmx_sync_log \
             WHERE version <= $1 AND (entity, entity_id) > ($2, $3) \
             GROUP BY entity, entity_id \
             HAVING count(*) > 1 \
                 OR (max(action) = 'delete' AND max(created_at) <= to_timestamp($4 / 1000.0)) \
             ORDER BY entity, entity_id LIMIT 256",
        )
        .bind(horizon)
        .bind(&after.0)
        .bind(&after.1)
        .bind(cut.policy.tombstones)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else { break };
        after = (last.0.clone(), last.1.clone());
        for batch in compaction::batches(&rows) {
            compact_rows(&mut conn, batch, horizon, cut.policy, &mut report).await?;
        }
    }
    report.replays = sqlx::query(
        "DELETE FROM _rhtmx_sync_replays WHERE created_at <= to_timestamp($1 / 1000.0)",
    )
    .bind(cut.replays)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(report)
}

/// Erases the history of rows of `entity` (see `SyncEngine::erase`): each keeps only
/// its latest numbered entry, without a conflict report or replay digests.
pub(crate) async fn erase(pool: &PgPool, entity: &str, target: Erase) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    let mut conn = pool.acquire().await?;
    // Committed entries still waiting for their version are numbered first: erasure
    // only reads numbered ones.
    conn.settled_head().await?;
    let ids = match target {
        Erase::Ids(ids) => ids,
        Erase::Scope(key) => {
            sqlx::query_scalar(
                "SELECT DISTINCT entity_id FROM _rhtmx_sync_log \
                 WHERE entity = $1 AND (scope_before = $2 OR scope_after = $2)",
            )
            .bind(entity)
            .bind(&key)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let rows: Vec<Candidate> = ids
        .into_iter()
        .map(|id| (entity.to_owned(), id, 1))
        .collect();
    for batch in rows.chunks(256) {
        compact_rows(&mut conn, batch, i64::MAX, Policy::ERASE, &mut report).await?;
    }
    Ok(report)
}

async fn compact_rows(
    conn: &mut PgConnection,
    rows: &[Candidate],
    horizon: i64,
    policy: Policy,
    report: &mut CompactionReport,
) -> Result<()> {
    let mut tx = begin_read_committed(conn).await?;
    // From when the lock is held: waiting for it is not holding it.
    let timer = Timer::start();
    let mut held = Vec::new();
    for (entity, id, _) in rows {
        let entries: Vec<Held> = sqlx::query_as(&format!(
            "SELECT version, entity, entity_id, action, data, changed, client_id, \
             {EFFECTIVE_HLC} AS hlc, floor(extract(epoch FROM created_at) * 1000)::bigint \
             AS created_ms, conflict IS NOT NULL AS conflict, digest, clocks \
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
        sqlx::query(
            "INSERT INTO _rhtmx_sync_replays (digest, entity, entity_id, created_at) \
             VALUES ($1, $2, $3, to_timestamp($4 / 1000.0)) ON CONFLICT DO NOTHING",
        )
        .bind(digest)
        .bind(entity)
        .bind(id)
        .bind(ms)
        .execute(&mut *tx)
        .await?;
    }
    for version in &plan.clear_conflicts {
        sqlx::query("UPDATE _rhtmx_sync_log SET conflict = NULL WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    for (entity, id) in &plan.forget {
        sqlx::query("DELETE FROM _rhtmx_sync_replays WHERE entity = $1 AND entity_id = $2")
            .bind(entity)
            .bind(id)
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
    if plan.tombstones > 0 {
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
    timer.stop(report);
    report.rows += plan.rows;
    report.removed += plan.remove.len() as u64;
    report.tombstones += plan.tombstones;
    Ok(())
}
