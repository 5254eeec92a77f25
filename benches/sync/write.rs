//! Section 1, write overhead: the same inserts on two SQLite files with the same schema, one
//! with a `SyncEngine` built on it (triggers installed, broadcaster running), one plain.
//! In process, plain sqlx, no HTTP.

use std::time::Instant;

use sqlx::SqlitePool;

use crate::util::{self, human, Out, Row, SyncMode, Target};
use crate::{app, Config};

pub const SECTION: &str = "1. write overhead";

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let scale = if config.full { 2 } else { 1 };
    // 100k rows one statement at a time takes seconds per pair: once in the quick run.
    for (size, reps) in [
        (1_000, 11 * scale),
        (10_000, 5 * scale),
        (100_000, 1 + 2 * (scale - 1)),
    ] {
        batch(size, reps, out).await;
    }
    for (size, reps) in [
        (1_000, 11 * scale),
        (10_000, 5 * scale),
        (100_000, 3 * scale),
    ] {
        batch_sql(size, reps, out).await;
    }
    ablation(10_000, 5 * scale, out).await;
    let txs = if config.full { 2000 } else { 600 };
    for sync in [SyncMode::Example, SyncMode::Normal] {
        for prefill in [1_000, 10_000, 100_000] {
            single_rows(sync, prefill, txs, out).await;
        }
    }
}

/// A plain and a tracked database side by side in a fresh directory.
struct Pair {
    _dir: tempfile::TempDir,
    plain: SqlitePool,
    tracked: SqlitePool,
    engine: Option<rhtmx_sync::SyncEngine>,
}

async fn pair(sync: SyncMode) -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = util::open(&dir.path().join("plain.db"), sync).await;
    let tracked = util::open(&dir.path().join("tracked.db"), sync).await;
    let engine = Some(app::engine(tracked.clone()).await.expect("engine"));
    Pair {
        _dir: dir,
        plain,
        tracked,
        engine,
    }
}

fn rows(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (util::new_id(), format!("todo number {i}")))
        .collect()
}

/// `rows` inserted one statement each (the example's `INSERT`), in one transaction:
/// seconds.
async fn insert_batch(pool: &SqlitePool, rows: &[(String, String)]) -> f64 {
    let start = Instant::now();
    let mut tx = pool.begin().await.expect("begin");
    for (id, title) in rows {
        sqlx::query(util::INSERT)
            .bind(id)
            .bind(title)
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
    start.elapsed().as_secs_f64()
}

/// `n` rows inserted by one `INSERT … SELECT` (the triggers still fire per row), in one
/// transaction: SQLite's own cost, without the driver's per-statement overhead.
async fn insert_sql(pool: &SqlitePool, n: usize) -> f64 {
    let start = Instant::now();
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) \
         INSERT INTO todos (id, title, completed) \
         SELECT printf('%s-%08d', ?, i), 'todo number ' || i, false FROM s \
         WHERE true ON CONFLICT (id) DO NOTHING",
    )
    .bind(n as i64)
    .bind(util::new_id())
    .execute(&mut *tx)
    .await
    .expect("insert select");
    tx.commit().await.expect("commit");
    start.elapsed().as_secs_f64()
}

/// `(plain, tracked)` seconds over `reps` fresh pairs. Plain goes first: after the
/// tracked commit the broadcaster reads and encodes the new log rows, which must not
/// land in the plain measurement (it stops when the pair is dropped).
async fn side_by_side<F, Fut>(reps: usize, run: F) -> Vec<(f64, f64)>
where
    F: Fn(SqlitePool) -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut pairs = Vec::new();
    for _ in 0..reps {
        let mut p = pair(SyncMode::Example).await;
        let plain = run(p.plain.clone()).await;
        let tracked = run(p.tracked.clone()).await;
        pairs.push((plain, tracked));
        p.engine.take();
    }
    pairs
}

