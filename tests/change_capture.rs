//! Every write is captured, whatever path made it, atomically with the write.

mod common;

use common::*;
use std::time::Duration;

async fn a_plain_sqlx_handler_write_appears_in_pull_and_on_sse(backend: Backend) {
    let db = TestDb::new(backend).await;
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
both!(a_plain_sqlx_handler_write_appears_in_pull_and_on_sse);

async fn writes_outside_any_handler_are_captured_and_rollbacks_are_not(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;

    // A second, independent pool on the same database: another writer the engine never
    // saw.
    let other = db.connect().await;
    let rolled_back = "INSERT INTO todos (id, title) VALUES ('r1', 'rolled back')";
    match &other {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(rolled_back).execute(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(rolled_back).execute(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
        }
    }
    other
        .execute(
            "INSERT INTO todos (id, title) VALUES ('k1', 'kept'), ('k2', 'kept too')",
            args![],
        )
        .await;
    // A no-op update changes nothing and logs nothing.
    other
        .execute("UPDATE todos SET title = title", args![])
        .await;
    // Changing a key is the old row's delete and the new row's create.
    other
        .execute("UPDATE todos SET id = 'k3' WHERE id = 'k2'", args![])
        .await;

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
    assert_eq!(replay_log(&server.db).await, todos(&server.db).await);
}
both!(writes_outside_any_handler_are_captured_and_rollbacks_are_not);

async fn triggers_come_back_when_a_migration_recreates_the_table(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    // SQLite's usual "alter" recipe (valid on PostgreSQL too): new table, copy, drop
    // old, rename. Dropping the old table drops its triggers.
    server
        .db
        .execute_script(
            "BEGIN;
         CREATE TABLE todos_new (id TEXT PRIMARY KEY NOT NULL, title TEXT NOT NULL,
                                 completed BOOLEAN NOT NULL DEFAULT false);
         INSERT INTO todos_new SELECT * FROM todos;
         DROP TABLE todos;
         ALTER TABLE todos_new RENAME TO todos;
         COMMIT;",
        )
        .await;
    // The broadcaster notices the schema change and reinstalls the triggers (each
    // backend's own: three on SQLite, the row and the TRUNCATE one on PostgreSQL).
    let (installed, wanted) = match backend {
        Backend::Sqlite => (
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'todos'",
            3,
        ),
        Backend::Postgres => (
            "SELECT count(*) FROM pg_trigger \
             WHERE tgrelid = to_regclass('todos') AND NOT tgisinternal",
            2,
        ),
    };
    wait_until("triggers reinstalled", || async {
        server.db.scalar::<i64>(installed, args![]).await == wanted
    })
    .await;
    add_todo(&server, &todo_id("m1"), "after migration").await;
    assert_eq!(sse.next().await.data["id"], todo_id("m1"));
}
both!(triggers_come_back_when_a_migration_recreates_the_table);

async fn starting_twice_installs_nothing_new(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = start(&db).await;
    let before = schema(&first.db).await;
    let second = start(&db).await;
    assert_eq!(
        schema(&second.db).await,
        before,
        "restart changed the schema"
    );
}
both!(starting_twice_installs_nothing_new);

/// The schema's version: SQLite's counter of schema changes; on PostgreSQL every
/// function, trigger, relation and column of the schema with the transaction that last
/// wrote its definition (a `CREATE OR REPLACE` writes a new one).
async fn schema(db: &Db) -> String {
    match db.backend() {
        Backend::Sqlite => db
            .scalar::<i64>("PRAGMA schema_version", args![])
            .await
            .to_string(),
        Backend::Postgres => {
            db.scalar(
                "SELECT string_agg(item, E'\\n' ORDER BY item) FROM (
                   SELECT 'function ' || p.proname || ' ' || p.xmin::text AS item
                   FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace
                   UNION ALL
                   SELECT 'trigger ' || c.relname || '.' || t.tgname || ' ' || t.xmin::text
                   FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                   WHERE c.relnamespace = current_schema()::regnamespace
                   UNION ALL
                   SELECT 'relation ' || c.relname || ' ' || c.oid::text
                   FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace
                   UNION ALL
                   SELECT 'column ' || c.relname || '.' || a.attname || ' ' || a.xmin::text
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   WHERE c.relnamespace = current_schema()::regnamespace AND a.attnum > 0
                 ) AS items",
                args![],
            )
            .await
        }
    }
}
