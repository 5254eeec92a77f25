//! Bad input gets a clear 4xx with a short JSON message and changes nothing: every
//! table (the app's and the engine's, the log included) holds the same rows afterwards,
//! and on SQLite the database files are byte-for-byte the same too.

mod common;

use common::*;
use serde_json::json;

/// What a rejected request must leave as it was.
struct Snapshot {
    /// Every row of every table, as text.
    rows: String,
    /// The SQLite database file and its WAL (none on PostgreSQL).
    files: Vec<Vec<u8>>,
}

async fn snapshot(db: &TestDb, server: &Server) -> Snapshot {
    let rows = every_row(&server.db, &server.engine).await;
    let files = match db.backend {
        Backend::Sqlite => ["", "-wal"]
            .iter()
            .map(|suffix| {
                std::fs::read(format!("{}{suffix}", db.path().display())).unwrap_or_default()
            })
            .collect(),
        Backend::Postgres => Vec::new(),
    };
    Snapshot { rows, files }
}

impl Snapshot {
    fn assert_same(&self, before: &Snapshot, what: &str) {
        assert_eq!(self.rows, before.rows, "{what}");
        assert!(
            self.files == before.files,
            "{what}: the database files differ"
        );
    }
}

async fn every_bad_input_answers_its_status_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.body_limit(4096)).await;
    add_todo(&server, &todo_id("keep"), "existing").await;
    let before = snapshot(&db, &server).await;

    let push_cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", "{\"changes\": [".into(), 400, "malformed JSON"),
        ("not JSON at all", "hello".into(), 400, "malformed JSON"),
        ("unknown field", json!({"changes": [{"id": "a", "action": "create", "data": {"title": "t", "colour": "red"}}]}).to_string(), 422, "unknown field `colour`"),
        ("wrong type", json!({"changes": [{"id": "a", "action": "create", "data": {"title": 5}}]}).to_string(), 422, "field `title` expects a string"),
        ("wrong bool", json!({"changes": [{"id": "keep", "action": "update", "data": {"completed": "yes"}}]}).to_string(), 422, "expects a boolean"),
        ("missing id", json!({"changes": [{"action": "create", "data": {"title": "t"}}]}).to_string(), 422, "missing field `id`"),
        ("null id", json!({"changes": [{"id": null, "action": "delete"}]}).to_string(), 422, "cannot be null"),
        ("numeric id for a text key", json!({"changes": [{"id": 5, "action": "delete"}]}).to_string(), 422, "expects a string"),
        ("null in a NOT NULL column", json!({"changes": [{"id": "keep", "action": "update", "data": {"title": null}}]}).to_string(), 422, "cannot be null"),
        ("create without a required field", json!({"changes": [{"id": "a", "action": "create", "data": {"completed": true}}]}).to_string(), 422, "field `title` is required"),
        ("unknown action", json!({"changes": [{"id": "a", "action": "upsert", "data": {}}]}).to_string(), 422, "unknown variant `upsert`"),
        ("empty update", json!({"changes": [{"id": "keep", "action": "update", "data": {}}]}).to_string(), 422, "at least one field"),
        ("id mismatch", json!({"changes": [{"id": "a", "action": "create", "data": {"id": "b", "title": "t"}}]}).to_string(), 422, "differs"),
        ("data not an object", json!({"changes": [{"id": "a", "action": "create", "data": [1]}]}).to_string(), 422, "invalid type"),
        ("unknown top-level key", json!({"changes": [], "extra": 1}).to_string(), 422, "unknown field `extra`"),
        ("a client id claiming to be another engine", json!({"client_id": "author:0123456789abcdef", "changes": [
            {"id": "keep", "action": "update", "data": {"title": "as if replicated"}}
        ]}).to_string(), 422, "reserved for other engines"),
        ("one bad change among good ones", json!({"changes": [
            {"id": "good", "action": "create", "data": {"title": "fine"}},
            {"id": "keep", "action": "delete"},
            {"id": "bad", "action": "create", "data": {"title": ["no"]}},
        ]}).to_string(), 422, "changes[2]"),
        ("over the body limit", json!({"changes": [{"id": "a", "action": "create", "data": {"title": "x".repeat(5000)}}]}).to_string(), 413, "larger than 4096 bytes"),
    ];
    for (what, body, status, message) in push_cases {
        let (got, res) = push_raw(&server.base, "todos", body).await;
        assert_eq!(got, status, "{what}: {res}");
        let error = res["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {res}"));
        assert!(
            error.contains(message),
            "{what}: `{error}` lacks `{message}`"
        );
        assert!(
            !error.to_lowercase().contains("sql"),
            "{what}: leaks SQL: {error}"
        );
    }

    let (status, res) = push_raw(&server.base, "nope", json!({"changes": []}).to_string()).await;
    assert_eq!(
        (status, res["error"].as_str()),
        (404, Some("unknown entity `nope`"))
    );
    let (status, res) = push_raw(
        &server.base,
        "_rhtmx_sync_log",
        json!({"changes": []}).to_string(),
    )
    .await;
    assert_eq!(status, 404, "{res}");

    let pull_cases = [
        ("nope", "", 404),
        ("todos", "?since=abc", 400),
        ("todos", "?since=-1", 400),
        ("todos", "?limit=0", 400),
    ];
    for (entity, query, status) in pull_cases {
        let (got, res) = pull(&server.base, entity, query).await;
        assert_eq!(got, status, "pull {entity}{query}: {res}");
        assert!(res["error"].is_string());
    }
    let res = client()
        .post(format!("{}/api/sync/todos", server.base))
        .header("x-rhtmx-client-id", "c".repeat(200))
        .header("content-type", "application/json")
        .body(json!({"changes": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    snapshot(&db, &server)
        .await
        .assert_same(&before, "a rejected request changed the database");
    assert_eq!(
        todos(&server.db).await,
        [(todo_id("keep"), "existing".into(), false)]
    );
}
both!(every_bad_input_answers_its_status_and_changes_nothing);

/// A `text/plain` body is what a form with `enctype="text/plain"` on another site, or a
/// `no-cors` fetch, can send with the user's cookies: only JSON is ever applied.
async fn a_push_that_is_not_json_answers_415_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    add_todo(&server, &todo_id("keep"), "existing").await;
    let before = snapshot(&db, &server).await;
    let body = json!({"changes": [{"id": todo_id("keep"), "action": "delete"}]}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("text/json"),
        None,
    ] {
        let mut req = client()
            .post(format!("{}/api/sync/todos", server.base))
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 415, "{content_type:?}");
        let error: serde_json::Value = res.json().await.unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{content_type:?}: {error}"
        );
    }
    snapshot(&db, &server)
        .await
        .assert_same(&before, "a refused push changed the database");
    // JSON with parameters or a `+json` type is still JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let res = client()
            .post(format!("{}/api/sync/todos", server.base))
            .header("content-type", content_type)
            .body(json!({"changes": []}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{content_type}");
    }
}
both!(a_push_that_is_not_json_answers_415_and_changes_nothing);

