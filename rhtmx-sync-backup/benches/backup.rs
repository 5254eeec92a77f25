//! Backup, restore and bundle benchmarks against a real S3 server (s3s-fs on
//! 127.0.0.1), each next to copying the same bytes to the same server with the same
//! client: `./scripts/bench.sh --only backup` (rows appended to the suite's report).
//! Without `--bench` (as `cargo test --all-targets` runs it) it exits at once.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rhtmx_sync_backup::{Backups, Bundles, Encrypted, ObjectStore, RestoreOptions, PART_SIZE};
use serde_json::json;

const SECTION: &str = "8. backups";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(run());
    let mut text = String::new();
    for row in rows {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    match out {
        Some(path) => {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            file.write_all(text.as_bytes()).unwrap();
        }
        None => print!("{text}"),
    }
}

/// Median of `runs` timings of `f`.
async fn median<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for i in 0..runs {
        let start = Instant::now();
        f(i).await;
        times.push(start.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn row(
    metric: &str,
    size: &str,
    value: f64,
    unit: &str,
    baseline: f64,
    at_most: f64,
    note: String,
) -> serde_json::Value {
    let ratio = value / baseline;
    json!({
        "section": SECTION, "metric": metric, "size": size, "value": value, "unit": unit,
        "baseline": baseline, "ratio": ratio, "target": format!("≤ {at_most}×"),
        "pass": ratio <= at_most, "note": note,
    })
}

/// Uploads `file` as plain objects of `PART_SIZE`: the copy a backup is compared with.
async fn copy_up(store: &impl ObjectStore, file: &Path, prefix: String) {
    let bytes = tokio::fs::read(file).await.unwrap();
    for (n, part) in bytes.chunks(PART_SIZE).enumerate() {
        store
            .put(&format!("{prefix}/{n:05}"), Bytes::copy_from_slice(part))
            .await
            .unwrap();
    }
}

/// Downloads what `copy_up` uploaded into `to`.
async fn copy_down(store: &impl ObjectStore, prefix: String, to: &Path) {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::File::create(to).await.unwrap();
    for name in store.list(&format!("{prefix}/")).await.unwrap() {
        let body = store.get(&name).await.unwrap().unwrap();
        out.write_all(&body).await.unwrap();
    }
    out.sync_all().await.unwrap();
}

async fn run() -> Vec<serde_json::Value> {
    let server = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    // About 100 MB: 40k rows of about 1 KB, each in the table and in the log.
    let (pool, engine) = app_db(&db, 0).await;
    let filler: String = "lorem ipsum dolor sit amet ".repeat(40);
    for chunk in 0..40 {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..1000 {
            sqlx::query("INSERT INTO todos (id, title) VALUES (?, ?)")
                .bind(format!("r{chunk:03}-{i:04}"))
                .bind(format!("{chunk} {i} {filler}"))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    let size = std::fs::metadata(&db).unwrap().len();
    let mb = size as f64 / 1e6;
    let size_text = format!("{mb:.0} MB");
    let mut rows = Vec::new();

    let raw = s3(&server.endpoint, "raw");
    let copy = median(3, |i| copy_up(&raw, &db, format!("copy{i}"))).await;
    let down_to = dir.path().join("down.db");
    let download = median(3, |i| copy_down(&raw, format!("copy{i}"), &down_to)).await;

    for (label, encrypted) in [("plain", false), ("age-encrypted", true)] {
        let store: Box<dyn ObjectStore> = if encrypted {
            Box::new(
                Encrypted::with_passphrase(s3(&server.endpoint, label), "bench passphrase")
                    .await
                    .unwrap(),
            )
        } else {
            Box::new(s3(&server.endpoint, label))
        };
        let backups = Backups::new(store);
        let backup = median(3, |_| async {
            backups.backup(&pool).await.unwrap();
        })
        .await;
        rows.push(row(
            &format!("backup ({label}): VACUUM INTO, SHA-256, upload"),
            &size_text,
            backup.as_secs_f64(),
            "s",
            copy.as_secs_f64(),
            if encrypted { 2.0 } else { 1.5 },
            format!(
                "{:.0} MB/s; baseline: uploading the file's bytes in {} MiB objects with the same client, {:.2} s; median of 3",
                mb / backup.as_secs_f64(),
                PART_SIZE >> 20,
                copy.as_secs_f64()
            ),
        ));
        let restore = median(3, |i| {
            let (backups, to) = (&backups, dir.path().join(format!("{label}-{i}.db")));
            async move {
                backups.restore(&to, RestoreOptions::new()).await.unwrap();
            }
        })
        .await;
        rows.push(row(
            &format!("restore ({label}): fetch, verify, integrity check, new history"),
            &size_text,
            restore.as_secs_f64(),
            "s",
            download.as_secs_f64(),
            if encrypted { 2.0 } else { 1.5 },
            format!(
                "{:.0} MB/s; baseline: downloading the same objects into a file, {:.2} s; median of 3",
                mb / restore.as_secs_f64(),
                download.as_secs_f64()
            ),
        ));
    }

    // Bundles: the 40k creates above (about 45 MB of JSON) uploaded as bundles.
    let store = s3(&server.endpoint, "bundles");
    let bundles = Bundles::new(store, engine.clone()).unwrap().batch(1000);
    let start = Instant::now();
    let (_, changes) = bundles.upload().await.unwrap();
    let upload = start.elapsed();
    let raw_bundles = s3(&server.endpoint, "bundles");
    let names = raw_bundles.list("bundles/").await.unwrap();
    let mut bytes = 0;
    let mut bodies = Vec::new();
    for name in &names {
        let body = raw_bundles.get(name).await.unwrap().unwrap();
        bytes += body.len();
        bodies.push(body);
    }
    let start = Instant::now();
    for (n, body) in bodies.into_iter().enumerate() {
        raw.put(&format!("bundle-copy/{n:05}"), body).await.unwrap();
    }
    let copy_bundles = start.elapsed();
    rows.push(row(
        "bundle upload: read the log, encode, upload",
        &format!("{changes} changes"),
        upload.as_secs_f64(),
        "s",
        copy_bundles.as_secs_f64(),
        3.0,
        format!(
            "{:.0} changes/s, {:.0} MB of bundles; baseline: uploading the same bytes as objects, {:.2} s",
            changes as f64 / upload.as_secs_f64(),
            bytes as f64 / 1e6,
            copy_bundles.as_secs_f64()
        ),
    ));
    engine.shutdown();
    rows
}
