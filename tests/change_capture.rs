//! Every write is captured, whatever path made it, atomically with the write.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn a_plain_sqlx_handler_write_appears_in_pull_and_on_sse() {
    let (_dir, db) = temp_db();
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;

    // POST /todos is the example's own handler: `sqlx::query!("INSERT ...")`, no sync code.
    let a1 = todo_id("a1");
    add_todo(&server, &a1, "buy milk").await;

    let event = sse.next().await;
    assert_eq!(event.data["entity"], "todos");
    assert_eq!(event.data["action"], "create");
    assert_eq!(event.data["id"], a1);
    assert_eq!(event.data["data"]["title"], "buy milk");
    assert_eq!(event.data["data"]["completed"], false);
    assert_eq!(event.data["version"].as_i64(), Some(event.version()));

    let (status, body) = pull(&server.base, "todos", "?since=0").await;
    assert_eq!(status, 200);
    let changes = body["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["id"], a1);
    assert_eq!(changes[0]["data"]["title"], "buy milk");
    assert_eq!(body["version"].as_i64(), Some(event.version()));
    assert_eq!(body["has_more"], false);

    // Toggle, rename and delete go through plain `sqlx::query!` too.
    let c = client();
    c.post(format!("{}/todos/{a1}/toggle", server.base))
        .send()
        .await
        .unwrap();
    c.put(format!("{}/todos/{a1}", server.base))
        .form(&[("title", "buy oat milk")])
        .send()
        .await
        .unwrap();
    c.delete(format!("{}/todos/{a1}", server.base))
        .send()
        .await
        .unwrap();
    let events = sse.take(3).await;
    let actions: Vec<_> = events
        .iter()
        .map(|e| e.data["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["update", "update", "delete"]);
    assert_eq!(events[0].data["data"]["completed"], true);
    assert_eq!(events[0].data["changed"], serde_json::json!(["completed"]));
    assert_eq!(events[1].data["changed"], serde_json::json!(["title"]));
    assert!(
        events[2].data.get("data").is_none(),
        "a delete carries no row"
    );
    let versions: Vec<i64> = events.iter().map(SseEvent::version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions increase: {versions:?}"
    );
}

#[tokio::test]
async fn writes_outside_any_handler_are_captured_and_rollbacks_are_not() {
    let (_dir, db) = temp_db();
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;

    // A second, independent pool on the same file: another writer the engine never saw.
    let other = app::open_db(&url(&db)).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('r1', 'rolled back')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    sqlx::query("INSERT INTO todos (id, title) VALUES ('k1', 'kept'), ('k2', 'kept too')")
        .execute(&other)
        .await
        .unwrap();
    // A no-op update changes nothing and logs nothing.
    sqlx::query("UPDATE todos SET title = title")
        .execute(&other)
        .await
        .unwrap();
    // Changing a key is the old row's delete and the new row's create.
    sqlx::query("UPDATE todos SET id = 'k3' WHERE id = 'k2'")
        .execute(&other)
        .await
        .unwrap();

    let events = sse.take(4).await;
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.data["action"].as_str().unwrap().into(),
                e.data["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create".into(), "k1".into()),
            ("create".into(), "k2".into()),
            ("delete".into(), "k2".into()),
            ("create".into(), "k3".into()),
        ] as [(String, String); 4]
    );
    sse.assert_quiet(Duration::from_millis(300)).await;
    assert_eq!(replay_log(&server.pool).await, todos(&server.pool).await);
}

#[tokio::test]
async fn triggers_come_back_when_a_migration_recreates_the_table() {
    let (_dir, db) = temp_db();
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    // SQLite's usual "alter" recipe: new table, copy, drop old, rename. Dropping the old
    // table drops its triggers.
    sqlx::raw_sql(
        "BEGIN;
         CREATE TABLE todos_new (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL,
                                 completed BOOLEAN NOT NULL DEFAULT false);
         INSERT INTO todos_new SELECT * FROM todos;
         DROP TABLE todos;
         ALTER TABLE todos_new RENAME TO todos;
         COMMIT;",
    )
    .execute(&server.pool)
    .await
    .unwrap();
    // The broadcaster notices the schema change and reinstalls the triggers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'todos'",
        )
        .fetch_one(&server.pool)
        .await
        .unwrap();
        if n == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "triggers not reinstalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    add_todo(&server, &todo_id("m1"), "after migration").await;
    assert_eq!(sse.next().await.data["id"], todo_id("m1"));
}

#[tokio::test]
async fn starting_twice_installs_nothing_new() {
    let (_dir, db) = temp_db();
    let first = start(&db).await;
    let schema = |pool: sqlx::SqlitePool| async move {
        let v: i64 = sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&pool)
            .await
            .unwrap();
        v
    };
    let before = schema(first.pool.clone()).await;
    let second = start(&db).await;
    assert_eq!(
        schema(second.pool.clone()).await,
        before,
        "restart changed the schema"
    );
}