async fn batch(size: usize, reps: usize, out: &mut Out) {
    let data = rows(size);
    let pairs = side_by_side(reps, |pool| {
        let data = &data;
        async move { insert_batch(&pool, data).await }
    })
    .await;
    let row = Row::new(
        SECTION,
        "batch, one sqlx statement per row, one transaction",
        format!("{} rows", human(size)),
    )
    .paired(&pairs, 1000.0, "ms");
    let per_row = |ms: f64| ms * 1000.0 / size as f64;
    let note = format!(
        "tracked {:.1} µs/row vs plain {:.1} µs/row; median of {reps} fresh pairs",
        per_row(row.value),
        per_row(row.baseline.unwrap_or(f64::NAN))
    );
    out.push(row.target(Target::RatioAtMost(1.5), "≤ 1.5×").note(note));
}

async fn batch_sql(size: usize, reps: usize, out: &mut Out) {
    let pairs = side_by_side(reps, |pool| async move { insert_sql(&pool, size).await }).await;
    let row = Row::new(
        SECTION,
        "batch, one INSERT…SELECT (SQLite's own cost)",
        format!("{} rows", human(size)),
    )
    .paired(&pairs, 1000.0, "ms");
    let per_row = |ms: f64| ms * 1000.0 / size as f64;
    let note = format!(
        "tracked {:.2} µs/row vs plain {:.2} µs/row; median of {reps} fresh pairs",
        per_row(row.value),
        per_row(row.baseline.unwrap_or(f64::NAN))
    );
    out.push(row.target(Target::RatioAtMost(1.5), "≤ 1.5×").note(note));
}

/// What each part of the capture costs: the INSERT…SELECT batch on a tracked file with
/// one part of the engine's schema taken away (engine stopped first, so it does not put
/// anything back). Informational; names the bottleneck.
async fn ablation(size: usize, reps: usize, out: &mut Out) {
    let variants: [(&str, &[&str]); 8] = [
        ("as installed", &[]),
        (
            "without causal stamping",
            &["DROP TRIGGER _rhtmx_sync_log_causal"],
        ),
        (
            "without index _rhtmx_sync_log_row",
            &["DROP INDEX _rhtmx_sync_log_row"],
        ),
        (
            "without index _rhtmx_sync_log_entity",
            &["DROP INDEX _rhtmx_sync_log_entity"],
        ),
        ("log without AUTOINCREMENT", &["@no-autoincrement"]),
        ("created_at without strftime()", &["@no-strftime"]),
        ("row JSON a constant (stored, not built)", &["@const-json"]),
        ("trigger logs no row JSON", &["@no-json"]),
    ];
    for (label, changes) in variants {
        let mut pairs = Vec::new();
        for _ in 0..reps {
            let mut p = pair(SyncMode::Example).await;
            p.engine.take();
            for change in changes {
                alter(&p.tracked, change).await;
            }
            let plain = insert_sql(&p.plain, size).await;
            pairs.push((plain, insert_sql(&p.tracked, size).await));
        }
        out.push(
            Row::new(
                SECTION,
                &format!("capture cost breakdown: {label}"),
                format!("{} rows", human(size)),
            )
            .paired(&pairs, 1000.0, "ms")
            .note(
                "diagnostic, no target: INSERT…SELECT batch, engine stopped, one part of its \
                 schema removed",
            ),
        );
    }
}

async fn alter(pool: &SqlitePool, change: &str) {
    let mut conn = pool.acquire().await.expect("connection");
    match change {
        "@no-autoincrement" => {
            recreate_log(&mut conn, |sql| sql.replace("AUTOINCREMENT", "")).await;
        }
        "@no-strftime" => {
            recreate_log(&mut conn, |sql| {
                sql.replace(
                    "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    "DEFAULT ''",
                )
            })
            .await;
        }
        "@no-json" | "@const-json" => {
            let sql: String = sqlx::query_scalar(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' \
                 AND name = '_rhtmx_sync_insert_todos'",
            )
            .fetch_one(&mut *conn)
            .await
            .expect("insert trigger");
            // If the trigger no longer has this shape, measure it as installed.
            let (Some(start), Some(end)) = (sql.find("json_object("), sql.rfind("); END")) else {
                eprintln!("    (the insert trigger changed shape: {change} not applied)");
                return;
            };
            // A constant as long as the JSON of a bench row: the cost of storing it,
            // without the cost of building it.
            let value = if change == "@no-json" {
                "NULL"
            } else {
                "'{\"id\":\"0193a5b2-7c1d-7e2f-8a3b-4c5d6e7f8091-00000001\",\"title\":\"todo number 1\",\"completed\":false}'"
            };
            let new = format!("{}{value}{}", &sql[..start], &sql[end..]);
            sqlx::raw_sql(&format!("DROP TRIGGER _rhtmx_sync_insert_todos; {new};"))
                .execute(&mut *conn)
                .await
                .expect("replace trigger");
        }
        sql => {
            sqlx::query(sql).execute(&mut *conn).await.expect(sql);
        }
    }
}

