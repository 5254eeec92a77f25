//! Several engines on one database file must never switch each other's capture off, and
//! whatever the triggers did not see (rows from before adoption, writes made while they
//! were removed for a migration, renamed or dropped columns) is logged when they are
//! back: replaying the log from version 0 gives the table.
//!
//! SQLite only: these are the handover rules of SQLite's triggers. On PostgreSQL the
//! capture is reconciled at every start and follows migrations while it runs
//! (`postgres_log.rs`: `rows_written_while_no_engine_ran_are_logged_at_the_next_start`,
//! `a_migration_while_the_app_runs_is_followed`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rhtmx_sync::SyncEngine;
use serde_json::Value;
use sqlx::SqlitePool;

use common::*;

async fn exec(pool: &SqlitePool, sql: &str) {
    if let Err(e) = sqlx::raw_sql(sql).execute(pool).await {
        panic!("{sql}: {e}");
    }
}

async fn pool_on(db: &TestDb) -> SqlitePool {
    single_pool(db).await.sqlite().clone()
}

async fn engine(pool: &SqlitePool, tables: &[&str]) -> SyncEngine {
    tables
        .iter()
        .fold(SyncEngine::builder(pool.clone()), |b, t| b.entity_named(*t))
        .build()
        .await
        .unwrap()
}

/// The table as rows of JSON (text columns only in these tests), `id -> row`.
async fn table(pool: &SqlitePool, table: &str) -> BTreeMap<String, Value> {
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
            .bind(table)
            .fetch_all(pool)
            .await
            .unwrap();
    let pairs = columns
        .iter()
        .map(|c| format!("'{c}', \"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT CAST(id AS TEXT), json_object({pairs}) FROM \"{table}\""
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, j)| (id, serde_json::from_str(&j).unwrap()))
        .collect()
}

async fn assert_replay_is_table(pool: &SqlitePool, name: &str, after: &str) {
    assert_eq!(
        replayed(&Db::Sqlite(pool.clone()), name).await,
        table(pool, name).await,
        "{name} after {after}"
    );
}

async fn trigger_count(pool: &SqlitePool, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? \
         AND name GLOB '_rhtmx_sync_*'",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .unwrap()
}

const TABLES: &str = "CREATE TABLE lists (id TEXT PRIMARY KEY, name TEXT);
                      CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);";

#[tokio::test]
async fn an_engine_that_registers_fewer_tables_does_not_switch_capture_off_for_another() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(&pool, TABLES).await;
    let app = engine(&pool, &["lists", "notes"]).await;
    // A worker or an admin tool builds an engine for `notes` only, and exits.
    let worker_pool = pool_on(&db).await;
    drop(engine(&worker_pool, &["notes"]).await);
    worker_pool.close().await;
    // The running app puts its `lists` triggers back and nothing it writes is lost.
    wait_until("the app's triggers are back", || async {
        trigger_count(&pool, "lists").await == 3
    })
    .await;
    exec(&pool, "INSERT INTO lists VALUES ('l1', 'kept')").await;
    assert_replay_is_table(&pool, "lists", "the worker's build").await;
    drop(app);
}

#[tokio::test]
async fn rows_the_triggers_never_saw_are_logged_when_an_engine_is_built() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(&pool, TABLES).await;
    // Rows from before the app adopted sync.
    exec(
        &pool,
        "ALTER TABLE lists ADD COLUMN extra TEXT;
         INSERT INTO lists VALUES ('old', 'from before', 'x'), ('old2', 'too', 'y');",
    )
    .await;
    let first = engine(&pool, &["lists"]).await;
    assert_replay_is_table(&pool, "lists", "adoption").await;
    drop(first);
    // A migration: triggers dropped, rows written meanwhile, a column dropped, another
    // renamed; the next build logs all of it.
    rhtmx_sync::drop_triggers(&pool).await.unwrap();
    exec(
        &pool,
        "INSERT INTO lists VALUES ('during', 'the migration', 'z');
         UPDATE lists SET name = 'changed unseen' WHERE id = 'old';
         DELETE FROM lists WHERE id = 'old2';
         ALTER TABLE lists DROP COLUMN extra;
         ALTER TABLE lists ADD COLUMN colour TEXT DEFAULT 'red';
         ALTER TABLE lists RENAME COLUMN name TO title;",
    )
    .await;
    let second = engine(&pool, &["lists"]).await;
    assert_replay_is_table(&pool, "lists", "the migration").await;
    // The reconciled update of `old` names what changed unseen: every field but the id
    // (renamed, added), not fields it did not have before.
    let changed: Option<String> = sqlx::query_scalar(
        "SELECT changed FROM _rhtmx_sync_log WHERE entity = 'lists' AND entity_id = 'old' \
         ORDER BY version DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(changed.as_deref(), Some(r#"["title","colour"]"#));
    let head = second.head().await.unwrap();
    drop(second);
    // A restart with nothing new writes nothing.
    let third = engine(&pool, &["lists"]).await;
    assert_eq!(third.head().await.unwrap(), head, "nothing to reconcile");
}

