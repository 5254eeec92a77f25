//! A compaction pass on SQLite (see `crate::compaction`): each batch is one
//! `BEGIN IMMEDIATE` transaction, so it takes its turn with the app's writers and
//! holds the write lock only while it rewrites a few thousand entries.

use sqlx::{Connection, SqliteConnection, SqlitePool};

use crate::compaction::{self, Candidate, CompactionReport, Cutoffs, Held, Policy, Timer};
use crate::erasure::Erase;
use crate::error::Result;
use crate::log::{self, EFFECTIVE_HLC, LOG_TABLE};

/// `created_at` in Unix milliseconds.
const CREATED_MS: &str = "CAST(round((julianday(created_at) - 2440587.5) * 86400000.0) AS INTEGER)";

/// Unix milliseconds (bound as `?N`) in `created_at`'s format.
fn at(n: u8) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', ?{n} / 1000.0, 'unixepoch')")
}

pub(crate) async fn compact(pool: &SqlitePool, cut: Cutoffs) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    let mut conn = pool.acquire().await?;
    let newest: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {LOG_TABLE} WHERE created_at <= {} ORDER BY version DESC LIMIT 1",
        at(1)
    ))
    .bind(cut.history)
    .fetch_optional(&mut *conn)
    .await?;
    let old = log::horizon(&mut conn).await?;
    let horizon = newest.unwrap_or(0).max(old);
    report.horizon = horizon;
    if horizon > old {
        // Raised before anything below it goes: a reader that reads the horizon after a
        // page knows whether the page could have lost entries.
        sqlx::query(
            "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('horizon', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = ?1 WHERE CAST(value AS INTEGER) < ?1",
        )
        .bind(horizon.to_string())
        .execute(&mut *conn)
        .await?;
    }
    let mut after = (String::new(), String::new());
    loop {
        let rows: Vec<Candidate> = sqlx::query_as(&format!(
            "SELECT entity, entity_id, count(*) FROM {LOG_TABLE} \
             WHERE version <= ?1 AND (entity, entity_id) > (?2, ?3) \
             GROUP BY entity, entity_id \
             HAVING count(*) > 1 OR (max(action) = 'delete' AND max(created_at) <= {}) \
             ORDER BY entity, entity_id LIMIT 256",
            at(4)
        ))
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
    report.replays = sqlx::query(&format!(
        "DELETE FROM _rhtmx_sync_replays WHERE created_at <= {}",
        at(1)
    ))
    .bind(cut.replays)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(report)
}

/// Erases the history of rows of `entity` (see `SyncEngine::erase`): each keeps only
/// its latest entry, without a conflict report or replay digests.
pub(crate) async fn erase(
    pool: &SqlitePool,
    entity: &str,
    target: Erase,
) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    let mut conn = pool.acquire().await?;
    let ids = match target {
        Erase::Ids(ids) => ids,
        Erase::Scope(key) => {
            sqlx::query_scalar(&format!(
                "SELECT DISTINCT entity_id FROM {LOG_TABLE} \
                 WHERE entity = ?1 AND (scope_before = ?2 OR scope_after = ?2)"
            ))
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
    conn: &mut SqliteConnection,
    rows: &[Candidate],
    horizon: i64,
    policy: Policy,
    report: &mut CompactionReport,
) -> Result<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // From when the lock is held: waiting for it is not holding it.
    let timer = Timer::start();
    let mut held = Vec::new();
    for (entity, id, _) in rows {
        let entries: Vec<Held> = sqlx::query_as(&format!(
            "SELECT version, entity, entity_id, action, data, changed, client_id, \
             {EFFECTIVE_HLC} AS hlc, {CREATED_MS} AS created_ms, conflict IS NOT NULL AS conflict, \
             digest, clocks FROM {LOG_TABLE} \
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
    for (entity, id) in &plan.forget {
        sqlx::query("DELETE FROM _rhtmx_sync_replays WHERE entity = ? AND entity_id = ?")
            .bind(entity)
            .bind(id)
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
    if plan.tombstones > 0 {
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
    timer.stop(report);
    report.rows += plan.rows;
    report.removed += plan.remove.len() as u64;
    report.tombstones += plan.tombstones;
    Ok(())
}