/// Whatever a client sends, an error message quotes at most a short prefix of it.
async fn error_messages_quote_at_most_a_short_prefix_of_the_input(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let long = "9".repeat(100_000);
    let huge = "x".repeat(100_000);
    // URLs are limited by the HTTP stack: a long but valid one.
    let wide = "x".repeat(6_000);
    let mut answers = Vec::new();
    // A hostile cursor, in the header and the query.
    let res = client()
        .get(format!("{}/api/sync/events", server.base))
        .header("last-event-id", format!("{long}x"))
        .send()
        .await
        .unwrap();
    answers.push((
        "Last-Event-ID",
        res.status().as_u16(),
        res.text().await.unwrap(),
    ));
    let res = client()
        .get(format!(
            "{}/api/sync/events?last_event_id={wide}",
            server.base
        ))
        .send()
        .await
        .unwrap();
    answers.push((
        "last_event_id",
        res.status().as_u16(),
        res.text().await.unwrap(),
    ));
    let res = client()
        .get(format!("{}/api/sync/events?entities={wide}", server.base))
        .send()
        .await
        .unwrap();
    answers.push(("entities", res.status().as_u16(), res.text().await.unwrap()));
    let res = client()
        .get(format!("{}/api/sync/todos?since={wide}", server.base))
        .send()
        .await
        .unwrap();
    answers.push(("since", res.status().as_u16(), res.text().await.unwrap()));
    let res = client()
        .get(format!("{}/api/sync/{wide}", server.base))
        .send()
        .await
        .unwrap();
    answers.push(("entity", res.status().as_u16(), res.text().await.unwrap()));
    for (what, body) in [
        (
            "field name",
            json!({"changes": [{"id": "a", "action": "create", "data": {huge.clone(): 1}}]}),
        ),
        (
            "action",
            json!({"changes": [{"id": "a", "action": huge.clone()}]}),
        ),
        (
            "hlc",
            json!({"changes": [{"id": "a", "action": "delete", "hlc": huge.clone()}]}),
        ),
        (
            "id",
            json!({"changes": [{"id": huge.clone(), "action": "delete", "client_version": -1}]}),
        ),
        ("top-level key", json!({"changes": [], huge.clone(): 1})),
    ] {
        let (status, res) = push_raw(&server.base, "todos", body.to_string()).await;
        answers.push((what, status, res.to_string()));
    }
    for (what, status, body) in answers {
        assert!((400..500).contains(&status), "{what}: {status}");
        assert!(
            body.len() < 400,
            "{what}: {} bytes echoed: {}",
            body.len(),
            &body[..100]
        );
    }
}
both!(error_messages_quote_at_most_a_short_prefix_of_the_input);

