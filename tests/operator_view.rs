//! The operator view over real HTTP, on SQLite and on PostgreSQL: its figures are what
//! SQL counts at that moment, an open event stream is listed with its cursor until it
//! disconnects, the page shows the same numbers as the JSON, conflicts and errors are
//! listed, the figures are logged as `tracing` events, and `engine.routes()` does not
//! serve it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rhtmx_sync::SyncEngine;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const TOKEN: &str = "operator-test-token";

/// The example app with the engine's routes, and its operator view at `/admin/sync`
/// behind the example's token check.
struct Running {
    base: String,
    db: Db,
    engine: SyncEngine,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_operator(
    db: &TestDb,
    configure: impl FnOnce(rhtmx_sync::SyncEngineBuilder) -> rhtmx_sync::SyncEngineBuilder,
) -> Running {
    let pool = app::open(&db.url).await.expect("open db");
    let builder = SyncEngine::builder(pool.clone())
        .entity::<app::Todo>()
        .writable("todos");
    let engine = configure(builder).build().await.expect("engine");
    let router = app::app(engine.clone())
        .merge(engine.routes())
        .merge(app::admin(&engine, Some(TOKEN.to_owned())))
        .layer(engine.idempotency_layer());
    let (base, task) = serve(router).await;
    Running {
        base,
        db: Db::from(&pool),
        engine,
        task,
    }
}

/// Adds a todo through the app's own handler.
async fn add(base: &str, id: &str, title: &str) {
    let res = client()
        .post(format!("{base}/todos"))
        .form(&[("id", id), ("title", title)])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "POST /todos: {}", res.status());
}

/// `GET {base}{path}` with the operator token and `accept`; the status and body.
async fn operator_get(base: &str, path: &str, accept: &str) -> (u16, String) {
    let res = client()
        .get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_eq!(res.headers()["cache-control"], "no-store", "{path}");
    (status, res.text().await.unwrap())
}

