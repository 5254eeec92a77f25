//! Section 6, PostgreSQL: write overhead, ingest and write→event latency on a throwaway
//! PostgreSQL server (the tests' harness, `tests/pg/mod.rs`), with one and two app
//! instances, next to the same writes without the engine and to SQLite in the same run.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rhtmx_sync::SyncEngine;
use sqlx::{PgPool, SqlitePool};

use crate::util::{self, human, Out, Row, Target};
use crate::{app, pg, Config};

pub const SECTION: &str = "6. PostgreSQL";

const TODOS: &str = "CREATE TABLE todos (id text PRIMARY KEY, title text NOT NULL, \
                     completed boolean NOT NULL DEFAULT false)";
const INSERT: &str = "INSERT INTO todos (id, title) VALUES ($1, $2)";

pub async fn run(config: &Config, out: &mut Out) {
    eprintln!("## {SECTION}");
    let scale = if config.full { 2 } else { 1 };
    if config.wants_part("postgres", "write") {
        batch(10_000, 5 * scale, out).await;
    }
    if config.wants_part("postgres", "ingest") {
        ingest(2_000 * scale, out).await;
    }
    if config.wants_part("postgres", "latency") {
        latency(300 * scale, out).await;
    }
}

/// A fresh database with the table: `(url, pool)`.
async fn database() -> (String, PgPool) {
    let url = pg::database_url().await;
    let pool = pg::pool(&url).await;
    sqlx::query(TODOS)
        .execute(&pool)
        .await
        .expect("create table");
    (url, pool)
}

async fn engine(pool: &PgPool) -> SyncEngine {
    SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .build()
        .await
        .expect("engine on PostgreSQL")
}

fn rows(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (util::new_id(), format!("todo number {i}")))
        .collect()
}

async fn insert_batch(pool: &PgPool, rows: &[(String, String)]) -> f64 {
    let start = Instant::now();
    let mut tx = pool.begin().await.expect("begin");
    for (id, title) in rows {
        sqlx::query(INSERT)
            .bind(id)
            .bind(title)
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
    start.elapsed().as_secs_f64()
}

/// One transaction of `size` single-row inserts, plain vs tracked, fresh databases.
async fn batch(size: usize, reps: usize, out: &mut Out) {
    let data = rows(size);
    let mut pairs = Vec::new();
    for _ in 0..reps {
        let (_, plain) = database().await;
        let (_, tracked) = database().await;
        let engine = engine(&tracked).await;
        let p = insert_batch(&plain, &data).await;
        let t = insert_batch(&tracked, &data).await;
        pairs.push((p, t));
        drop(engine);
    }
    let row = Row::new(
        SECTION,
        "batch, one sqlx statement per row, one transaction",
        format!("{} rows", human(size)),
    )
    .paired(&pairs, 1000.0, "ms");
    out.push(
        row.target(Target::RatioAtMost(1.5), "≤ 1.5×")
            .note(format!("median of {reps} fresh pairs of databases")),
    );
}

/// Single-row autocommit inserts from 4 writers at once: changes/s without the engine,
/// with one instance's engine, and with two (each stamping and tailing).
async fn ingest(total: usize, out: &mut Out) {
    async fn rate(pool: &PgPool, total: usize) -> f64 {
        let start = Instant::now();
        let mut writers = Vec::new();
        for _ in 0..4 {
            let pool = pool.clone();
            writers.push(tokio::spawn(async move {
                for (id, title) in rows(total / 4) {
                    sqlx::query(INSERT)
                        .bind(id)
                        .bind(title)
                        .execute(&pool)
                        .await
                        .expect("insert");
                }
            }));
        }
        for w in writers {
            w.await.expect("writer");
        }
        total as f64 / start.elapsed().as_secs_f64()
    }
    let (_, plain) = database().await;
    let baseline = rate(&plain, total).await;
    for instances in [1, 2] {
        let (url, pool) = database().await;
        let mut engines = Vec::new();
        for _ in 0..instances {
            engines.push(engine(&pg::pool(&url).await).await);
        }
        let value = rate(&pool, total).await;
        // Every change numbered, as a client would need it.
        let numbered = Instant::now();
        let want = total as i64;
        while engines[0].head().await.expect("head") < want {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let lag_ms = numbered.elapsed().as_secs_f64() * 1000.0;
        out.push(
            Row::new(
                SECTION,
                &format!("ingest, app's single-row commits, {instances} instance(s)"),
                format!("{} rows, 4 writers", human(total)),
            )
            .value(value, "/s")
            .rate_vs(baseline)
            .target(Target::RatioAtMost(1.5), "≤ 1.5×")
            .note(format!("all numbered {lag_ms:.0} ms after the last commit")),
        );
    }
}

/// Commit → event on a stream, `writes` writes paced 5 ms apart: p50 and p99 in ms.
async fn measure(
    write: impl Fn(String) -> BoxedWrite,
    stream_base: &str,
    writes: usize,
) -> (f64, f64) {
    let res = reqwest::Client::new()
        .get(format!("{stream_base}/api/sync/events"))
        .send()
        .await
        .expect("event stream");
    let mut events = eventsource_stream::EventStream::new(res.bytes_stream());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(e)) = events.next().await {
            if e.data.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&e.data).expect("JSON event");
            if let Some(id) = v["id"].as_str() {
                let _ = tx.send((id.to_owned(), Instant::now()));
            }
        }
    });
    // Ids unique across the measurements of one database.
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut committed = std::collections::HashMap::new();
    for i in 0..writes {
        let id = format!("lat-{run}-{i}");
        write(id.clone()).await;
        committed.insert(id, Instant::now());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = Vec::with_capacity(writes);
    while latencies.len() < writes {
        let (id, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("every event within 30 s")
            .expect("stream open");
        if let Some(done) = committed.get(&id) {
            latencies.push(at.saturating_duration_since(*done).as_secs_f64() * 1000.0);
        }
    }
    reader.abort();
    latencies.sort_by(f64::total_cmp);
    (
        util::percentile(&latencies, 50.0).unwrap_or(f64::NAN),
        util::percentile(&latencies, 99.0).unwrap_or(f64::NAN),
    )
}

type BoxedWrite = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn pg_writer(pool: PgPool) -> impl Fn(String) -> BoxedWrite {
    move |id| {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx::query(INSERT)
                .bind(&id)
                .bind("x")
                .execute(&pool)
                .await
                .expect("insert");
        })
    }
}

