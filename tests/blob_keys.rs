//! Blob primary keys (sqlx stores `uuid::Uuid` as a 16-byte BLOB on SQLite; `bytea`, or
//! `uuid` itself, on PostgreSQL) work end to end with one text form on the wire, and no
//! undecodable log row can stall live updates or truncate a pull.

mod common;

use common::*;
use rhtmx_sync::SyncContext;
use serde_json::{json, Value};

/// The column types that hold a UUID key as its 16 bytes on `backend`.
fn uuid_keys(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => &["BLOB"],
        Backend::Postgres => &["bytea", "uuid"],
    }
}

/// `things` keyed by a UUID (a BLOB, unless `key` says otherwise), `bins` by a BLOB that
/// is not a UUID, and todos.
async fn start_with_blobs(db: &TestDb, key: Option<&str>) -> Server {
    let pool = db.connect().await;
    let blob = match db.backend {
        Backend::Sqlite => "BLOB",
        Backend::Postgres => "bytea",
    };
    let key = key.unwrap_or(blob);
    pool.execute(
        &format!("CREATE TABLE things (id {key} PRIMARY KEY NOT NULL, name TEXT NOT NULL)"),
        args![],
    )
    .await;
    pool.execute(
        &format!("CREATE TABLE bins (id {blob} PRIMARY KEY NOT NULL, n INTEGER)"),
        args![],
    )
    .await;
    start_with(db, |b| {
        b.entity_named("things")
            .entity_named("bins")
            .writable("things")
            .writable("bins")
    })
    .await
}

/// The SQL literal of the bytes `bytes` on `backend`.
fn blob(backend: Backend, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match backend {
        Backend::Sqlite => format!("x'{hex}'"),
        Backend::Postgres => format!("'\\x{hex}'::bytea"),
    }
}

/// The SQL literal of the UUID `id` in a column of type `key`.
fn uuid_literal(backend: Backend, key: &str, id: uuid::Uuid) -> String {
    match key {
        "uuid" => format!("'{id}'::uuid"),
        _ => blob(backend, id.as_bytes()),
    }
}

async fn a_uuid_blob_key_travels_as_its_hyphenated_text(backend: Backend) {
    for key in uuid_keys(backend) {
        uuid_key_round_trip(backend, key).await;
    }
}
both!(a_uuid_blob_key_travels_as_its_hyphenated_text);

