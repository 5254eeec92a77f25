//! Migrations while the app runs and between deploys: columns added at runtime, columns
//! dropped after `drop_triggers`, entities no longer registered, UNIQUE constraints that
//! come and go, and two versions of the app sharing one database (a rolling deploy).
//!
//! Columns added while the app runs are tested on both backends; the rest is about
//! SQLite's triggers (`drop_triggers` exists only there; PostgreSQL's capture reads the
//! whole row and is reconciled at every start, see `postgres_log.rs`).

mod common;

use common::*;
use rhtmx_sync::SyncEngine;
use serde_json::json;
use sqlx::SqlitePool;

/// The engine's triggers on `table`, by name.
async fn triggers(pool: &SqlitePool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? \
         AND name GLOB '_rhtmx_sync_*' ORDER BY name",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn schema_version(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("PRAGMA schema_version")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn exec(pool: &SqlitePool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap();
}

/// Serves only the sync routes of `engine`; returns the base URL and the server task.
async fn serve(engine: &SyncEngine) -> (String, tokio::task::JoinHandle<()>) {
    let router: axum::Router = engine.routes();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, task)
}

async fn a_column_added_while_running_is_synced_for_an_entity_registered_by_name(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (server, pool) = start_with_notes(&db).await;
    let mut sse = Sse::connect(&server.base, "?entities=notes", None).await;

    pool.execute("ALTER TABLE notes ADD COLUMN color TEXT", args![])
        .await;
    // The broadcaster sees the schema change and reads the table again; on SQLite it
    // reinstalls its triggers with the new column.
    if backend == Backend::Sqlite {
        wait_until("the triggers of `notes` log `color`", || async {
            triggers(pool.sqlite(), "notes")
                .await
                .iter()
                .any(|(n, sql)| n == "_rhtmx_sync_update_notes" && sql.contains("\"color\""))
        })
        .await;
    }

    // A client may write the new column (it used to get 422 "unknown field": a
    // refused push writes nothing, so it is simply sent again until the engine has
    // followed the migration)...
    let create =
        json!({"changes": [{"id": 1, "action": "create", "data": {"body": "b", "color": "red"}}]})
            .to_string();
    wait_until("a push may write `color`", || async {
        let (status, body) = push_raw(&server.base, "notes", create.clone()).await;
        assert!(status == 200 || status == 422, "{status} {body}");
        status == 200
    })
    .await;
    let event = sse.next().await;
    assert_eq!(
        event.data["data"],
        json!({"id": 1, "body": "b", "color": "red"})
    );
    // ...and the app's own SQL touching only it is logged.
    pool.execute("UPDATE notes SET color = 'blue' WHERE id = 1", args![])
        .await;
    let event = sse.next().await;
    assert_eq!(event.data["changed"], json!(["color"]));
    assert_eq!(event.data["data"]["color"], "blue");
}
both!(a_column_added_while_running_is_synced_for_an_entity_registered_by_name);

