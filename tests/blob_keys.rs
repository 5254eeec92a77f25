//! Blob primary keys (sqlx stores `uuid::Uuid` as a 16-byte BLOB) work end to end with
//! one text form on the wire, and no undecodable log row can stall live updates or
//! truncate a pull.

mod common;

use common::*;
use rhtmx_sync::SyncContext;
use serde_json::{json, Value};

/// `things` keyed by a BLOB, `bins` by a BLOB that is not a UUID, and todos.
async fn start_with_blobs(db: &std::path::Path) -> Server {
    let pool = app::open_db(&url(db)).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE things (id BLOB PRIMARY KEY NOT NULL, name TEXT NOT NULL);
         CREATE TABLE bins (id BLOB PRIMARY KEY NOT NULL, n INTEGER);",
    )
    .execute(&pool)
    .await
    .unwrap();
    start_with(db, |b| {
        b.entity_named("things")
            .entity_named("bins")
            .writable("things")
            .writable("bins")
    })
    .await
}

#[tokio::test]
async fn a_uuid_blob_key_travels_as_its_hyphenated_text() {
    let (_dir, db) = temp_db();
    let server = start_with_blobs(&db).await;
    let mut events = Sse::connect(&server.base, "", None).await;
    let id = uuid::Uuid::now_v7();
    // The app's own SQL, binding the UUID as sqlx does: 16 raw bytes.
    sqlx::query("INSERT INTO things (id, name) VALUES (?, 'lamp')")
        .bind(id.as_bytes().as_slice())
        .execute(&server.pool)
        .await
        .unwrap();
    let event = events.next().await;
    assert_eq!(event.data["entity"], "things");
    assert_eq!(event.data["id"], id.to_string());
    assert_eq!(event.data["data"]["id"], id.to_string());
    // Live updates of every other entity keep flowing after it.
    add_todo(&server, &todo_id("after"), "still live").await;
    assert_eq!(events.next().await.data["id"], todo_id("after"));

    let (status, page) = pull(&server.base, "things", "").await;
    assert_eq!(status, 200);
    assert_eq!(page["changes"][0]["id"], id.to_string());

    // A client writes back with the id it was given (any case), through the push API
    // and through `engine.write`, and the app's row changes.
    let upper = id.to_string().to_uppercase();
    let (status, res) = push_raw(
        &server.base,
        "things",
        json!({"changes": [{"id": upper, "action": "update", "data": {"name": "desk lamp"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["applied"], json!([id.to_string()]), "{res}");
    assert_eq!(res["conflicts"], json!([]));
    let name: String = sqlx::query_scalar("SELECT name FROM things WHERE id = ?")
        .bind(id.as_bytes().as_slice())
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(name, "desk lamp");
    let done = server
        .engine
        .write_to("things", &SyncContext::new())
        .update(id.to_string(), [("name", "lamp again")])
        .await
        .unwrap();
    assert!(done.applied());
    // A create through the push API stores a BLOB, as the app's own rows are.
    let fresh = uuid::Uuid::now_v7();
    let (status, res) = push_raw(
        &server.base,
        "things",
        json!({"changes": [{"id": fresh.to_string(), "action": "create", "data": {"name": "chair"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let kind: String = sqlx::query_scalar("SELECT typeof(id) FROM things WHERE name = 'chair'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(kind, "blob");
    let (_, page) = pull(&server.base, "things", "").await;
    let ids: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let (id, fresh) = (id.to_string(), fresh.to_string());
    assert_eq!(ids, [id.as_str(), &id, &id, &fresh]);
    // Deleting by the text form deletes the row.
    let (status, _) = push_raw(
        &server.base,
        "things",
        json!({"changes": [{"id": id, "action": "delete"}]}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM things")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
}

#[tokio::test]
async fn other_blob_keys_travel_as_hex_and_bad_text_is_refused() {
    let (_dir, db) = temp_db();
    let server = start_with_blobs(&db).await;
    sqlx::query("INSERT INTO bins (id, n) VALUES (x'00ff10', 1)")
        .execute(&server.pool)
        .await
        .unwrap();
    let (_, page) = pull(&server.base, "bins", "").await;
    assert_eq!(page["changes"][0]["id"], "00ff10");
    let (status, res) = push_raw(
        &server.base,
        "bins",
        json!({"changes": [{"id": "00FF10", "action": "update", "data": {"n": 2}}]}).to_string(),
    )
    .await;
    assert_eq!(
        (status, &res["applied"]),
        (200, &json!(["00ff10"])),
        "{res}"
    );
    for bad in ["not hex", "abc", ""] {
        let (status, res) = push_raw(
            &server.base,
            "bins",
            json!({"changes": [{"id": bad, "action": "delete"}]}).to_string(),
        )
        .await;
        assert_eq!(status, 422, "{bad}: {res}");
    }
}

/// A log row whose text is not UTF-8 (what the old triggers wrote for a blob key) is
/// delivered lossily, never retried forever or allowed to end a pull early.
#[tokio::test]
async fn an_undecodable_log_row_stalls_nothing() {
    let (_dir, db) = temp_db();
    let server = start(&db).await;
    let mut events = Sse::connect(&server.base, "", None).await;
    add_todo(&server, &todo_id("a"), "before").await;
    assert_eq!(events.next().await.data["id"], todo_id("a"));
    sqlx::query(
        "INSERT INTO _rhtmx_sync_log (entity, entity_id, action, data) \
         VALUES ('todos', CAST(x'ff00fe' AS TEXT), 'delete', NULL)",
    )
    .execute(&server.pool)
    .await
    .unwrap();
    add_todo(&server, &todo_id("b"), "after").await;
    let bad = events.next().await;
    assert_eq!(bad.data["action"], "delete");
    assert_eq!(events.next().await.data["id"], todo_id("b"));
    let (status, page) = pull(&server.base, "todos", "").await;
    assert_eq!(status, 200);
    assert_eq!(page["changes"].as_array().unwrap().len(), 3, "{page}");
    assert_eq!(page["changes"][2]["id"], todo_id("b"));
}

/// Integer keys beyond 2^53 cannot be JSON numbers in a browser: they travel as strings,
/// and come back as either.
#[tokio::test]
async fn integer_keys_beyond_2_pow_53_travel_as_strings() {
    let (_dir, db) = temp_db();
    let (server, pool) = start_with_notes(&db).await;
    let big: i64 = (1 << 53) + 1;
    let mut events = Sse::connect(&server.base, "?entities=notes", None).await;
    sqlx::query("INSERT INTO notes (id, body) VALUES (?, 'big'), (7, 'small')")
        .bind(big)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(events.next().await.data["id"], big.to_string());
    let (_, page) = pull(&server.base, "notes", "").await;
    assert_eq!(page["changes"][0]["id"], big.to_string());
    assert_eq!(page["changes"][0]["data"]["id"], big.to_string());
    assert_eq!(page["changes"][1]["id"], 7);
    let (status, res) = push_raw(
        &server.base,
        "notes",
        json!({"changes": [{"id": big.to_string(), "action": "update", "data": {"body": "B"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(
        (status, &res["applied"]),
        (200, &json!([big.to_string()])),
        "{res}"
    );
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = ?")
        .bind(big)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(body, "B");
}

/// The extremes of i64 (where `abs` overflows) travel as strings, through the app's SQL,
/// the event stream, pulls and pushes; nothing panics or stalls.
#[tokio::test]
async fn the_smallest_and_largest_integers_are_keys_like_any_other() {
    let (_dir, db) = temp_db();
    let (server, pool) = start_with_notes(&db).await;
    let mut events = Sse::connect(&server.base, "?entities=notes", None).await;
    sqlx::query("INSERT INTO notes (id, body) VALUES (?, 'min')")
        .bind(i64::MIN)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(events.next().await.data["id"], i64::MIN.to_string());
    for id in [json!(i64::MAX), json!(i64::MIN.to_string())] {
        let (status, res) = push_raw(
            &server.base,
            "notes",
            json!({"changes": [{"id": id, "action": "create", "data": {"body": "pushed"}}]})
                .to_string(),
        )
        .await;
        assert_eq!(status, 200, "{id}: {res}");
    }
    let (status, page) = pull(&server.base, "notes", "").await;
    assert_eq!(status, 200);
    let ids: Vec<&Value> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(
        ids,
        [
            &json!(i64::MIN.to_string()),
            &json!(i64::MAX.to_string()),
            &json!(i64::MIN.to_string())
        ]
    );
    // Live updates go on.
    sqlx::query("INSERT INTO notes (id, body) VALUES (8, 'after')")
        .execute(&pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(events.next().await.data["id"].clone());
    }
    assert_eq!(seen.last(), Some(&json!(8)));
}

/// A blob in a JSON column (not JSON text) must never make the app's own write fail.
#[tokio::test]
async fn a_blob_in_a_json_column_does_not_fail_the_apps_write() {
    let (_dir, db) = temp_db();
    let pool = app::open_db(&url(&db)).await.unwrap();
    sqlx::query("CREATE TABLE docs (id TEXT PRIMARY KEY NOT NULL, doc JSON)")
        .execute(&pool)
        .await
        .unwrap();
    let server = start_with(&db, |b| b.entity_named("docs").writable("docs")).await;
    sqlx::raw_sql(
        "INSERT INTO docs VALUES ('bad', x'0badc0de'), ('random', randomblob(8)), \
         ('text', '{\"a\": 1}'), ('zero', x'00');
         UPDATE docs SET doc = x'ff' WHERE id = 'text';",
    )
    .execute(&server.pool)
    .await
    .expect("the app's writes succeed");
    let (status, page) = pull(&server.base, "docs", "").await;
    assert_eq!(status, 200);
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 5);
    assert_eq!(changes[0]["data"]["doc"], "0badc0de");
    assert_eq!(changes[2]["data"]["doc"], json!({"a": 1}));
    assert_eq!(changes[4]["data"]["doc"], "ff");
}