#[tokio::test]
async fn a_running_engine_follows_a_column_added_after_a_newer_build_exited() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(&pool, TABLES).await;
    let app = engine(&pool, &["notes"]).await;
    // Another process of the same app started and stopped: the newest build is gone.
    let other = pool_on(&db).await;
    drop(engine(&other, &["notes"]).await);
    other.close().await;
    exec(&pool, "ALTER TABLE notes ADD COLUMN prio TEXT").await;
    wait_until("the triggers log the new column", || async {
        let sql: String = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE name = '_rhtmx_sync_update_notes'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        sql.contains("'prio'")
    })
    .await;
    exec(
        &pool,
        "INSERT INTO notes VALUES ('n1', 'b', 'high'); UPDATE notes SET prio = 'low'",
    )
    .await;
    assert_replay_is_table(&pool, "notes", "the new column").await;
    drop(app);
}

#[tokio::test]
async fn tables_whose_names_extend_each_other_keep_their_own_triggers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(
        &pool,
        "CREATE TABLE x (id TEXT PRIMARY KEY, slug TEXT UNIQUE);
         CREATE TABLE x_before (id TEXT PRIMARY KEY, v TEXT);",
    )
    .await;
    let app = engine(&pool, &["x", "x_before"]).await;
    assert_eq!(trigger_count(&pool, "x").await, 6);
    assert_eq!(trigger_count(&pool, "x_before").await, 3);
    exec(
        &pool,
        "INSERT INTO x VALUES ('r1', 'a');
         INSERT OR REPLACE INTO x VALUES ('r2', 'a');
         INSERT INTO x_before VALUES ('b1', 'v');
         CREATE TABLE unrelated (id INTEGER PRIMARY KEY);",
    )
    .await;
    // Whatever schema change comes, each table keeps its own.
    wait_until("a poll after the schema change", || async {
        app.head().await.unwrap() >= 3
    })
    .await;
    assert_eq!(trigger_count(&pool, "x").await, 6);
    assert_eq!(trigger_count(&pool, "x_before").await, 3);
    exec(&pool, "INSERT INTO x_before VALUES ('b2', 'w')").await;
    assert_replay_is_table(&pool, "x", "REPLACE").await;
    assert_replay_is_table(&pool, "x_before", "inserts").await;
}

async fn log_len(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_null_key_is_not_synced_and_fails_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(&pool, TABLES).await;
    let app = engine(&pool, &["notes"]).await;
    // SQLite takes NULL in a TEXT primary key: the app's write must still succeed.
    exec(
        &pool,
        "INSERT INTO notes VALUES (NULL, 'legacy'), ('n1', 'b')",
    )
    .await;
    exec(&pool, "UPDATE notes SET body = 'c' WHERE id IS NULL").await;
    drop(app);
    // A build over it succeeds, and restarts write nothing.
    let again = engine(&pool, &["notes"]).await;
    let head = again.head().await.unwrap();
    drop(again);
    let third = engine(&pool, &["notes"]).await;
    assert_eq!(third.head().await.unwrap(), head);
    exec(&pool, "DELETE FROM notes WHERE id IS NULL").await;
    assert_eq!(replayed(&Db::Sqlite(pool.clone()), "notes").await.len(), 1);
}

