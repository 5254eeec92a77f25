//! The server under test, run as a child process (this binary with `--serve`), so that
//! its RSS and CPU time are its own and the load generators in the parent do not share
//! its file-descriptor limit.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use sqlx::SqlitePool;

use crate::app;
use crate::util::{self, SyncMode};

/// How the child serves.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// With the engine syncing `todos`, or the same stack with an engine syncing nothing.
    pub tracked: bool,
    pub sync: SyncMode,
    /// Set TCP_NODELAY on accepted connections (the example does not).
    pub nodelay: bool,
    /// `todos` gains a `tenant` column (default `t1`) and the scope
    /// `Scope::tenant("tenant")`; a request's tenant is its `x-tenant` header.
    pub scoped: bool,
}

impl ServeOptions {
    /// The example's settings: tracked, `synchronous = FULL`, no TCP_NODELAY.
    pub fn example() -> ServeOptions {
        ServeOptions {
            tracked: true,
            sync: SyncMode::Example,
            nodelay: false,
            scoped: false,
        }
    }
}

/// `--serve`: the example app as `examples/todo_sync/main.rs` assembles it (app
/// routes, engine routes, idempotency layer), plus the bench routes, on
/// 127.0.0.1 with a listen backlog of 8192. Prints `listening on http://...` and exits
/// when its stdin closes (the parent went away).
pub async fn serve(db: PathBuf, opts: ServeOptions) {
    util::raise_nofile();
    let pool = util::open(&db, opts.sync).await;
    // Untracked: the same app and middleware with an engine that syncs no table (the
    // example's router needs an engine), so no trigger fires and nothing is broadcast.
    let engine = if opts.scoped {
        sqlx::query("ALTER TABLE todos ADD COLUMN tenant TEXT NOT NULL DEFAULT 't1'")
            .execute(&pool)
            .await
            .expect("tenant column");
        rhtmx_sync::SyncEngine::builder(pool.clone())
            .entity_named("todos")
            .writable("todos")
            .authenticate::<Tenant>()
            .scope("todos", rhtmx_sync::Scope::tenant("tenant"))
            .max_event_streams(20_000)
            .max_event_streams_per_principal(20_000)
            .build()
            .await
    } else if opts.tracked {
        // The example's engine, with room for the fan-out's 10,000 streams (the default
        // budget keeps 512 for a small app).
        rhtmx_sync::SyncEngine::builder(pool.clone())
            .entity::<app::Todo>()
            .writable("todos") // the ingest bench pushes
            .max_event_streams(20_000)
            .build()
            .await
    } else {
        rhtmx_sync::SyncEngine::builder(pool.clone()).build().await
    }
    .expect("engine");
    let router = app::app(engine.clone())
        .merge(bench_routes(pool))
        .merge(engine.routes())
        .layer(engine.idempotency_layer());
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1");
    let listener = socket.listen(8192).expect("listen");
    println!("listening on http://{}", listener.local_addr().unwrap());
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    if opts.nodelay {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router).await.expect("serve");
    } else {
        axum::serve(listener, router).await.expect("serve");
    }
}

/// The scoped server's principal: one user, in the tenant its `x-tenant` header names.
struct Tenant(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Tenant {
    type Rejection = Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let tenant = parts.headers.get("x-tenant").and_then(|v| v.to_str().ok());
        Ok(Tenant(tenant.map(str::to_owned)))
    }
}

impl From<Tenant> for rhtmx_sync::Principal {
    fn from(t: Tenant) -> Self {
        let user = rhtmx_sync::Principal::user("bench");
        match t.0 {
            Some(tenant) => user.in_tenant(tenant),
            None => user,
        }
    }
}

/// Routes the example lacks, for measurements that must not include its list rendering.
fn bench_routes(pool: SqlitePool) -> Router {
    Router::new()
        .route("/bench/todos", post(bench_create))
        .route("/bench/batch", post(bench_batch))
        .route("/bench/blank", get(blank))
        .route("/bench/sse-baseline", get(sse_baseline))
        .with_state(pool)
}

#[derive(Deserialize)]
struct NewTodo {
    id: String,
    title: String,
}

