//! The push API writes only what the app allows: no entity is writable unless the app
//! says so, the app's validation runs on every pushed change, and an entity whose model
//! says `offline_writes = false` cannot be made writable.

mod common;

use common::*;
use rhtmx_sync::{Action, BuildError, PushedChange, SyncEngine};
use serde_json::json;

fn create(id: &str, title: &str) -> serde_json::Value {
    json!({"id": todo_id(id), "action": "create", "data": {"title": title}})
}

async fn an_entity_the_app_did_not_make_writable_refuses_every_push(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_without_push(&db).await;
    let (status, body) = push_raw(
        &server.base,
        "todos",
        json!({"changes": [create("a", "t")]}).to_string(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not writable"),
        "{body}"
    );
    assert!(todos(&server.db).await.is_empty());
    // Reads still work.
    assert_eq!(pull(&server.base, "todos", "?since=0").await.0, 200);
}
both!(an_entity_the_app_did_not_make_writable_refuses_every_push);

async fn the_apps_validation_runs_on_every_pushed_change_all_or_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| {
        b.validate("todos", |change: &PushedChange<'_>| {
            let title = change
                .data
                .and_then(|d| d.get("title"))
                .and_then(|t| t.as_str());
            match (change.action, title) {
                (Action::Create | Action::Update, Some(t)) if t.trim().is_empty() => {
                    Err("title must be 1 to 500 characters".to_owned())
                }
                _ => Ok(()),
            }
        })
    })
    .await;
    let (status, body) = push_raw(
        &server.base,
        "todos",
        json!({"changes": [create("a", "fine"), create("b", "   ")]}).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"],
        "changes[1]: title must be 1 to 500 characters"
    );
    assert!(todos(&server.db).await.is_empty(), "all or nothing");
    let (status, body) = push_raw(
        &server.base,
        "todos",
        json!({"changes": [create("a", "fine")]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(todos(&server.db).await.len(), 1);
}
both!(the_apps_validation_runs_on_every_pushed_change_all_or_nothing);

#[derive(sqlx::FromRow, rhtmx_sync::Syncable)]
#[sync(table = "audit", offline_writes = false)]
#[allow(dead_code)]
struct Audit {
    id: i64,
    what: String,
}

async fn an_entity_that_takes_no_offline_writes_cannot_be_made_writable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let key = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres => "bigserial PRIMARY KEY",
    };
    Db::from(&pool)
        .execute(
            &format!("CREATE TABLE audit (id {key}, what TEXT NOT NULL)"),
            args![],
        )
        .await;
    let built = SyncEngine::builder(pool.clone())
        .entity::<Audit>()
        .writable("audit")
        .build()
        .await;
    assert!(
        matches!(built, Err(BuildError::NotWritable { ref table }) if table == "audit"),
        "{built:?}"
    );
    let unknown = SyncEngine::builder(pool)
        .entity::<Audit>()
        .writable("nope")
        .build()
        .await;
    assert!(
        matches!(unknown, Err(BuildError::NotRegistered { .. })),
        "{unknown:?}"
    );
}
both!(an_entity_that_takes_no_offline_writes_cannot_be_made_writable);

/// The example's push API obeys its handlers' rules (a blank title is refused by both).
async fn the_example_holds_pushed_todos_to_its_handlers_rules(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let engine = app::engine(pool.clone()).await.unwrap();
    let (base, _task) = serve(app::app(engine.clone()).merge(engine.routes())).await;
    let cases = [
        (
            json!({"id": todo_id("a"), "action": "create", "data": {"title": "   "}}),
            422,
            "changes[0]: title must be 1 to 500 characters",
        ),
        (
            json!({"id": "not-a-uuid", "action": "create", "data": {"title": "t"}}),
            422,
            "changes[0]: id must be a UUID (8-4-4-4-12 hexadecimal digits)",
        ),
        (
            json!({"id": "0192F0A0-0000-7000-8000-0000000000AB", "action": "create", "data": {"title": "t"}}),
            422,
            "changes[0]: id must be a UUID (8-4-4-4-12 hexadecimal digits)",
        ),
        (
            json!({"id": todo_id("a"), "action": "create", "data": {"title": "fine"}}),
            200,
            "",
        ),
    ];
    for (change, status, error) in cases {
        let (got, body) = push_raw(&base, "todos", json!({"changes": [change]}).to_string()).await;
        assert_eq!(got, status, "{body}");
        if status != 200 {
            assert_eq!(body["error"], error);
        }
    }
    assert_eq!(todos(&Db::from(&pool)).await.len(), 1);
}
both!(the_example_holds_pushed_todos_to_its_handlers_rules);