/// Recreates the change log with its DDL changed by `edit` (same indexes, same
/// triggers); warns and leaves it alone when `edit` changes nothing.
async fn recreate_log(conn: &mut sqlx::SqliteConnection, edit: impl Fn(&str) -> String) {
    let sql: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '_rhtmx_sync_log'",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("log DDL");
    let edited = edit(&sql);
    if edited == sql {
        eprintln!("    (the log's DDL changed shape: ablation not applied)");
        return;
    }
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'index' \
         AND tbl_name = '_rhtmx_sync_log' AND sql IS NOT NULL",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("log indexes");
    // The triggers name the log: set them aside while it is swapped.
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' \
         AND sql LIKE '%_rhtmx_sync_log%'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("triggers");
    let new = edited.replacen("_rhtmx_sync_log", "_rhtmx_sync_log_new", 1);
    let mut script = String::new();
    for (name, _) in &triggers {
        script.push_str(&format!("DROP TRIGGER \"{name}\";"));
    }
    script.push_str(&format!(
        "{new}; DROP TABLE _rhtmx_sync_log; \
         ALTER TABLE _rhtmx_sync_log_new RENAME TO _rhtmx_sync_log;"
    ));
    for sql in indexes.iter().chain(triggers.iter().map(|(_, s)| s)) {
        script.push_str(sql);
        script.push(';');
    }
    sqlx::raw_sql(&script)
        .execute(&mut *conn)
        .await
        .expect("recreate log");
}

/// `txs` single-row transactions (autocommit inserts through the pool, as a handler
/// makes them) into tables already holding `prefill` rows, interleaved in chunks of 50
/// so drift hits both alike.
async fn single_rows(sync: SyncMode, prefill: usize, txs: usize, out: &mut Out) {
    let mut p = pair(sync).await;
    util::insert_rows(&p.plain, prefill, "prefill").await;
    util::insert_rows(&p.tracked, prefill, "prefill").await;
    // Let the broadcaster read the prefill before timing.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let data = rows(txs * 2);
    let (plain_rows, tracked_rows) = data.split_at(txs);
    let mut pairs = Vec::new();
    for (i, (a, b)) in plain_rows
        .chunks(20)
        .zip(tracked_rows.chunks(20))
        .enumerate()
    {
        let (plain, tracked) = if i % 2 == 0 {
            let plain = single(&p.plain, a).await;
            (plain, single(&p.tracked, b).await)
        } else {
            let tracked = single(&p.tracked, b).await;
            (single(&p.plain, a).await, tracked)
        };
        pairs.push((plain / a.len() as f64, tracked / b.len() as f64));
    }
    out.push(
        Row::new(
            SECTION,
            &format!("single-row transactions ({})", sync.label()),
            format!("{} rows in table", human(prefill)),
        )
        .paired(&pairs, 1e6, "µs/tx")
        .target(Target::RatioAtMost(1.1), "≤ 1.1×")
        .note(format!(
            "{txs} autocommit inserts each, alternating chunks of 20; \
             broadcaster running on the tracked file"
        )),
    );
    p.engine.take();
}

async fn single(pool: &SqlitePool, rows: &[(String, String)]) -> f64 {
    let start = Instant::now();
    for (id, title) in rows {
        sqlx::query(util::INSERT)
            .bind(id)
            .bind(title)
            .execute(pool)
            .await
            .expect("insert");
    }
    start.elapsed().as_secs_f64()
}
