//! Test harness: the example app plus the engine on a real listener on 127.0.0.1, over a
//! fresh SQLite file, and a small SSE client.
#![allow(dead_code)]

#[path = "../../examples/todo_sync/app.rs"]
pub mod app;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use rhtmx_sync::{SyncEngine, SyncEngineBuilder};
use sqlx::SqlitePool;
use tokio::task::JoinHandle;

/// A running server over a database file.
pub struct Server {
    pub base: String,
    pub pool: SqlitePool,
    pub engine: SyncEngine,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh temp dir holding `app.db`.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    (dir, path)
}

pub fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Starts the example app with the default engine over `db`.
pub async fn start(db: &Path) -> Server {
    start_with(db, |b| b).await
}

/// Starts the example app with an engine configured by `configure`.
pub async fn start_with(
    db: &Path,
    configure: impl FnOnce(SyncEngineBuilder) -> SyncEngineBuilder,
) -> Server {
    // Tests use the push API: the app allows it for todos.
    start_built(db, |b| configure(b.writable("todos"))).await
}

/// Starts the example with the push API closed (nothing made writable).
pub async fn start_without_push(db: &Path) -> Server {
    start_built(db, |b| b).await
}

async fn start_built(
    db: &Path,
    configure: impl FnOnce(SyncEngineBuilder) -> SyncEngineBuilder,
) -> Server {
    let pool = app::open_db(&url(db)).await.expect("open db");
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
        pool,
        engine,
        task,
    }
}

/// Starts the example with a second entity, `notes` (integer keys), registered by name;
/// returns the server and a pool of its own on the same file.
pub async fn start_with_notes(db: &Path) -> (Server, SqlitePool) {
    let pool = app::open_db(&url(db)).await.expect("open db");
    sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        .execute(&pool)
        .await
        .unwrap();
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
pub async fn todos(pool: &SqlitePool) -> Vec<(String, String, bool)> {
    sqlx::query_as("SELECT id, title, completed FROM todos ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Replays the change log of `todos` into rows, ordered by id: must equal [`todos`].
pub async fn replay_log(pool: &SqlitePool) -> Vec<(String, String, bool)> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT entity_id, action, data FROM _rhtmx_sync_log WHERE entity = 'todos' ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
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
    pool: &SqlitePool,
    entity: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT entity_id, action, data FROM _rhtmx_sync_log WHERE entity = ? ORDER BY version",
    )
    .bind(entity)
    .fetch_all(pool)
    .await
    .unwrap();
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
pub async fn single_pool(db: &Path) -> SqlitePool {
    app::open_db(&url(db)).await.expect("open db").close().await;
    let options: sqlx::sqlite::SqliteConnectOptions = url(db).parse().expect("url");
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.busy_timeout(Duration::from_secs(5)))
        .await
        .expect("single pool")
}

/// About 12 MB of log: 12,000 todos with 1 KB titles, written by the app's own SQL.
pub async fn fill_log(server: &Server) {
    fill_todos(&server.pool).await;
}

/// [`fill_log`] on any pool over the example's schema.
pub async fn fill_todos(pool: &SqlitePool) {
    let title = "t".repeat(1000);
    let mut tx = pool.begin().await.unwrap();
    for i in 0..12_000 {
        sqlx::query("INSERT INTO todos (id, title) VALUES (?, ?)")
            .bind(format!("row-{i:05}"))
            .bind(&title)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
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
