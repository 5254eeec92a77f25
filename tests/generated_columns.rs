//! A generated column (`GENERATED ALWAYS AS ...`, virtual or stored; PostgreSQL before
//! 18 has only stored ones) syncs read-only:
//! the engine builds, clients get its value in every row, and a client writing it is
//! refused with a 422 that says why.

mod common;

use common::*;
use rhtmx_sync::{Hlc, SyncContext, Syncable};
use serde_json::{json, Value};

/// A model whose table computes two of its columns.
#[derive(Debug, PartialEq, sqlx::FromRow, Syncable)]
#[sync(table = "people")]
struct Person {
    id: String,
    first: String,
    last: String,
    /// `GENERATED ALWAYS AS (...) VIRTUAL` (`STORED` on PostgreSQL).
    full_name: String,
    /// `GENERATED ALWAYS AS (...) STORED`, and `NOT NULL` without a default.
    initials: String,
}

/// The table on `backend`: PostgreSQL (before 18) has no virtual generated column.
fn people(backend: Backend) -> String {
    let virtual_ = match backend {
        Backend::Sqlite => "VIRTUAL",
        Backend::Postgres => "STORED",
    };
    format!(
        "CREATE TABLE people (
    id TEXT PRIMARY KEY NOT NULL,
    first TEXT NOT NULL,
    last TEXT NOT NULL,
    full_name TEXT GENERATED ALWAYS AS (first || ' ' || last) {virtual_},
    initials TEXT NOT NULL GENERATED ALWAYS AS (substr(first, 1, 1) || substr(last, 1, 1)) STORED
)"
    )
}

/// The example's database with `people` added, on a pool of its own.
async fn people_db(db: &TestDb) -> Db {
    let pool = db.connect().await;
    pool.execute(&people(db.backend), args![]).await;
    pool
}

/// The rows, read through the model.
async fn rows(pool: &Db) -> Vec<Person> {
    pool.fetch_all("SELECT * FROM people ORDER BY id", args![])
        .await
}

async fn a_model_with_generated_columns_builds_and_syncs_them_read_only(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = people_db(&db).await;
    let server = start_with(&db, |b| b.entity::<Person>().writable("people")).await;

    // Written by the app's own SQL: the log carries the computed values.
    pool.execute(
        "INSERT INTO people (id, first, last) VALUES ('p1', 'Ada', 'Lovelace')",
        args![],
    )
    .await;
    let (status, page) = pull(&server.base, "people", "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["changes"][0]["data"],
        json!({"id": "p1", "first": "Ada", "last": "Lovelace",
               "full_name": "Ada Lovelace", "initials": "AL"})
    );

    // A client creates without them (the NOT NULL stored one is not "required") and
    // renames; the event carries what the database computed.
    let mut sse = Sse::connect(&server.base, "?entities=people", None).await;
    let body = json!({"changes": [
        {"id": "p2", "action": "create", "data": {"first": "Alan", "last": "Turing"}},
        {"id": "p1", "action": "update", "data": {"last": "King"}},
    ]});
    let (status, res) = push_raw(&server.base, "people", body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(sse.next().await.data["data"]["full_name"], "Alan Turing");
    let update = sse.next().await;
    assert_eq!(update.data["data"]["full_name"], "Ada King");
    assert_eq!(update.data["data"]["initials"], "AK");

    let before = rows(&pool).await;
    let refused = [
        json!({"id": "p1", "action": "update", "data": {"full_name": "Someone Else"}}),
        json!({"id": "p1", "action": "update", "data": {"first": "Grace", "initials": "GH"}}),
        json!({"id": "p3", "action": "create", "data": {"first": "A", "last": "B", "full_name": "A B"}}),
        json!({"id": "p3", "action": "create", "data": {"first": "A", "last": "B", "initials": null}}),
    ];
    for change in refused {
        let (status, res) = push_raw(
            &server.base,
            "people",
            json!({"changes": [change]}).to_string(),
        )
        .await;
        assert_eq!(status, 422, "{change}: {res}");
        let error = res["error"].as_str().unwrap();
        assert!(
            error.contains("generated") && error.contains("read-only"),
            "{change}: unclear message `{error}`"
        );
    }
    // A handler writing through the engine is refused the same way.
    let err = server
        .engine
        .write::<Person>(&SyncContext::new())
        .update("p1", [("full_name", json!("x"))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("generated"), "{err}");
    assert_eq!(rows(&pool).await, before, "a refused write changed a row");
}
both!(a_model_with_generated_columns_builds_and_syncs_them_read_only);

async fn a_table_registered_by_name_syncs_its_generated_columns_too(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = people_db(&db).await;
    let server = start_with(&db, |b| b.entity_named("people").writable("people")).await;
    pool.execute(
        "INSERT INTO people (id, first, last) VALUES ('p1', 'Ada', 'Lovelace')",
        args![],
    )
    .await;
    let (_, page) = pull(&server.base, "people", "").await;
    assert_eq!(page["changes"][0]["data"]["full_name"], "Ada Lovelace");
    assert_eq!(page["changes"][0]["data"]["initials"], "AL");
}
both!(a_table_registered_by_name_syncs_its_generated_columns_too);

async fn an_update_newer_than_a_delete_restores_the_row_without_writing_generated_columns(
    backend: Backend,
) {
    // With delete_wins = false the row comes back from its last logged state, which
    // holds the generated values: they must not be inserted.
    let db = TestDb::new(backend).await;
    let pool = people_db(&db).await;
    let server = start_with(&db, |b| {
        b.entity::<Person>()
            .writable("people")
            .delete_wins("people", false)
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hlc = |ms: u64, node: u64| Hlc::new(now + ms, 0, node).to_string();
    let push = |client: &'static str, changes: Value| {
        let base = server.base.clone();
        async move {
            let body = json!({"client_id": client, "changes": changes});
            push_raw(&base, "people", body.to_string()).await
        }
    };
    let (status, res) = push(
        "a",
        json!([{"id": "p1", "action": "create", "hlc": hlc(0, 0xa),
        "data": {"first": "Ada", "last": "Lovelace"}}]),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let base = res["version"].as_i64().unwrap();
    let (status, res) = push(
        "a",
        json!([{"id": "p1", "action": "delete", "hlc": hlc(10, 0xa)}]),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let (status, res) = push(
        "b",
        json!([{"id": "p1", "action": "update", "hlc": hlc(20, 0xb),
        "client_version": base, "data": {"last": "King"}}]),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(
        rows(&pool).await,
        [Person {
            id: "p1".into(),
            first: "Ada".into(),
            last: "King".into(),
            full_name: "Ada King".into(),
            initials: "AK".into(),
        }]
    );
}
both!(an_update_newer_than_a_delete_restores_the_row_without_writing_generated_columns);
