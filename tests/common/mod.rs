//! Test harness: the example app plus the engine on a real listener on 127.0.0.1, over a
//! fresh SQLite file or a fresh PostgreSQL database ([`Backend`]), and a small SSE
//! client.
#![allow(dead_code)]

#[path = "../../examples/todo_sync/app.rs"]
pub mod app;
mod db;
#[path = "../pg/mod.rs"]
pub mod pg;

#[allow(unused_imports)]
pub(crate) use db::{args, both};
pub use db::{Arg, Backend, Db, TestDb};

use std::time::Duration;

use futures_util::StreamExt;
use rhtmx_sync::{SyncEngine, SyncEngineBuilder};
use tokio::task::JoinHandle;

/// A running server over a test database.
pub struct Server {
    pub base: String,
    /// The app's own pool (the one the engine runs on).
    pub db: Db,
    pub engine: SyncEngine,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the example app with the default engine over `db`.
pub async fn start(db: &TestDb) -> Server {
    start_with(db, |b| b).await
}

/// Starts the example app with an engine configured by `configure`.
pub async fn start_with(
    db: &TestDb,
    configure: impl FnOnce(SyncEngineBuilder) -> SyncEngineBuilder,
) -> Server {
    // Tests use the push API: the app allows it for todos.
    start_built(db, |b| configure(b.writable("todos"))).await
}

/// Starts the example with the push API closed (nothing made writable).
pub async fn start_without_push(db: &TestDb) -> Server {
    start_built(db, |b| b).await
}

async fn start_built(
    db: &TestDb,
    configure: impl FnOnce(SyncEngineBuilder) -> SyncEngineBuilder,
) -> Server {
    let pool = app::open(&db.url).await.expect("open db");
    let engine = configure(SyncEngine::builder(pool.clone()).entity::<app::Todo>())
        .build()
        .await
        .expect("engine");
    let router = app::app(engine.clone())
        .merge(engine.routes())
        .layer(engine.idempotency_layer());
    let (base, task) = serve(router).await;
    Server {
        base,
        db: Db::from(&pool),
        engine,
        task,
    }
}

/// Starts the example with a second entity, `notes` (integer keys), registered by name;
/// returns the server and a pool of its own on the same database.
pub async fn start_with_notes(db: &TestDb) -> (Server, Db) {
    let pool = db.connect().await;
    let key = match db.backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres => "bigserial PRIMARY KEY",
    };
    pool.execute(
        &format!("CREATE TABLE notes (id {key}, body TEXT)"),
        args![],
    )
    .await;
    (
        start_with(db, |b| b.entity_named("notes").writable("notes")).await,
        pool,
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The status of a `GET`.
pub async fn get_status(url: &str) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

/// The UUID standing for the todo called `name` (at most 6 ASCII bytes) in a test: the
/// example takes only UUIDs as ids, and names keep tests readable.
pub fn todo_id(name: &str) -> String {
    assert!(name.is_ascii() && name.len() <= 6, "name {name:?} too long");
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("00000000-0000-7000-8000-{hex:0>12}")
}

/// Adds a todo through the app's own handler (a plain `sqlx::query!`).
pub async fn add_todo(server: &Server, id: &str, title: &str) {
    let res = client()
        .post(format!("{}/todos", server.base))
        .form(&[("id", id), ("title", title)])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "POST /todos: {}", res.status());
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: serde_json::Value,
}

impl SseEvent {
    /// The version part of the event's id (`"{version}.{tag}"`).
    pub fn version(&self) -> i64 {
        let version = self.id.split('.').next().unwrap_or_default();
        version
            .parse()
            .expect("an event id starts with its version")
    }
}

/// An open event stream.
pub struct Sse {
    inner: std::pin::Pin<Box<dyn futures_util::Stream<Item = SseEvent> + Send>>,
}

impl Sse {
    /// Opens `{base}/api/sync/events{query}` with an optional `Last-Event-ID` header.
    pub async fn connect(base: &str, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = client().get(format!("{base}/api/sync/events{query}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        Sse::open(req).await
    }

    /// Opens the stream `req` asks for (headers of the test's choosing).
    pub async fn open(req: reqwest::RequestBuilder) -> Sse {
        let res = reqwest::Client::new()
            .execute(req.build().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let stream =
            eventsource_stream::EventStream::new(res.bytes_stream()).filter_map(|e| async move {
                let e = e.expect("valid SSE");
                // Events with no data (the initial `retry:` hint) carry nothing to check.
                if e.data.is_empty() {
                    return None;
                }
                Some(SseEvent {
                    id: e.id,
                    event: e.event,
                    data: serde_json::from_str(&e.data).expect("JSON data"),
                })
            });
        Sse {
            inner: Box::pin(stream),
        }
    }

    /// The next event, failing the test if none comes within 10 s.
    pub async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(Duration::from_secs(10), self.inner.next())
            .await
            .expect("an event within 10 s")
            .expect("stream still open")
    }

    /// Waits (at most 10 s) for the server to end the stream, skipping events.
    pub async fn ended(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that no event arrives within `wait` (used only after the expected events,
    /// to show there is no duplicate).
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(wait, self.inner.next()).await {
            panic!("unexpected event {e:?}");
        }
    }
}

/// An HLC `offset_ms` after the moment the tests started, on `node`: one fixed origin,
/// so that offsets compare as written however long a test takes.
pub fn hlc(offset_ms: i64, node: u64) -> String {
    static ORIGIN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    });
    rhtmx_sync::Hlc::new((origin + offset_ms) as u64, 0, node).to_string()
}

/// Pulls one page.
pub async fn pull(base: &str, entity: &str, query: &str) -> (u16, serde_json::Value) {
    let res = client()
        .get(format!("{base}/api/sync/{entity}{query}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// Pushes a raw body.
pub async fn push_raw(
    base: &str,
    entity: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let res = client()
        .post(format!("{base}/api/sync/{entity}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// The rows of `todos` as `(id, title, completed)`, ordered by id.
pub async fn todos(db: &Db) -> Vec<(String, String, bool)> {
    db.fetch_all(
        "SELECT id, title, completed FROM todos ORDER BY id",
        args![],
    )
    .await
}

/// Replays the change log of `todos` into rows, ordered by id: must equal [`todos`].
pub async fn replay_log(db: &Db) -> Vec<(String, String, bool)> {
    let rows: Vec<(String, String, Option<String>)> = db
        .fetch_all(
            "SELECT entity_id, action, data FROM _rhtmx_sync_log \
             WHERE entity = 'todos' AND version IS NOT NULL ORDER BY version",
            args![],
        )
        .await;
    let mut state = std::collections::BTreeMap::new();
    for (id, action, data) in rows {
        if action == "delete" {
            state.remove(&id);
        } else {
            let v: serde_json::Value = serde_json::from_str(&data.unwrap()).unwrap();
            state.insert(
                id,
                (
                    v["title"].as_str().unwrap().to_owned(),
                    v["completed"].as_bool().unwrap(),
                ),
            );
        }
    }
    state.into_iter().map(|(id, (t, c))| (id, t, c)).collect()
}

/// The log of `entity` replayed from version 0, as `entity_id -> row`: must equal the
/// table (see each test's own reading of the table).
pub async fn replayed(
    db: &Db,
    entity: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let rows: Vec<(String, String, Option<String>)> = db
        .fetch_all(
            "SELECT entity_id, action, data FROM _rhtmx_sync_log \
             WHERE entity = $1 AND version IS NOT NULL ORDER BY version",
            args![entity],
        )
        .await;
    let mut state = std::collections::BTreeMap::new();
    for (id, action, data) in rows {
        match data {
            Some(data) if action != "delete" => {
                state.insert(id, serde_json::from_str(&data).unwrap());
            }
            _ => {
                state.remove(&id);
            }
        }
    }
    state
}

/// Waits until `check` holds, polling (the broadcaster acts within one poll interval of
/// a commit); fails the test after 10 s.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A one-connection pool over `db` (the example's migrations run first), for tests that
/// change the schema while engines run: statements of the test then never go through a
/// pooled connection that still holds the schema from before its own earlier change
/// (seen: "index already exists" right after `DROP INDEX` on another pooled connection).
pub async fn single_pool(db: &TestDb) -> Db {
    db.connect().await.close().await;
    db.connect_single().await
}

/// About 12 MB of log: 12,000 todos with 1 KB titles, written by the app's own SQL,
/// and numbered (see [`numbered`]).
pub async fn fill_log(server: &Server) {
    let head = server.engine.head().await.unwrap();
    fill_todos(&server.db).await;
    numbered(&server.engine, head + 12_000).await;
}

/// Every row of every table (the app's and the engine's, the log included), as text:
/// equal before and after shows that nothing was written. What is committed is
/// numbered first (PostgreSQL numbers the log after commit).
pub async fn every_row(db: &Db, engine: &SyncEngine) -> String {
    engine.head().await.unwrap();
    let (tables, columns, quote) = match db.backend() {
        Backend::Sqlite => (
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            "SELECT name FROM pragma_table_info($1) ORDER BY cid",
            "quote",
        ),
        Backend::Postgres => (
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            "quote_nullable",
        ),
    };
    let mut out = String::new();
    for (table,) in db.fetch_all::<(String,)>(tables, args![]).await {
        let columns: Vec<(String,)> = db.fetch_all(columns, args![&table]).await;
        let row = columns
            .iter()
            .map(|(c,)| format!("{quote}(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let rows: Vec<(String,)> = db
            .fetch_all(
                &format!("SELECT {row} FROM \"{table}\" ORDER BY 1"),
                args![],
            )
            .await;
        out.push_str(&format!("{table} {rows:?}\n"));
    }
    out
}

/// Waits until every entry logged so far has its version (PostgreSQL numbers them
/// after commit; SQLite at once).
pub async fn all_numbered(db: &Db) {
    wait_until("every logged change has its version", || async {
        db.scalar::<i64>(
            "SELECT count(*) FROM _rhtmx_sync_log WHERE version IS NULL",
            args![],
        )
        .await
            == 0
    })
    .await;
}

/// Waits until the engine's head is at least `head`: on PostgreSQL entries are numbered
/// after their commit, and a pull that comes first may answer from the head before them.
pub async fn numbered(engine: &SyncEngine, head: i64) {
    wait_until("the log is numbered", || async {
        engine.head().await.unwrap() >= head
    })
    .await;
}

/// [`fill_log`] on any pool over the example's schema.
pub async fn fill_todos(db: &Db) {
    let title = "t".repeat(1000);
    db.execute_each(
        "INSERT INTO todos (id, title) VALUES ($1, $2)",
        (0..12_000).map(|i| args![format!("row-{i:05}"), title.as_str()]),
    )
    .await;
}

/// Sends a request on a socket with a tiny receive buffer and never reads the answer
/// beyond its first bytes (enough to know the server started streaming).
pub async fn stalled_request(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let (stream, status) = stalled_request_with(addr, path, "Connection: close\r\n").await;
    assert_eq!(status, "HTTP/1.1 200", "the pull started");
    stream
}

/// [`stalled_request`] with more header lines (`"Name: value\r\n"` each); returns the
/// socket and the answer's status line, whatever it is.
pub async fn stalled_request_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
) -> (tokio::net::TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first)
        .await
        .unwrap();
    (stream, String::from_utf8_lossy(&first).into_owned())
}

/// Serves `router` on a free loopback port; returns its base URL and the server task.
pub async fn serve(router: axum::Router) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (base, task)
}

/// Events logged while a [`Capture`] layer was set: each one's target and fields as text.
pub type Captured =
    std::sync::Arc<std::sync::Mutex<Vec<(String, std::collections::BTreeMap<String, String>)>>>;

/// A `tracing` layer that keeps every event (see [`Captured`]).
pub struct Capture(pub Captured);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields<'a>(&'a mut std::collections::BTreeMap<String, String>);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
        }
        let mut fields = std::collections::BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0
            .lock()
            .unwrap()
            .push((event.metadata().target().to_owned(), fields));
    }
}