async fn a_typed_entity_keeps_its_declared_columns_when_one_is_added(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    let before = match &server.db {
        Db::Sqlite(pool) => triggers(pool, "todos").await,
        Db::Postgres(_) => Vec::new(),
    };
    server
        .db
        .execute("ALTER TABLE todos ADD COLUMN notes TEXT", args![])
        .await;
    // The event of a later write comes from a tick that already saw the new column.
    add_todo(&server, &todo_id("t1"), "x").await;
    let event = sse.next().await;
    assert!(
        event.data["data"].get("notes").is_none(),
        "{:?}",
        event.data
    );
    if let Db::Sqlite(pool) = &server.db {
        assert_eq!(triggers(pool, "todos").await, before);
    }
    let (status, _) = push_raw(
        &server.base,
        "todos",
        json!({"changes": [{"id": todo_id("t1"), "action": "update", "data": {"notes": "n"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 422, "`notes` is not a field of the model");
}
both!(a_typed_entity_keeps_its_declared_columns_when_one_is_added);

#[tokio::test]
async fn a_column_the_triggers_name_can_be_dropped_after_drop_triggers() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = single_pool(&db).await.sqlite().clone();
    exec(&pool, "ALTER TABLE todos ADD COLUMN notes TEXT").await;
    // The previous deploy synced every column, `notes` included.
    let old = SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .build()
        .await
        .unwrap();
    drop(old);
    // This is what stopped the next deploy at start-up.
    let refused = sqlx::query("ALTER TABLE todos DROP COLUMN notes")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("notes"), "{refused}");

    // The documented order: drop triggers, migrate, build the engine.
    assert_eq!(rhtmx_sync::drop_triggers(&pool).await.unwrap(), 3);
    assert!(triggers(&pool, "todos").await.is_empty());
    exec(&pool, "ALTER TABLE todos DROP COLUMN notes").await;
    let server = start(&db).await;
    assert_eq!(triggers(&pool, "todos").await.len(), 3);
    let mut sse = Sse::connect(&server.base, "", None).await;
    add_todo(&server, &todo_id("after"), "captured").await;
    assert_eq!(sse.next().await.data["data"]["title"], "captured");
}

#[tokio::test]
async fn drop_triggers_inside_a_transaction_is_undone_with_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = single_pool(&db).await.sqlite().clone();
    // Never built: nothing to remove, nothing created.
    assert_eq!(rhtmx_sync::drop_triggers(&pool).await.unwrap(), 0);
    let server = start(&db).await;
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(rhtmx_sync::drop_triggers(&mut *tx).await.unwrap(), 3);
    tx.rollback().await.unwrap();
    assert_eq!(triggers(&pool, "todos").await.len(), 3);
    drop(server);
}

#[tokio::test]
async fn running_engines_leave_dropped_triggers_dropped_until_the_next_build() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (server, pool) = start_with_notes(&db).await;
    let pool = pool.sqlite().clone();
    assert_eq!(rhtmx_sync::drop_triggers(&pool).await.unwrap(), 6);
    exec(&pool, "ALTER TABLE notes ADD COLUMN color TEXT").await;
    // The running engine has seen the change once it accepts `color` (an update of a
    // missing row: nothing written to the table, the conflict reported)...
    let push = || async {
        push_raw(
            &server.base,
            "notes",
            json!({"changes": [{"id": 99, "action": "update", "data": {"color": "red"}}]})
                .to_string(),
        )
        .await
        .0 == 200
    };
    wait_until("the engine accepts `color`", push).await;
    // ...and has put no trigger back.
    assert!(triggers(&pool, "notes").await.is_empty());
    assert!(triggers(&pool, "todos").await.is_empty());
    // The next build installs them, with the new column.
    let next = start_with(&db, |b| b.entity_named("notes")).await;
    assert_eq!(triggers(&pool, "todos").await.len(), 3);
    let notes = triggers(&pool, "notes").await;
    assert_eq!(notes.len(), 3);
    assert!(notes
        .iter()
        .any(|(n, sql)| n == "_rhtmx_sync_update_notes" && sql.contains("\"color\"")));
    drop((server, next));
}

#[tokio::test]
async fn triggers_of_entities_no_longer_registered_are_removed_at_build() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (server, pool) = start_with_notes(&db).await;
    let pool = pool.sqlite().clone();
    assert_eq!(triggers(&pool, "notes").await.len(), 3);
    drop(server);
    // The next deploy syncs `todos` only.
    let server = start(&db).await;
    assert!(triggers(&pool, "notes").await.is_empty());
    exec(&pool, "INSERT INTO notes (body) VALUES ('not synced')").await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    add_todo(&server, &todo_id("t"), "x").await;
    assert_eq!(sse.next().await.data["entity"], "todos");
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_log WHERE entity = 'notes'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(logged, 0);
    // The app's own triggers are not the engine's, whatever their name.
    exec(
        &pool,
        "CREATE TRIGGER app_notes AFTER INSERT ON notes BEGIN SELECT 1; END",
    )
    .await;
    drop(server);
    let _server = start(&db).await;
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'app_notes'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 1);
}