/// [`a_uuid_blob_key_travels_as_its_hyphenated_text`] with `things` keyed by `key`.
async fn uuid_key_round_trip(backend: Backend, key: &str) {
    let db = TestDb::new(backend).await;
    let server = start_with_blobs(&db, Some(key)).await;
    let mut events = Sse::connect(&server.base, "", None).await;
    let id = uuid::Uuid::now_v7();
    // The app's own SQL, writing the UUID as sqlx binds it: 16 raw bytes.
    server
        .db
        .execute(
            &format!(
                "INSERT INTO things (id, name) VALUES ({}, 'lamp')",
                uuid_literal(backend, key, id)
            ),
            args![],
        )
        .await;
    let event = events.next().await;
    assert_eq!(event.data["entity"], "things");
    assert_eq!(event.data["id"], id.to_string(), "{key}");
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
    assert_eq!(res["applied"], json!([id.to_string()]), "{key}: {res}");
    assert_eq!(res["conflicts"], json!([]));
    let name: String = server
        .db
        .scalar(
            &format!(
                "SELECT name FROM things WHERE id = {}",
                uuid_literal(backend, key, id)
            ),
            args![],
        )
        .await;
    assert_eq!(name, "desk lamp", "{key}");
    let done = server
        .engine
        .write_to("things", &SyncContext::new())
        .update(id.to_string(), [("name", "lamp again")])
        .await
        .unwrap();
    assert!(done.applied());
    // A create through the push API stores the 16 bytes (a BLOB, not text), as the app's
    // own rows are.
    let fresh = uuid::Uuid::now_v7();
    let (status, res) = push_raw(
        &server.base,
        "things",
        json!({"changes": [{"id": fresh.to_string(), "action": "create", "data": {"name": "chair"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let stored: i64 = server
        .db
        .scalar(
            &format!(
                "SELECT count(*) FROM things WHERE name = 'chair' AND id = {}",
                uuid_literal(backend, key, fresh)
            ),
            args![],
        )
        .await;
    assert_eq!(stored, 1, "{key}");
    let (_, page) = pull(&server.base, "things", "").await;
    let ids: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let (id, fresh) = (id.to_string(), fresh.to_string());
    assert_eq!(ids, [id.as_str(), &id, &id, &fresh], "{key}");
    // Deleting by the text form deletes the row.
    let (status, _) = push_raw(
        &server.base,
        "things",
        json!({"changes": [{"id": id, "action": "delete"}]}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let left: i64 = server
        .db
        .scalar("SELECT count(*) FROM things", args![])
        .await;
    assert_eq!(left, 1, "{key}");
}

async fn other_blob_keys_travel_as_hex_and_bad_text_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with_blobs(&db, None).await;
    server
        .db
        .execute(
            &format!(
                "INSERT INTO bins (id, n) VALUES ({}, 1)",
                blob(backend, &[0x00, 0xff, 0x10])
            ),
            args![],
        )
        .await;
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
both!(other_blob_keys_travel_as_hex_and_bad_text_is_refused);

/// A log row whose text is not UTF-8 (what the old triggers wrote for a blob key) is
/// delivered lossily, never retried forever or allowed to end a pull early.
// SQLite-only: SQLite's text may hold any bytes; PostgreSQL refuses text that is not
// valid in the database's encoding, so its log cannot hold such a row.
#[tokio::test]
async fn an_undecodable_log_row_stalls_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = start(&db).await;
    let mut events = Sse::connect(&server.base, "", None).await;
    add_todo(&server, &todo_id("a"), "before").await;
    assert_eq!(events.next().await.data["id"], todo_id("a"));
    server
        .db
        .execute(
            "INSERT INTO _rhtmx_sync_log (entity, entity_id, action, data) \
             VALUES ('todos', CAST(x'ff00fe' AS TEXT), 'delete', NULL)",
            args![],
        )
        .await;
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
async fn integer_keys_beyond_2_pow_53_travel_as_strings(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (server, pool) = start_with_notes(&db).await;
    let big: i64 = (1 << 53) + 1;
    let mut events = Sse::connect(&server.base, "?entities=notes", None).await;
    pool.execute(
        "INSERT INTO notes (id, body) VALUES ($1, 'big'), (7, 'small')",
        args![big],
    )
    .await;
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
    let body: String = pool
        .scalar("SELECT body FROM notes WHERE id = $1", args![big])
        .await;
    assert_eq!(body, "B");
}
both!(integer_keys_beyond_2_pow_53_travel_as_strings);

/// The extremes of i64 (where `abs` overflows) travel as strings, through the app's SQL,
/// the event stream, pulls and pushes; nothing panics or stalls.
async fn the_smallest_and_largest_integers_are_keys_like_any_other(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (server, pool) = start_with_notes(&db).await;
    let mut events = Sse::connect(&server.base, "?entities=notes", None).await;
    pool.execute(
        "INSERT INTO notes (id, body) VALUES ($1, 'min')",
        args![i64::MIN],
    )
    .await;
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
    pool.execute("INSERT INTO notes (id, body) VALUES (8, 'after')", args![])
        .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(events.next().await.data["id"].clone());
    }
    assert_eq!(seen.last(), Some(&json!(8)));
}
both!(the_smallest_and_largest_integers_are_keys_like_any_other);

/// A blob in a JSON column (not JSON text) must never make the app's own write fail.
// SQLite-only: a column's declared type does not stop SQLite storing bytes in it;
// PostgreSQL's `json`/`jsonb` hold JSON only (`postgres_push.rs` and `postgres_log.rs`
// cover `bytea` and `jsonb` columns).
#[tokio::test]
async fn a_blob_in_a_json_column_does_not_fail_the_apps_write() {
    let db = TestDb::new(Backend::Sqlite).await;
    let pool = db.connect().await;
    pool.execute(
        "CREATE TABLE docs (id TEXT PRIMARY KEY NOT NULL, doc JSON)",
        args![],
    )
    .await;
    let server = start_with(&db, |b| b.entity_named("docs").writable("docs")).await;
    sqlx::raw_sql(
        "INSERT INTO docs VALUES ('bad', x'0badc0de'), ('random', randomblob(8)), \
         ('text', '{\"a\": 1}'), ('zero', x'00');
         UPDATE docs SET doc = x'ff' WHERE id = 'text';",
    )
    .execute(server.db.sqlite())
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