fn sqlite_writer(pool: SqlitePool) -> impl Fn(String) -> BoxedWrite {
    move |id| {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx::query(util::INSERT)
                .bind(&id)
                .bind("x")
                .execute(&pool)
                .await
                .expect("insert");
        })
    }
}

async fn serve(engine: &SyncEngine) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = engine.routes();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    (base, task)
}

async fn latency(writes: usize, out: &mut Out) {
    let mut push = |label: &str, (p50, p99): (f64, f64), note: &str| {
        out.push(
            Row::new(
                SECTION,
                &format!("app write→event p50, {label}"),
                format!("{writes} writes"),
            )
            .value(p50, "ms")
            .target(Target::ValueAtMost(5.0), "≤ 5 ms")
            .note(note.to_owned()),
        );
        out.push(
            Row::new(
                SECTION,
                &format!("app write→event p99, {label}"),
                format!("{writes} writes"),
            )
            .value(p99, "ms")
            .target(Target::ValueAtMost(20.0), "≤ 20 ms")
            .note(note.to_owned()),
        );
    };
    // SQLite, the same app write, for comparison.
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = util::open(&dir.path().join("app.db"), util::SyncMode::Example).await;
    let engine_s = app::engine(sqlite.clone()).await.expect("engine");
    let (base_s, task_s) = serve(&engine_s).await;
    push(
        "SQLite, one instance",
        measure(sqlite_writer(sqlite.clone()), &base_s, writes).await,
        "default poll 10 ms",
    );
    task_s.abort();
    // PostgreSQL, one instance: the engine that stamps is the one streaming.
    let (url, pool) = database().await;
    let one = engine(&pool).await;
    let (base_1, task_1) = serve(&one).await;
    push(
        "PostgreSQL, one instance",
        measure(pg_writer(pool.clone()), &base_1, writes).await,
        "default poll 10 ms; the write is made outside the engine",
    );
    // Two instances: written through the first's pool, streamed by the second.
    let other = engine(&pg::pool(&url).await).await;
    let (base_2, task_2) = serve(&other).await;
    push(
        "PostgreSQL, written on one instance, streamed by another",
        measure(pg_writer(pool.clone()), &base_2, writes).await,
        "either instance may stamp; the other wakes by NOTIFY",
    );
    task_1.abort();
    task_2.abort();
}