#[tokio::test]
async fn rows_whose_keys_share_a_text_form_are_not_logged_again_at_each_restart() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(
        &pool,
        "CREATE TABLE mix (id PRIMARY KEY, v TEXT);
         INSERT INTO mix VALUES (1, 'int'), ('1', 'text'),
           (x'0190f6a2b3c47d8e9fa0b1c2d3e4f506', 'blob'),
           ('0190f6a2-b3c4-7d8e-9fa0-b1c2d3e4f506', 'uuid text');",
    )
    .await;
    drop(engine(&pool, &["mix"]).await);
    let after_first = log_len(&pool).await;
    for _ in 0..3 {
        drop(engine(&pool, &["mix"]).await);
        assert_eq!(log_len(&pool).await, after_first, "a restart logged again");
    }
}

#[tokio::test]
async fn after_a_pause_ends_two_registrations_do_not_take_a_table_from_each_other() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(
        &pool,
        "CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, body TEXT);
         INSERT INTO notes VALUES ('n1', 't', 'b');",
    )
    .await;
    // One version syncs every column, the other only the title.
    let all = engine(&pool, &["notes"]).await;
    let some = SyncEngine::builder(pool.clone())
        .entity::<TitleOnly>()
        .build()
        .await
        .unwrap();
    // A migration that never came: the pause ends at once.
    rhtmx_sync::drop_triggers_for(&pool, Duration::ZERO)
        .await
        .unwrap();
    wait_until("someone put the triggers back", || async {
        trigger_count(&pool, "notes").await == 3
    })
    .await;
    let version = |pool: SqlitePool| async move {
        sqlx::query_scalar::<_, i64>("PRAGMA schema_version")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // Each write reaches both streams only after both broadcasters handled every schema
    // change before it: then nobody may rewrite any more.
    let mut streams = Vec::new();
    for engine in [&all, &some] {
        let router: axum::Router = engine.routes();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        streams.push(Sse::connect(&base, "", None).await);
    }
    let mut settled = None;
    for n in 0..4 {
        exec(&pool, &format!("UPDATE notes SET title = 't{n}'")).await;
        for stream in &mut streams {
            assert_eq!(stream.next().await.data["data"]["title"], format!("t{n}"));
        }
        let now = version(pool.clone()).await;
        if n > 0 {
            assert_eq!(Some(now), settled, "the triggers were rewritten again");
        }
        settled = Some(now);
    }
    // Whoever won, what it syncs replays as the table.
    assert_eq!(
        replayed(&Db::Sqlite(pool.clone()), "notes").await["n1"]["title"],
        "t3"
    );
}

#[derive(rhtmx_sync::Syncable)]
#[sync(table = "notes")]
#[allow(dead_code)]
struct TitleOnly {
    id: String,
    title: String,
}

#[tokio::test]
async fn a_reconciled_row_conflicts_only_on_what_changed_unseen() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = pool_on(&db).await;
    exec(
        &pool,
        "CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, body TEXT);
         INSERT INTO notes VALUES ('n1', 'orig title', 'orig body');",
    )
    .await;
    let first = engine(&pool, &["notes"]).await;
    let base = first.head().await.unwrap();
    drop(first);
    // A column added without a default: no row changes for a client, nothing is logged.
    exec(&pool, "ALTER TABLE notes ADD COLUMN tag TEXT").await;
    let second = engine(&pool, &["notes"]).await;
    assert_eq!(
        second.head().await.unwrap(),
        base,
        "nothing changed for clients"
    );
    drop(second);
    // One with a default changes every row: logged, naming only that field.
    rhtmx_sync::drop_triggers(&pool).await.unwrap();
    exec(
        &pool,
        "ALTER TABLE notes ADD COLUMN colour TEXT DEFAULT 'red'",
    )
    .await;
    let third = engine(&pool, &["notes"]).await;
    let ctx = rhtmx_sync::SyncContext::new()
        .with_hlc(third.clock().now())
        .with_base_version(base)
        .with_client_id("tab");
    // An offline edit of the title, made against the old base, meets no conflict.
    let done = third
        .write_to("notes", &ctx)
        .update("n1", [("title", "client title")])
        .await
        .unwrap();
    assert!(done.applied() && done.conflict.is_none(), "{done:?}");
    let title: String = sqlx::query_scalar("SELECT title FROM notes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(title, "client title");
}