/// The figures as JSON from `/admin/sync/figures.json`.
async fn figures(base: &str) -> Value {
    let (status, body) = operator_get(base, "/admin/sync/figures.json", "*/*").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Pushes `changes` to `todos` as `client`, expecting 200.
async fn push(base: &str, client: &str, changes: Value) -> Value {
    let body = json!({"client_id": client, "changes": changes}).to_string();
    let (status, res) = push_raw(base, "todos", body).await;
    assert_eq!(status, 200, "{res}");
    res
}

/// Two clients edit the title of `r1` from the same base; the one who acted first
/// (client `a`) loses it: one conflict, carried by `a`'s change. Returns that
/// change's version.
async fn make_a_conflict(base: &str) -> i64 {
    let created = push(
        base,
        "a",
        json!([{"id": "r1", "action": "create", "hlc": hlc(0, 0xa),
                "data": {"title": "milk", "completed": false}}]),
    )
    .await;
    let v1 = created["version"].as_i64().unwrap();
    push(
        base,
        "b",
        json!([{"id": "r1", "action": "update", "data": {"title": "oat milk"},
                "hlc": hlc(20, 0xb), "client_version": v1}]),
    )
    .await;
    let res = push(
        base,
        "a",
        json!([{"id": "r1", "action": "update", "data": {"title": "soy milk", "completed": true},
                "hlc": hlc(10, 0xa), "client_version": v1}]),
    )
    .await;
    assert_eq!(res["conflicts"][0]["outcome"], "server", "{res}");
    res["version"].as_i64().unwrap()
}

/// What SQL says, to compare the figures with.
struct Counted {
    rows: i64,
    oldest: Option<i64>,
    newest: Option<i64>,
    bytes: u64,
    conflicts: i64,
    latest_conflict: Option<i64>,
    keys: i64,
}

async fn count(db: &Db) -> Counted {
    let (rows, oldest, newest): (i64, Option<i64>, Option<i64>) = db
        .fetch_one(
            "SELECT COUNT(*), MIN(version), MAX(version) FROM _rhtmx_sync_log",
            args![],
        )
        .await;
    // Every value of every entry as bytes, summed here rather than in SQL.
    let values: Vec<Vec<Option<Vec<u8>>>> = {
        let columns = [
            "entity",
            "entity_id",
            "action",
            "data",
            "changed",
            "client_id",
            "hlc",
            "created_at",
            "conflict",
            "digest",
            "scope_before",
            "scope_after",
        ];
        let mut all = Vec::new();
        for column in columns {
            // As stored: SQLite's own bytes; PostgreSQL's text (a timestamp as text).
            let bytes = match db.backend() {
                Backend::Sqlite => format!("CAST({column} AS BLOB)"),
                Backend::Postgres => format!("convert_to(CAST({column} AS TEXT), 'UTF8')"),
            };
            let sql = format!("SELECT {bytes} FROM _rhtmx_sync_log");
            let column: Vec<(Option<Vec<u8>>,)> = db.fetch_all(&sql, args![]).await;
            all.push(column.into_iter().map(|(v,)| v).collect());
        }
        all
    };
    let bytes = values
        .iter()
        .flatten()
        .map(|v| v.as_ref().map_or(0, Vec::len) as u64)
        .sum();
    let (conflicts, latest_conflict): (i64, Option<i64>) = db
        .fetch_one(
            "SELECT COUNT(*), MAX(version) FROM _rhtmx_sync_log WHERE conflict IS NOT NULL",
            args![],
        )
        .await;
    let keys: i64 = db
        .scalar("SELECT COUNT(*) FROM _rhtmx_sync_idempotency", args![])
        .await;
    Counted {
        rows,
        oldest,
        newest,
        bytes,
        conflicts,
        latest_conflict,
        keys,
    }
}

/// `data-figure="name">value<` is in the page.
fn shows(page: &str, name: &str, value: impl std::fmt::Display) -> bool {
    page.contains(&format!("data-figure=\"{name}\">{value}<"))
}

async fn the_figures_are_what_the_database_holds_and_the_open_stream_is_listed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_operator(&db, |b| b).await;

    // An empty log first: nothing, exactly.
    let empty = figures(&server.base).await;
    assert_eq!(empty["log"]["rows"], 0);
    assert_eq!(empty["log"]["oldest_version"], Value::Null);
    assert_eq!(empty["log"]["head_version"], 0);
    assert_eq!(empty["streams"]["open"], 0);

    let mut sse = Sse::connect(&server.base, "", None).await;
    add(&server.base, &todo_id("t0"), "bread").await;
    add(&server.base, &todo_id("t1"), "eggs").await;
    // A write with an Idempotency-Key, as the browser client replays one.
    let res = client()
        .post(format!("{}/todos", server.base))
        .header("idempotency-key", "key-0001")
        .form(&[("id", todo_id("t2").as_str()), ("title", "jam")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let conflict_version = make_a_conflict(&server.base).await;
    // Two errors the engine's routes answer with.
    assert_eq!(pull(&server.base, "nope", "").await.0, 404);
    assert_eq!(push_raw(&server.base, "todos", "{").await.0, 400);

    // 3 creates by the app, and the push API's create and two updates.
    let events = sse.take(6).await;
    let last = events.last().unwrap().version();
    assert_eq!(last, conflict_version);
    wait_until(
        "the stream's cursor is the last event it was sent",
        || async { figures(&server.base).await["streams"]["list"][0]["cursor"] == last },
    )
    .await;

    let f = figures(&server.base).await;
    let sql = count(&server.db).await;
    let log = &f["log"];
    assert_eq!(log["rows"], sql.rows);
    assert_eq!(sql.rows, 6);
    assert_eq!(log["oldest_version"], json!(sql.oldest));
    assert_eq!(log["head_version"], json!(sql.newest));
    assert_eq!(log["head_version"], server.engine.head().await.unwrap());
    assert_eq!(log["bytes"], sql.bytes);
    assert_eq!(log["conflicts"], sql.conflicts);
    assert_eq!(sql.conflicts, 1);
    // Every entry was written seconds ago.
    assert_eq!(log["changes_last_minute"], sql.rows);
    assert_eq!(log["changes_last_hour"], sql.rows);
    assert_eq!(log["horizon"], 0);
    let database_bytes: i64 = match backend {
        Backend::Sqlite => {
            let pages: i64 = server.db.scalar("PRAGMA page_count", args![]).await;
            let size: i64 = server.db.scalar("PRAGMA page_size", args![]).await;
            pages * size
        }
        Backend::Postgres => {
            let sql = "SELECT pg_database_size(current_database())";
            server.db.scalar(sql, args![]).await
        }
    };
    assert_eq!(log["database_bytes"], database_bytes);

    assert_eq!(f["idempotency"]["keys"], sql.keys);
    assert_eq!(sql.keys, 1);
    assert_eq!(f["idempotency"]["in_flight"], 0);
    let usage = server.engine.idempotency_layer().usage().await.unwrap();
    assert_eq!(f["idempotency"]["bytes"], usage.bytes);

    let streams = &f["streams"];
    assert_eq!(streams["open"], 1);
    assert_eq!(streams["limit"], 512);
    let stream = &streams["list"][0];
    assert_eq!(stream["cursor"], last);
    assert_eq!(stream["behind"], 0);
    assert_eq!(stream["user"], Value::Null);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let since = stream["connected_at_ms"].as_u64().unwrap();
    assert!(since <= now && now - since < 60_000, "{since} vs {now}");

    let conflict = &f["recent_conflicts"][0];
    assert_eq!(f["recent_conflicts"].as_array().unwrap().len(), 1);
    assert_eq!(conflict["version"], json!(sql.latest_conflict));
    assert_eq!(conflict["conflict"]["version"], conflict_version);
    assert_eq!(conflict["conflict"]["entity"], "todos");
    assert_eq!(conflict["conflict"]["id"], "r1");
    assert_eq!(conflict["conflict"]["client_id"], "a");
    assert_eq!(conflict["conflict"]["reason"], "concurrent_update");

    // Newest first.
    let errors = &f["errors"];
    assert_eq!(errors["total"], 2);
    assert_eq!(errors["recent"][0]["status"], 400);
    assert_eq!(errors["recent"][0]["method"], "POST");
    assert_eq!(errors["recent"][0]["path"], "/api/sync/todos");
    assert_eq!(errors["recent"][1]["status"], 404);
    assert_eq!(errors["recent"][1]["path"], "/api/sync/nope");
    assert!(
        errors["recent"][1]["message"]
            .as_str()
            .unwrap()
            .contains("unknown entity"),
        "{errors}"
    );

    // The page shows the same numbers (nothing was written since).
    let (status, page) = operator_get(&server.base, "/admin/sync", "text/html").await;
    assert_eq!(status, 200);
    for (name, value) in [
        ("log.rows", sql.rows.to_string()),
        ("log.bytes", sql.bytes.to_string()),
        ("log.oldest_version", sql.oldest.unwrap().to_string()),
        ("log.head_version", sql.newest.unwrap().to_string()),
        ("log.conflicts", sql.conflicts.to_string()),
        ("idempotency.keys", sql.keys.to_string()),
        ("streams.open", "1".to_owned()),
        ("stream.cursor", last.to_string()),
        ("stream.behind", "0".to_owned()),
        ("conflict.version", conflict_version.to_string()),
        ("errors.total", "2".to_owned()),
    ] {
        assert!(
            shows(&page, name, &value),
            "{name} = {value} not in the page"
        );
    }
    assert!(page.contains("/admin/sync/figures.json"), "the JSON link");
    // The same route answers JSON to a client that asks for it.
    let (status, body) = operator_get(&server.base, "/admin/sync", "application/json").await;
    assert_eq!(status, 200);
    let by_accept: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(by_accept["log"], f["log"]);

    // Gone once its client disconnects.
    drop(sse);
    wait_until("the closed stream leaves the list", || async {
        figures(&server.base).await["streams"]["open"] == 0
    })
    .await;
    assert_eq!(figures(&server.base).await["streams"]["list"], json!([]));
}
both!(the_figures_are_what_the_database_holds_and_the_open_stream_is_listed);

async fn a_stream_of_a_signed_in_user_is_listed_as_that_user(backend: Backend) {
    #[derive(Debug)]
    struct User(String);
    impl<S: Send + Sync> axum::extract::FromRequestParts<S> for User {
        type Rejection = ();
        async fn from_request_parts(
            parts: &mut axum::http::request::Parts,
            _: &S,
        ) -> Result<Self, ()> {
            let user = parts.headers.get("x-user").ok_or(())?;
            Ok(User(user.to_str().map_err(|_| ())?.to_owned()))
        }
    }
    impl From<User> for rhtmx_sync::Principal {
        fn from(user: User) -> Self {
            rhtmx_sync::Principal::user(user.0)
        }
    }
    let db = TestDb::new(backend).await;
    let server = start_operator(&db, |b| b.authenticate::<User>()).await;
    add(&server.base, &todo_id("t0"), "x").await;
    let head = server.engine.head().await.unwrap();
    let _alice = Sse::open(
        client()
            .get(format!("{}/api/sync/events", server.base))
            .header("x-user", "alice"),
    )
    .await;
    wait_until("alice's stream is listed", || async {
        figures(&server.base).await["streams"]["list"][0]["user"] == "alice"
    })
    .await;
    let f = figures(&server.base).await;
    assert_eq!(f["streams"]["list"][0]["cursor"], head);
    let (_, page) = operator_get(&server.base, "/admin/sync", "text/html").await;
    assert!(shows(&page, "stream.user", "alice"), "{page}");
}
both!(a_stream_of_a_signed_in_user_is_listed_as_that_user);

async fn the_operator_view_needs_the_apps_own_check(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_operator(&db, |b| b).await;
    for path in ["/admin/sync", "/admin/sync/figures.json"] {
        assert_eq!(get_status(&format!("{}{path}", server.base)).await, 404);
        let wrong = client()
            .get(format!("{}{path}", server.base))
            .header("authorization", "Bearer not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 404, "{path}");
        assert_eq!(operator_get(&server.base, path, "*/*").await.0, 200);
    }
}
both!(the_operator_view_needs_the_apps_own_check);

async fn the_engine_routes_do_not_serve_the_operator_view(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let engine = SyncEngine::builder(pool)
        .entity::<app::Todo>()
        .build()
        .await
        .unwrap();
    let (base, _task) = serve(engine.routes()).await;
    for path in [
        "/",
        "/figures.json",
        "/admin/sync",
        "/admin/sync/figures.json",
        "/api/sync",
        "/api/sync/",
        "/api/sync/figures.json",
    ] {
        for accept in ["text/html", "application/json"] {
            let res = client()
                .get(format!("{base}{path}"))
                .header("accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 404, "{path} ({accept})");
            let body = res.text().await.unwrap();
            assert!(
                !body.contains("data-figure") && !body.contains("head_version"),
                "{path}: {body}"
            );
        }
    }
    // While the engine itself has the figures.
    assert_eq!(engine.figures().await.unwrap().log.rows, 0);
}
both!(the_engine_routes_do_not_serve_the_operator_view);

/// The events logged at the metrics target so far.
fn metrics(captured: &Captured) -> Vec<BTreeMap<String, String>> {
    captured
        .lock()
        .unwrap()
        .iter()
        .filter(|(target, _)| target == rhtmx_sync::operator::METRICS_TARGET)
        .map(|(_, fields)| fields.clone())
        .collect()
}

// A current-thread runtime (the default): the engine's tasks run on this thread, under
// the subscriber set here.
async fn the_figures_are_logged_on_demand_and_every_period(backend: Backend) {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(Capture(captured.clone())),
    );
    let db = TestDb::new(backend).await;
    let server = start_operator(&db, |b| b.emit_figures_every(Duration::from_secs(1))).await;
    add(&server.base, &todo_id("t0"), "x").await;
    add(&server.base, &todo_id("t1"), "y").await;

    let figures = server.engine.figures().await.unwrap();
    figures.emit();
    let emitted = metrics(&captured);
    let last = emitted.last().expect("emit logs at the metrics target");
    assert_eq!(last["message"], "sync figures");
    assert_eq!(last["log_rows"], "2");
    assert_eq!(
        last["log_head_version"],
        figures.log.head_version.to_string()
    );
    assert_eq!(last["log_oldest_version"], "1");
    assert_eq!(last["log_bytes"], figures.log.bytes.to_string());
    assert_eq!(last["streams_open"], "0");
    assert_eq!(last["idempotency_keys"], "0");

    // And by itself, within a few periods, with what the database holds then.
    add(&server.base, &todo_id("t2"), "z").await;
    wait_until("a periodic event counts 3 rows", || async {
        metrics(&captured)
            .iter()
            .any(|fields| fields.get("log_rows").map(String::as_str) == Some("3"))
    })
    .await;
}
both!(the_figures_are_logged_on_demand_and_every_period);
