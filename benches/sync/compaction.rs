//! Section 6, compaction: a pass over a log of R rows × 100 updates each (the app's own
//! SQL), in process, on SQLite. Throughput (entries removed per second) against the
//! baseline of one bare `DELETE` of the same entries on a copy of the same file; the
//! longest write transaction of the pass (both with nothing else running); and what a
//! writer feels: the slowest of single-row app writes while a pass over a second such
//! log runs, against the same writes with no pass.

use std::path::Path;
use std::time::{Duration, Instant};

use rhtmx_sync::{Compaction, SyncEngine};
use sqlx::SqlitePool;

use crate::util::{self, human, Out, Row, SyncMode, Target};
use crate::{app, Config};

pub const SECTION: &str = "6. compaction";
const UPDATES: usize = 100;

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let sizes: &[usize] = if config.full {
        &[1_000, 10_000]
    } else {
        &[1_000]
    };
    for &rows in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("app.db");
        let (pool, engine) = setup(&db, rows).await;
        let entries = rows * (UPDATES + 1);
        let size = format!("{} rows × {UPDATES} updates", human(rows));

        // Writers with no pass (their entries are part of what both removals see).
        let quiet = writes_during(&pool, async {}).await;
        // Baseline: the same removal as one statement, on a copy of the file.
        let copy = dir.path().join("copy.db");
        sqlx::query(&format!("VACUUM INTO '{}'", copy.display()))
            .execute(&pool)
            .await
            .expect("copy");
        let bare = util::open(&copy, SyncMode::Example).await;
        let start = Instant::now();
        let removed_bare = sqlx::query(
            "DELETE FROM _rhtmx_sync_log WHERE version NOT IN \
             (SELECT max(version) FROM _rhtmx_sync_log GROUP BY entity, entity_id)",
        )
        .execute(&bare)
        .await
        .expect("bare delete")
        .rows_affected();
        let bare_secs = start.elapsed().as_secs_f64();
        bare.close().await;

        // The pass alone: its throughput, and the longest it holds the write lock.
        let report = engine.compact().await.expect("compact");
        assert!(report.removed as usize >= entries - 2 * rows, "{report:?}");
        // The same log again, compacted while the app writes: what a writer feels (the
        // pass then takes longer, as it leaves the lock to the app between batches).
        let busy_db = dir.path().join("busy.db");
        let (busy_pool, busy_engine) = setup(&busy_db, rows).await;
        let busy = writes_during(&busy_pool, async {
            busy_engine.compact().await.expect("compact");
        })
        .await;
        drop(busy_engine);
        busy_pool.close().await;
        let secs = report.took_ms as f64 / 1000.0;
        let rate = report.removed as f64 / secs.max(1e-6);
        let bare_rate = removed_bare as f64 / bare_secs.max(1e-6);
        out.push(
            Row::new(SECTION, "pass throughput", size.clone())
                .value(rate, "entries/s")
                .rate_vs(bare_rate)
                .target(Target::RatioAtMost(5.0), "≤ 5× the bare DELETE's time")
                .note(format!(
                    "{} entries removed in {} transactions, {:.0} ms; baseline: one bare \
                     DELETE of the superseded entries, {:.0} ms",
                    report.removed,
                    report.transactions,
                    secs * 1000.0,
                    bare_secs * 1000.0
                )),
        );
        out.push(
            Row::new(SECTION, "longest write transaction", size.clone())
                .value(report.longest_transaction_us as f64 / 1000.0, "ms")
                .target(Target::ValueAtMost(50.0), "≤ 50 ms")
                .note("how long a writer waits for the pass at most"),
        );
        out.push(
            Row::new(SECTION, "slowest app write during a pass", size)
                .value(busy * 1000.0, "ms")
                .cost_vs(quiet * 1000.0)
                .target(Target::RatioAtMost(10.0), "≤ 10× the slowest with no pass")
                .note(format!(
                    "single-row UPDATEs back to back; baseline: the slowest with no pass, {:.2} ms",
                    quiet * 1000.0
                )),
        );
        drop(engine);
        pool.close().await;
    }
}

/// A database of `rows` todos, each updated [`UPDATES`] times through the triggers.
async fn setup(db: &Path, rows: usize) -> (SqlitePool, SyncEngine) {
    let pool = util::open(db, SyncMode::Example).await;
    let engine = app::engine_with(pool.clone(), |b| {
        b.compaction(Compaction::new().keep_history(Duration::ZERO).every(None))
    })
    .await
    .expect("engine");
    util::insert_rows(&pool, rows, "a todo").await;
    for round in 0..UPDATES {
        sqlx::query("UPDATE todos SET title = ?, completed = NOT completed")
            .bind(format!("round {round}"))
            .execute(&pool)
            .await
            .expect("update");
    }
    (pool, engine)
}

/// Runs single-row app writes back to back until `during` is done (at least 200 of
/// them); returns the longest, in seconds (a pass's transactions are few among
/// thousands of writes: a percentile would not see them).
async fn writes_during(pool: &SqlitePool, during: impl std::future::Future<Output = ()>) -> f64 {
    let mut latencies = Vec::new();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM todos LIMIT 50")
        .fetch_all(pool)
        .await
        .expect("ids");
    let mut during = std::pin::pin!(during);
    let mut done = false;
    let mut i = 0;
    while !done || latencies.len() < 200 {
        let id = &ids[i % ids.len()];
        let write = async move {
            let start = Instant::now();
            sqlx::query("UPDATE todos SET completed = NOT completed WHERE id = ?")
                .bind(id)
                .execute(pool)
                .await
                .expect("write");
            start.elapsed().as_secs_f64()
        };
        i += 1;
        if done {
            latencies.push(write.await);
            continue;
        }
        tokio::select! {
            biased;
            took = write => latencies.push(took),
            () = &mut during => done = true,
        }
    }
    latencies.into_iter().fold(0.0, f64::max)
}