#[tokio::test]
async fn the_replace_triggers_follow_the_unique_constraints() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = single_pool(&db).await.sqlite().clone();
    exec(
        &pool,
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT)",
    )
    .await;
    exec(&pool, "CREATE UNIQUE INDEX tags_name ON tags (name)").await;
    let server = start_with(&db, |b| b.entity_named("tags")).await;
    assert_eq!(triggers(&pool, "tags").await.len(), 6);
    drop(server);
    // Between deploys the constraint goes: the next build leaves three.
    exec(&pool, "DROP INDEX tags_name").await;
    let server = start_with(&db, |b| b.entity_named("tags")).await;
    let names: Vec<String> = triggers(&pool, "tags")
        .await
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        names,
        [
            "_rhtmx_sync_delete_tags",
            "_rhtmx_sync_insert_tags",
            "_rhtmx_sync_update_tags"
        ]
    );
    // While running, a constraint that comes brings them, one that goes takes them.
    exec(&pool, "CREATE UNIQUE INDEX tags_name ON tags (name)").await;
    wait_until("six triggers", || async {
        triggers(&pool, "tags").await.len() == 6
    })
    .await;
    // A REPLACE through the new constraint logs the row it removed.
    let mut sse = Sse::connect(&server.base, "?entities=tags", None).await;
    exec(&pool, "INSERT INTO tags (id, name) VALUES (1, 'a')").await;
    exec(
        &pool,
        "INSERT OR REPLACE INTO tags (id, name) VALUES (2, 'a')",
    )
    .await;
    let seen: Vec<(String, i64)> = sse
        .take(3)
        .await
        .iter()
        .map(|e| {
            (
                e.data["action"].as_str().unwrap().to_owned(),
                e.data["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create".into(), 1),
            ("delete".into(), 1),
            ("create".into(), 2)
        ]
    );
    exec(&pool, "DROP INDEX tags_name").await;
    wait_until("three triggers", || async {
        triggers(&pool, "tags").await.len() == 3
    })
    .await;
}

/// One round: a write, seen by both broadcasters, so that each has handled every schema
/// change committed before it. Returns the schema version after it.
async fn round_trip(pool: &SqlitePool, a: &mut Sse, b: &mut Sse) -> i64 {
    let id: String = sqlx::query_scalar(
        "SELECT printf('00000000-0000-7000-8000-%012d', count(*)) FROM _rhtmx_sync_log",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    exec_bind(pool, "INSERT INTO todos (id, title) VALUES (?, 'x')", &id).await;
    assert_eq!(a.next().await.data["id"], id);
    assert_eq!(b.next().await.data["id"], id);
    schema_version(pool).await
}

async fn update_trigger(pool: &SqlitePool) -> String {
    sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = '_rhtmx_sync_update_todos'")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn exec_bind(pool: &SqlitePool, sql: &str, value: &str) {
    sqlx::query(sql).bind(value).execute(pool).await.unwrap();
}

#[tokio::test]
async fn in_a_rolling_deploy_the_newest_build_wins_and_the_older_stops_rewriting() {
    let db = TestDb::new(Backend::Sqlite).await;
    // The old version: the typed model (id, title, completed).
    let old = start(&db).await;
    let pool = old.db.sqlite().clone();
    // The new version added `notes` and syncs every column.
    exec(&pool, "ALTER TABLE todos ADD COLUMN notes TEXT").await;
    let new = SyncEngine::builder(pool.clone())
        .entity_named("todos")
        .build()
        .await
        .unwrap();
    let (new_base, _task) = serve(&new).await;
    let mut old_sse = Sse::connect(&old.base, "", None).await;
    let mut new_sse = Sse::connect(&new_base, "", None).await;

    let settled = round_trip(&pool, &mut old_sse, &mut new_sse).await;
    for _ in 0..3 {
        assert_eq!(
            round_trip(&pool, &mut old_sse, &mut new_sse).await,
            settled,
            "the triggers were rewritten"
        );
    }
    assert!(
        update_trigger(&pool).await.contains("\"notes\""),
        "the newest build's definition is installed"
    );

    // An old-version process that starts now is the newest build: its definition wins,
    // and the other one stops rewriting in turn.
    let restarted = start(&db).await;
    let mut restarted_sse = Sse::connect(&restarted.base, "", None).await;
    let settled = round_trip(&pool, &mut old_sse, &mut new_sse).await;
    assert_eq!(restarted_sse.next().await.data["action"], "create");
    assert_eq!(round_trip(&pool, &mut old_sse, &mut new_sse).await, settled);
    assert!(!update_trigger(&pool).await.contains("\"notes\""));
}