/// The example's `POST /todos` insert, answered with 204 instead of the re-rendered list.
async fn bench_create(
    axum::extract::State(pool): axum::extract::State<SqlitePool>,
    Form(new): Form<NewTodo>,
) -> impl IntoResponse {
    match sqlx::query(util::INSERT)
        .bind(&new.id)
        .bind(&new.title)
        .execute(&pool)
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(e) => {
            eprintln!("bench insert: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

#[derive(Deserialize)]
struct Batch {
    changes: Vec<BatchChange>,
}

#[derive(Deserialize)]
struct BatchChange {
    id: String,
    data: BatchRow,
}

#[derive(Deserialize)]
struct BatchRow {
    title: String,
    completed: bool,
}

/// What an app without a sync layer would write for a push body: its creates as upserts
/// in one transaction, no validation against the schema, no merge, no log (the
/// baseline of the push API).
async fn bench_batch(
    axum::extract::State(pool): axum::extract::State<SqlitePool>,
    axum::Json(batch): axum::Json<Batch>,
) -> impl IntoResponse {
    let result = async {
        let mut tx = pool.begin().await?;
        for c in &batch.changes {
            sqlx::query(
                "INSERT INTO todos (id, title, completed) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET title = excluded.title, \
                 completed = excluded.completed",
            )
            .bind(&c.id)
            .bind(&c.data.title)
            .bind(c.data.completed)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(batch.changes.len())
    }
    .await;
    match result {
        Ok(n) => (StatusCode::OK, format!("{{\"applied\":{n}}}")).into_response(),
        Err(e) => {
            eprintln!("bench batch: {e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A page with the sync client and htmx but no server-rendered list (the browser
/// benchmarks time the client, not the example's HTML).
async fn blank() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=utf-8><title>bench</title>",
        "<script src=\"/assets/htmx-2.0.11.min.js\"></script>",
        "<script src=\"/api/sync/client.js\" data-sync-entities=\"todos\"></script>",
        "</head><body>",
        "<form id=\"f\" hx-post=\"/todos\" hx-swap=\"none\" data-rhtmx-new-id=\"id\">",
        "<input name=\"title\"></form>",
        "</body></html>"
    ))
}

/// An SSE stream that sends one comment and then nothing, with the engine's keep-alive:
/// the baseline for memory per idle event stream (plain axum + hyper).
async fn sse_baseline() -> impl IntoResponse {
    let first = futures_util::stream::once(async {
        Ok::<_, Infallible>(Event::default().comment("baseline"))
    });
    let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

/// A running `--serve` child; killed when dropped.
pub struct Child {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub pid: u32,
    /// Closing it asks the server to exit.
    stdin: Option<std::process::ChildStdin>,
    child: std::process::Child,
}

impl Child {
    pub fn spawn(db: &Path, opts: ServeOptions) -> Child {
        let exe = std::env::current_exe().expect("current exe");
        // BENCH_SERVER_PERF=/tmp/prof profiles every server: /tmp/prof.<n>.data.
        let mut cmd = match std::env::var("BENCH_SERVER_PERF") {
            Ok(prefix) => {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut cmd = Command::new("perf");
                cmd.args(["record", "-F", "999", "-g", "-q", "-o"])
                    .arg(format!("{prefix}.{n}.data"))
                    .arg("--")
                    .arg(exe);
                cmd
            }
            Err(_) => Command::new(exe),
        };
        cmd.arg("--serve")
            .arg("--db")
            .arg(db)
            .arg("--sync")
            .arg(opts.sync.arg());
        if !opts.tracked {
            cmd.arg("--untracked");
        }
        if opts.nodelay {
            cmd.arg("--nodelay");
        }
        if opts.scoped {
            cmd.arg("--scoped");
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the bench server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        break rest.trim().to_owned();
                    }
                }
                _ => panic!("the bench server exited before listening"),
            }
        };
        let addr = base.trim_start_matches("http://").parse().expect("address");
        Child {
            base,
            addr,
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
        }
    }

    pub fn mem(&self) -> util::Mem {
        util::mem(self.pid)
    }

    pub fn cpu_secs(&self) -> f64 {
        util::cpu_secs(self.pid)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Ask first (a profiler wrapping the server must get to write its data).
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for the load generators (keep-alive, loopback only).
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .no_proxy()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("http client")
}
