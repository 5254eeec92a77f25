//! A synced table whose key is SQLite's rowid without `AUTOINCREMENT` gives a deleted
//! row's number to the next row: the engine says so when it is built. (SQLite only: a
//! PostgreSQL sequence never hands out a number twice.)

mod common;

use common::*;
use rhtmx_sync::SyncEngine;
use sqlx::sqlite::SqlitePoolOptions;

/// The tables warned about while building an engine over `schema`.
async fn warned(schema: &str, tables: &[&str]) -> Vec<String> {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(captured.clone())),
    );
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = SqlitePoolOptions::new()
        .connect(&format!("{}?mode=rwc", db.url))
        .await
        .unwrap();
    sqlx::raw_sql(schema).execute(&pool).await.unwrap();
    let mut builder = SyncEngine::builder(pool);
    for table in tables {
        builder = builder.entity_named(*table);
    }
    builder.build().await.unwrap();
    let events = captured.lock().unwrap();
    events
        .iter()
        .filter(|(_, fields)| {
            fields
                .get("message")
                .is_some_and(|m| m.contains("AUTOINCREMENT"))
        })
        .map(|(_, fields)| fields["table"].trim_matches('"').to_owned())
        .collect()
}

#[tokio::test]
async fn a_rowid_key_without_autoincrement_is_warned_about() {
    let schema = "
        CREATE TABLE reused (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE lower_case (id integer primary key, v TEXT);
        CREATE TABLE counted (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
        CREATE TABLE named (id TEXT PRIMARY KEY, v TEXT);
        CREATE TABLE not_rowid (id INT PRIMARY KEY, v TEXT);
    ";
    let tables = ["reused", "lower_case", "counted", "named", "not_rowid"];
    assert_eq!(warned(schema, &tables).await, ["reused", "lower_case"]);
}