async fn a_constraint_violation_mid_push_rolls_everything_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    let key = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres => "bigserial PRIMARY KEY",
    };
    pool.execute(
        &format!("CREATE TABLE scores (id {key}, points INTEGER NOT NULL CHECK (points >= 0))"),
        args![],
    )
    .await;
    let server = start_with(&db, |b| b.entity_named("scores").writable("scores")).await;
    let before = snapshot(&db, &server).await;
    let body = json!({"changes": [
        {"id": 1, "action": "create", "data": {"points": 3}},
        {"id": 2, "action": "create", "data": {"points": -1}},
    ]});
    let (status, res) = push_raw(&server.base, "scores", body.to_string()).await;
    assert_eq!(status, 422, "{res}");
    assert_eq!(
        res["error"],
        "changes[1] violates a constraint of the table"
    );
    snapshot(&db, &server)
        .await
        .assert_same(&before, "a rolled-back push changed the database");
    let n: i64 = pool.scalar("SELECT count(*) FROM scores", args![]).await;
    assert_eq!(n, 0);
}
both!(a_constraint_violation_mid_push_rolls_everything_back);

async fn misconfiguration_is_refused_when_the_engine_is_built(backend: Backend) {
    let db = TestDb::new(backend).await;
    let engine_pool = app::open(&db.url).await.unwrap();
    let pool = Db::from(&engine_pool);
    for table in [
        "CREATE TABLE events (id INTEGER PRIMARY KEY)",
        "CREATE TABLE pairs (a INT, b INT, PRIMARY KEY (a, b))",
    ] {
        pool.execute(table, args![]).await;
    }
    let cases = [
        ("missing_table", "does not exist"),
        ("events", "route is taken"),
        ("pairs", "single-column PRIMARY KEY"),
    ];
    for (table, message) in cases {
        let err = rhtmx_sync::SyncEngine::builder(engine_pool.clone())
            .entity_named(table)
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(message), "{table}: {err}");
    }
    let err = rhtmx_sync::SyncEngine::builder(engine_pool.clone())
        .entity::<app::Todo>()
        .entity_named("todos")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("registered twice"), "{err}");
}
both!(misconfiguration_is_refused_when_the_engine_is_built);

/// Keys that compare equal but differ in text would be logged as different rows: each
/// backend's collations that equate different texts are refused for a key, an explicit
/// byte-wise one is fine.
async fn a_key_collation_that_equates_different_texts_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let engine_pool = app::open(&db.url).await.unwrap();
    let pool = Db::from(&engine_pool);
    let (schema, refused, fine): (&[&str], &[(&str, &str)], &str) = match backend {
        Backend::Sqlite => (
            &[
                "CREATE TABLE nocase (id TEXT PRIMARY KEY COLLATE NOCASE, v TEXT)",
                "CREATE TABLE rtrim (id TEXT COLLATE RTRIM, v TEXT, PRIMARY KEY (id)) WITHOUT ROWID",
                "CREATE TABLE binary_key (id TEXT PRIMARY KEY COLLATE BINARY, v TEXT)",
            ],
            &[("nocase", "COLLATE NOCASE"), ("rtrim", "COLLATE RTRIM")],
            "binary_key",
        ),
        Backend::Postgres => (
            &[
                "CREATE COLLATION any_case (provider = icu, locale = 'und-u-ks-level2', \
                 deterministic = false)",
                "CREATE TABLE nocase (id TEXT COLLATE any_case PRIMARY KEY, v TEXT)",
                "CREATE TABLE binary_key (id TEXT COLLATE \"C\" PRIMARY KEY, v TEXT)",
            ],
            &[("nocase", "COLLATE any_case")],
            "binary_key",
        ),
    };
    for statement in schema {
        pool.execute(statement, args![]).await;
    }
    for (table, message) in refused {
        let err = rhtmx_sync::SyncEngine::builder(engine_pool.clone())
            .entity_named(*table)
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(message), "{table}: {err}");
    }
    rhtmx_sync::SyncEngine::builder(engine_pool.clone())
        .entity_named(fine)
        .build()
        .await
        .expect("an explicit byte-wise key is fine");
}
both!(a_key_collation_that_equates_different_texts_is_refused);

/// A misspelt or unknown parameter is a mistake, not a default: `?sinse=5` would
/// otherwise pull everything from 0. So is a version with a sign.
async fn unknown_query_parameters_and_signed_versions_answer_400(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    for query in ["?sinse=5", "?since=0&lmit=5", "?since=-0", "?since=%2B5"] {
        let (status, body) = pull(&server.base, "todos", query).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    for query in ["?last_event=5", "?entities=todos&x=1", "?last_event_id=-0"] {
        let status = get_status(&format!("{}/api/sync/events{query}", server.base)).await;
        assert_eq!(status, 400, "{query}");
    }
    // The documented parameters still work.
    assert_eq!(pull(&server.base, "todos", "?since=0&limit=5").await.0, 200);
}
both!(unknown_query_parameters_and_signed_versions_answer_400);
