//! The test harness: a real S3 server (`s3s-fs`, which checks SigV4 signatures) on
//! 127.0.0.1, a fault-injecting proxy in front of it, and an app database with the
//! engine's log.

#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rhtmx_sync_backup::{S3Config, S3Store};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

pub const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
pub const BUCKET: &str = "backups";

/// An S3 server on 127.0.0.1 whose bucket `backups` lives in a temporary directory.
pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    pub async fn start() -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut service = s3s::service::S3ServiceBuilder::new(fs);
        service.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = service.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        S3Server {
            endpoint,
            root,
            task,
        }
    }

    /// The file holding object `name` under `prefix` (s3s-fs keeps objects as files).
    pub fn object_file(&self, prefix: &str, name: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix).join(name)
    }
}

/// The S3 settings for `endpoint` and `prefix`, signed with the server's key.
pub fn s3_config(endpoint: &str, prefix: &str) -> S3Config {
    S3Config {
        endpoint: endpoint.to_owned(),
        bucket: BUCKET.to_owned(),
        prefix: prefix.to_owned(),
        region: "us-east-1".to_owned(),
        access_key_id: ACCESS_KEY.to_owned(),
        secret_access_key: SECRET_KEY.to_owned(),
        session_token: None,
        path_style: true,
    }
}

pub fn s3(endpoint: &str, prefix: &str) -> S3Store {
    S3Store::new(s3_config(endpoint, prefix))
}

/// Opens (making it) the SQLite file at `path`, as an app would: WAL, a busy timeout.
pub async fn open(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap()
}

/// An app database at `path` with a `todos` table synced by the engine and `rows` rows
/// written by the app's SQL (some updated, some deleted), so its log has entries.
pub async fn app_db(path: &Path, rows: usize) -> (SqlitePool, rhtmx_sync::SyncEngine) {
    let pool = open(path).await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, \
         done INTEGER NOT NULL DEFAULT 0, note BLOB)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let engine = rhtmx_sync::SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .build()
        .await
        .unwrap();
    write(&pool, 0, rows).await;
    (pool, engine)
}

/// Writes todos `from..to` (titles with non-ASCII text, a blob), then updates and
/// deletes some of them.
pub async fn write(pool: &SqlitePool, from: usize, to: usize) {
    let mut tx = pool.begin().await.unwrap();
    for i in from..to {
        sqlx::query("INSERT INTO todos (id, title, note) VALUES (?, ?, ?)")
            .bind(format!("t{i:06}"))
            .bind(format!("todo {i} — ü"))
            .bind(vec![(i % 251) as u8; i % 64])
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("UPDATE todos SET done = 1 WHERE id LIKE '%7' AND id >= ? AND id < ?")
        .bind(format!("t{from:06}"))
        .bind(format!("t{to:06}"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM todos WHERE id LIKE '%3' AND id >= ? AND id < ?")
        .bind(format!("t{from:06}"))
        .bind(format!("t{to:06}"))
        .execute(pool)
        .await
        .unwrap();
}

/// A logical dump of every table: its schema, and each row as SQL literals (`quote()`),
/// in order. Two databases with equal dumps hold the same data byte for byte.
pub async fn dump(path: &Path) -> BTreeMap<String, Vec<String>> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let mut dump = BTreeMap::new();
    let schema: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%' \
         ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    dump.insert(
        "(schema)".to_owned(),
        schema.iter().map(|s| format!("{s:?}")).collect(),
    );
    for (kind, table, _) in &schema {
        if kind != "table" {
            continue;
        }
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(table)
                .fetch_all(&pool)
                .await
                .unwrap();
        let row = columns
            .iter()
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let rows = sqlx::query(&format!("SELECT {row} AS r FROM \"{table}\" ORDER BY r"))
            .fetch_all(&pool)
            .await
            .unwrap();
        dump.insert(
            table.clone(),
            rows.iter().map(|r| r.get::<String, _>(0)).collect(),
        );
    }
    pool.close().await;
    dump
}

/// The log identity in the database at `path`.
pub async fn log_id(path: &Path) -> String {
    let d = dump(path).await;
    d["_rhtmx_sync_meta"]
        .iter()
        .find(|r| r.starts_with("'log_id'"))
        .unwrap()
        .clone()
}
