//! `Idempotency-Key` on the app's own routes: a replayed write is applied once and gets
//! the stored response; conflicting, concurrent, failed, abandoned and oversized requests
//! each get their documented answer; old keys are pruned.
//!
//! Besides the example app, the server carries test-only routes that count their calls
//! and, for `/slow`, stay in flight until the test releases them.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use common::*;
use reqwest::{Method, RequestBuilder};
use rhtmx_sync::{IdempotencyLayer, SyncEngine};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// Shared by the test-only routes.
struct Probe {
    calls: AtomicUsize,
    /// `/slow` sends its call number once it is running.
    entered: mpsc::UnboundedSender<usize>,
    /// `/slow` finishes only with a permit from here.
    release: Semaphore,
    /// `/slow` sends its call number if it is dropped before finishing.
    cancelled: mpsc::UnboundedSender<usize>,
    /// What `/gate` answers: a status and headers, set by the test.
    gate: std::sync::Mutex<Gate>,
}

/// The answer `/gate` gives, as `(status, [(header, value)])`.
type Gate = (u16, Vec<(&'static str, String)>);

impl Probe {
    fn call(&self) -> usize {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn probe_routes(probe: Arc<Probe>) -> Router {
    Router::new()
        .route("/count", post(count))
        .route("/slow", post(slow))
        .route("/flaky", post(flaky))
        .route("/big", post(big))
        .route("/stream", post(stream))
        .route("/gate", post(gate))
        // An upload route that accepts more than the layer buffers, and one that keeps
        // axum's default limit (2 MB).
        .route(
            "/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(8 * MIB)),
        )
        .route("/upload-small", post(upload))
        .route("/huge", post(huge))
        .route("/huge-stream", post(huge_stream))
        .route("/broken", post(broken))
        .with_state(probe)
}

/// 201 with an htmx header (kept for replay) and another (not kept).
async fn count(State(probe): State<Arc<Probe>>) -> impl IntoResponse {
    let n = probe.call();
    (
        StatusCode::CREATED,
        [("hx-trigger", "counted"), ("x-first-only", "yes")],
        format!("call {n}"),
    )
}

/// Answers what the test set in `probe.gate`, with the call number as body.
async fn gate(State(probe): State<Arc<Probe>>) -> Response {
    let n = probe.call();
    let (status, headers) = probe.gate.lock().unwrap().clone();
    let mut res = (StatusCode::from_u16(status).unwrap(), format!("gate {n}")).into_response();
    for (name, value) in headers {
        res.headers_mut()
            .append(name, HeaderValue::from_str(&value).unwrap());
    }
    res
}

/// 2 MiB and a bit, with an htmx header; the length is known up front.
async fn huge(State(probe): State<Arc<Probe>>) -> impl IntoResponse {
    let n = probe.call();
    (
        [("hx-trigger", "huge"), ("content-type", "text/html")],
        format!("{n} {}", "x".repeat(2 * MIB)),
    )
}

/// The same in chunks, with no length known up front.
async fn huge_stream(State(probe): State<Arc<Probe>>) -> axum::body::Body {
    let n = probe.call();
    let chunks = std::iter::once(format!("{n} ")).chain((0..64).map(|_| "x".repeat(MIB / 32)));
    axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.map(Ok::<_, std::io::Error>),
    ))
}

/// A 200 whose body fails after its first chunk (a handler that committed, then broke
/// while rendering).
async fn broken(State(probe): State<Arc<Probe>>) -> axum::body::Body {
    let n = probe.call();
    let chunks = [
        Ok(format!("broken {n} ")),
        Err(std::io::Error::other("render failed")),
    ];
    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
}

/// Echoes what arrived: the call number, the length and a checksum of the body.
async fn upload(State(probe): State<Arc<Probe>>, body: axum::body::Bytes) -> String {
    let n = probe.call();
    format!("upload {n}: {}", summary(&body))
}

/// Length and a position-dependent checksum, so a lost or reordered byte shows.
fn summary(body: &[u8]) -> String {
    let sum = body.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_mul(31).wrapping_add(u64::from(b) ^ (i as u64))
    });
    format!("{} bytes, {sum:x}", body.len())
}

/// `len` bytes that are not all alike.
fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const MIB: usize = 1024 * 1024;

/// Reports itself if dropped while armed.
struct Cancelled(Option<(mpsc::UnboundedSender<usize>, usize)>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some((tx, n)) = self.0.take() {
            let _ = tx.send(n);
        }
    }
}

/// Waits for a permit from the test, then echoes the body.
async fn slow(State(probe): State<Arc<Probe>>, body: String) -> String {
    let n = probe.call();
    let mut cancelled = Cancelled(Some((probe.cancelled.clone(), n)));
    probe.entered.send(n).unwrap();
    probe.release.acquire().await.unwrap().forget();
    cancelled.0 = None;
    format!("slow {n}: {body}")
}

/// 503 on the first call, 200 afterwards.
async fn flaky(State(probe): State<Arc<Probe>>) -> (StatusCode, String) {
    match probe.call() {
        1 => (StatusCode::SERVICE_UNAVAILABLE, "try again".to_owned()),
        n => (StatusCode::OK, format!("ok {n}")),
    }
}

/// A body of 4 KiB and a bit.
async fn big(State(probe): State<Arc<Probe>>) -> String {
    format!("{} {}", probe.call(), "x".repeat(4096))
}

/// The same size as `/big` in chunks, with no length known up front.
async fn stream(State(probe): State<Arc<Probe>>) -> axum::body::Body {
    let n = probe.call();
    let chunks = std::iter::once(format!("{n} ")).chain((0..8).map(|_| "x".repeat(512)));
    axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.map(Ok::<_, std::io::Error>),
    ))
}

/// The app, the engine's routes and the probe routes over one database, behind the
/// idempotency layer.
struct Harness {
    base: String,
    /// The app's own pool (the one the engine runs on).
    db: Db,
    engine: SyncEngine,
    probe: Arc<Probe>,
    entered: mpsc::UnboundedReceiver<usize>,
    cancelled: mpsc::UnboundedReceiver<usize>,
    servers: Vec<JoinHandle<()>>,
    /// The database, kept until the end of the test.
    _db: TestDb,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl Harness {
    /// Starts a server whose layer is configured by `configure`.
    async fn start(
        backend: Backend,
        configure: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
    ) -> Harness {
        let test_db = TestDb::new(backend).await;
        let pool = app::open(&test_db.url).await.expect("open db");
        let engine = app::engine(pool.clone()).await.expect("engine");
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
        let probe = Arc::new(Probe {
            calls: AtomicUsize::new(0),
            entered: entered_tx,
            release: Semaphore::new(0),
            cancelled: cancelled_tx,
            gate: std::sync::Mutex::new((200, Vec::new())),
        });
        let mut harness = Harness {
            base: String::new(),
            db: Db::from(&pool),
            engine,
            probe,
            entered,
            cancelled,
            servers: Vec::new(),
            _db: test_db,
        };
        let layer = configure(harness.engine.idempotency_layer());
        harness.base = harness.serve(layer).await;
        harness
    }

    /// Serves the same routes behind `layer` on a new port (a restart, as far as the
    /// layer's own memory goes); returns its base URL.
    async fn serve(&mut self, layer: IdempotencyLayer) -> String {
        let router = app::app(self.engine.clone())
            .merge(self.engine.routes())
            .merge(probe_routes(self.probe.clone()))
            .layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        self.servers.push(tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        }));
        base
    }

    /// Sets what `/gate` answers from now on.
    fn gate(&self, status: u16, headers: &[(&'static str, &str)]) {
        *self.probe.gate.lock().unwrap() = (
            status,
            headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        );
    }

    fn calls(&self) -> usize {
        self.probe.calls.load(Ordering::SeqCst)
    }

    /// The call number of the next `/slow` request to start running.
    async fn entered(&mut self) -> usize {
        tokio::time::timeout(WAIT, self.entered.recv())
            .await
            .expect("/slow running within 10 s")
            .unwrap()
    }

    /// A request to `{base}{path}`, with `Idempotency-Key: key` if given.
    fn request(&self, method: Method, path: &str, key: Option<&str>) -> RequestBuilder {
        request_to(&self.base, method, path, key)
    }

    /// The stored keys as `(key, state)`, ordered by key.
    async fn keys(&self) -> Vec<(String, String)> {
        self.db
            .fetch_all(
                "SELECT key, state FROM _rhtmx_sync_idempotency ORDER BY key",
                args![],
            )
            .await
    }
}

fn request_to(base: &str, method: Method, path: &str, key: Option<&str>) -> RequestBuilder {
    // Redirects are answers to check, not to follow.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT * 3)
        .build()
        .unwrap();
    let req = client.request(method, format!("{base}{path}"));
    match key {
        Some(key) => req.header("idempotency-key", key),
        None => req,
    }
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn replayed(&self) -> bool {
        match self.header("idempotent-replayed") {
            None => false,
            Some("true") => true,
            Some(other) => panic!("Idempotent-Replayed: {other}"),
        }
    }

    fn error(&self) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        json["error"].as_str().expect("an error message").to_owned()
    }
}

async fn send(req: RequestBuilder) -> Reply {
    let res = req.send().await.unwrap();
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap(),
    }
}

fn keys(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, s)| ((*k).to_owned(), (*s).to_owned()))
        .collect()
}

async fn a_replayed_write_is_applied_once_and_gets_the_same_response(backend: Backend) {
    let mut h = Harness::start(backend, |layer| layer).await;
    // A create without a client id: only the layer stands between a replay and a
    // second row.
    let base = h.base.clone();
    let create =
        || request_to(&base, Method::POST, "/todos", Some("create-1")).form(&[("title", "milk")]);
    let first = send(create()).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(!first.replayed());
    let replay = send(create()).await;
    assert_eq!(replay.status, 200);
    assert!(replay.replayed(), "{replay:?}");
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("content-type"), first.header("content-type"));
    assert_eq!(todos(&h.db).await.len(), 1);
    assert_eq!(h.keys().await, keys(&[("create-1", "completed")]));

    // Status and htmx headers are replayed; other headers belong to the first answer.
    let counted = |base: &str| request_to(base, Method::POST, "/count", Some("count-1"));
    let first = send(counted(&base)).await;
    assert_eq!((first.status, first.body.as_str()), (201, "call 1"));
    assert_eq!(first.header("x-first-only"), Some("yes"));
    let replay = send(counted(&base)).await;
    assert_eq!((replay.status, replay.body.as_str()), (201, "call 1"));
    assert!(replay.replayed());
    assert_eq!(replay.header("hx-trigger"), Some("counted"));
    assert_eq!(replay.header("x-first-only"), None);
    assert_eq!(h.calls(), 1);

    // PUT is covered too.
    let id = &todos(&h.db).await[0].0;
    let rename = |base: &str| {
        request_to(base, Method::PUT, &format!("/todos/{id}"), Some("rename-1"))
            .form(&[("title", "oat milk")])
    };
    let first = send(rename(&h.base)).await;
    assert_eq!(first.status, 200);
    assert!(!first.replayed());

    // The keys live in the database: a restarted layer still replays.
    let layer = h.engine.idempotency_layer();
    let restarted = h.serve(layer).await;
    let replay = send(rename(&restarted)).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    let replay = send(counted(&restarted).header("x-unrelated", "differs")).await;
    assert_eq!(replay.body, "call 1", "other headers are not fingerprinted");
    assert_eq!(h.calls(), 1);
}
both!(a_replayed_write_is_applied_once_and_gets_the_same_response);

async fn the_same_key_for_a_different_request_answers_422_and_changes_nothing(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    let first = send(
        h.request(Method::POST, "/todos", Some("k"))
            .form(&[("title", "milk")]),
    )
    .await;
    assert_eq!(first.status, 200);
    let before = todos(&h.db).await;

    let other_body = send(
        h.request(Method::POST, "/todos", Some("k"))
            .form(&[("title", "bread")]),
    )
    .await;
    assert_eq!(other_body.status, 422, "{other_body:?}");
    assert!(other_body.error().contains("different request"));
    let other_route = send(h.request(Method::POST, "/count", Some("k"))).await;
    assert_eq!(other_route.status, 422);
    let other_type = send(
        h.request(Method::POST, "/todos", Some("k"))
            .header("content-type", "text/plain")
            .body("title=milk"),
    )
    .await;
    assert_eq!(other_type.status, 422);

    assert_eq!(todos(&h.db).await, before);
    assert_eq!(h.calls(), 0);
    assert_eq!(h.keys().await, keys(&[("k", "completed")]));
}
both!(the_same_key_for_a_different_request_answers_422_and_changes_nothing);

async fn a_duplicate_while_the_first_is_in_flight_answers_409(backend: Backend) {
    let mut h = Harness::start(backend, |layer| layer).await;
    let base = h.base.clone();
    let slow = || request_to(&base, Method::POST, "/slow", Some("k")).body("a");
    let first = tokio::spawn(send(slow()));
    assert_eq!(h.entered().await, 1);
    assert_eq!(h.keys().await, keys(&[("k", "in_flight")]));

    let duplicate = send(slow()).await;
    assert_eq!(duplicate.status, 409, "{duplicate:?}");
    assert_eq!(duplicate.header("retry-after"), Some("1"));
    assert!(duplicate.error().contains("in progress"));
    assert_eq!(h.calls(), 1);

    h.probe.release.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "slow 1: a"));
    let retry = send(slow()).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "slow 1: a"));
    assert!(retry.replayed());
    assert_eq!(h.calls(), 1);
}
both!(a_duplicate_while_the_first_is_in_flight_answers_409);

async fn a_server_error_is_not_stored_so_the_retry_runs_again(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    let flaky = || h.request(Method::POST, "/flaky", Some("k"));
    let failed = send(flaky()).await;
    assert_eq!((failed.status, failed.body.as_str()), (503, "try again"));
    assert_eq!(h.keys().await, keys(&[]));

    let retried = send(flaky()).await;
    assert_eq!((retried.status, retried.body.as_str()), (200, "ok 2"));
    assert!(!retried.replayed());
    let replayed = send(flaky()).await;
    assert_eq!(replayed.body, "ok 2");
    assert!(replayed.replayed());
    assert_eq!(h.calls(), 2);
}
both!(a_server_error_is_not_stored_so_the_retry_runs_again);

async fn an_expired_lease_is_taken_over_and_the_newest_attempt_is_stored(backend: Backend) {
    // With no lease, an in-flight key looks exactly like one left by a crash.
    let mut h = Harness::start(backend, |layer| layer.lease(Duration::ZERO)).await;
    let base = h.base.clone();
    let slow = || request_to(&base, Method::POST, "/slow", Some("k")).body("a");
    let first = tokio::spawn(send(slow()));
    assert_eq!(h.entered().await, 1);
    let second = tokio::spawn(send(slow()));
    assert_eq!(h.entered().await, 2, "the second attempt took the key over");

    // The first attempt finishes first (the semaphore is fair), while the second still
    // holds the key: its response must not be the one stored.
    h.probe.release.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "slow 1: a"));
    h.probe.release.add_permits(1);
    let second = second.await.unwrap();
    assert_eq!((second.status, second.body.as_str()), (200, "slow 2: a"));

    let retry = send(slow()).await;
    assert_eq!(retry.body, "slow 2: a");
    assert!(retry.replayed());
    assert_eq!(h.calls(), 2);
}
both!(an_expired_lease_is_taken_over_and_the_newest_attempt_is_stored);

async fn a_claim_left_by_a_crash_blocks_retries_until_its_lease_expires(backend: Backend) {
    let mut h = Harness::start(backend, |layer| layer).await;
    let base = h.base.clone();
    let slow = || request_to(&base, Method::POST, "/slow", Some("k")).body("a");
    let first = tokio::spawn(send(slow()));
    assert_eq!(h.entered().await, 1);
    assert_eq!(send(slow()).await.status, 409);

    // The first attempt is now as good as dead: its lease runs out.
    h.db.execute(
        "UPDATE _rhtmx_sync_idempotency SET locked_until = 0 WHERE key = 'k'",
        args![],
    )
    .await;
    let retry = tokio::spawn(send(slow()));
    assert_eq!(h.entered().await, 2);
    // The presumed-dead attempt finishes after all; the key is no longer its own.
    h.probe.release.add_permits(1);
    assert_eq!(first.await.unwrap().body, "slow 1: a");
    h.probe.release.add_permits(1);
    assert_eq!(retry.await.unwrap().body, "slow 2: a");
    assert_eq!(send(slow()).await.body, "slow 2: a");
    assert_eq!(h.calls(), 2);
}
both!(a_claim_left_by_a_crash_blocks_retries_until_its_lease_expires);

async fn a_request_whose_client_disconnects_still_completes_and_is_stored(backend: Backend) {
    let mut h = Harness::start(backend, |layer| layer).await;
    let base = h.base.clone();
    let slow = || request_to(&base, Method::POST, "/slow", Some("k")).body("a");
    let abandoned = tokio::spawn(send(slow()));
    assert_eq!(h.entered().await, 1);
    assert_eq!(h.keys().await, keys(&[("k", "in_flight")]));

    // The client goes away mid-request. The handler may already have committed, so the
    // request is not dropped: it finishes and its response is kept for the replay.
    abandoned.abort();
    let _ = abandoned.await;
    h.probe.release.add_permits(1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.keys().await != keys(&[("k", "completed")]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not completed: {:?}",
            h.keys().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.cancelled.try_recv().is_err(), "the handler was cancelled");

    // The retry gets the first attempt's answer; the handler ran once.
    let retry = send(slow()).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "slow 1: a"));
    assert!(retry.replayed());
}
both!(a_request_whose_client_disconnects_still_completes_and_is_stored);

async fn requests_without_a_key_or_with_a_safe_method_pass_through(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    // One keyed request, so the table is known to be in use.
    assert_eq!(
        send(h.request(Method::POST, "/count", Some("keyed")))
            .await
            .status,
        201
    );

    for expected in ["call 2", "call 3"] {
        let res = send(h.request(Method::POST, "/count", None)).await;
        assert_eq!((res.status, res.body.as_str()), (201, expected));
        assert!(!res.replayed());
    }
    for _ in 0..2 {
        let res = send(h.request(Method::GET, "/todos", Some("read"))).await;
        assert_eq!(res.status, 200);
        assert!(!res.replayed());
    }
    let (status, _) = pull(&h.base, "todos", "").await;
    assert_eq!(status, 200);
    assert_eq!(h.keys().await, keys(&[("keyed", "completed")]));
}
both!(requests_without_a_key_or_with_a_safe_method_pass_through);

async fn a_malformed_key_answers_400_and_runs_nothing(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    assert_eq!(
        send(h.request(Method::POST, "/count", Some("keyed")))
            .await
            .status,
        201
    );

    let long = "a".repeat(256);
    let cases: Vec<(&str, RequestBuilder)> = vec![
        ("empty", h.request(Method::POST, "/count", Some(""))),
        (
            "256 characters",
            h.request(Method::POST, "/count", Some(&long)),
        ),
        ("a space", h.request(Method::POST, "/count", Some("a b"))),
        (
            "not ASCII",
            h.request(Method::POST, "/count", None).header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(b"cl\xc3\xa9").unwrap(),
            ),
        ),
        (
            "two keys",
            h.request(Method::POST, "/count", Some("one"))
                .header("idempotency-key", "two"),
        ),
    ];
    for (what, req) in cases {
        let res = send(req).await;
        assert_eq!(res.status, 400, "{what}: {res:?}");
        assert!(res.error().contains("Idempotency-Key"), "{what}: {res:?}");
    }
    assert_eq!(h.calls(), 1);
    assert_eq!(h.keys().await, keys(&[("keyed", "completed")]));

    let longest = "~".repeat(255);
    let res = send(h.request(Method::POST, "/count", Some(&longest))).await;
    assert_eq!(res.status, 201, "255 visible characters are a valid key");
    assert_eq!(h.keys().await.len(), 2);
}
both!(a_malformed_key_answers_400_and_runs_nothing);

async fn a_request_body_over_the_layer_limit_is_streamed_to_the_route_and_applied_once(
    backend: Backend,
) {
    let h = Harness::start(backend, |layer| layer.body_limit(1024)).await;
    let large = "x".repeat(2000);
    let keyed = || {
        h.request(Method::POST, "/count", Some("large"))
            .body(large.clone())
    };
    let first = send(keyed()).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (201, "call 1"),
        "{first:?}"
    );
    let replay = send(keyed()).await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (201, true),
        "{replay:?}"
    );
    assert_eq!(replay.body, "call 1");
    // Without a key the layer does not read the body at all.
    let res = send(h.request(Method::POST, "/count", None).body(large.clone())).await;
    assert_eq!(res.status, 201);
    assert_eq!(h.calls(), 2);
    assert_eq!(h.keys().await, keys(&[("large", "completed")]));
}
both!(a_request_body_over_the_layer_limit_is_streamed_to_the_route_and_applied_once);

async fn keys_older_than_the_retention_window_are_pruned(backend: Backend) {
    let hour = Duration::from_secs(3600);
    let mut h = Harness::start(backend, |layer| layer.retention(hour)).await;
    for key in ["old", "new"] {
        let res = send(h.request(Method::POST, "/count", Some(key))).await;
        assert_eq!(res.status, 201);
    }
    // Two hours pass for `old`; a crashed claim as old, and a live one.
    // The store's times are Unix milliseconds.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let two_hours_ago = now_ms - 7_200_000;
    h.db.execute(
        "UPDATE _rhtmx_sync_idempotency SET created_at = $1 WHERE key = 'old'",
        args![two_hours_ago],
    )
    .await;
    h.db.execute(
        "INSERT INTO _rhtmx_sync_idempotency (key, fingerprint, state, created_at, locked_until)
         VALUES ('crashed', 'f', 'in_flight', $1, $1 + 60000),
                ('running', 'f', 'in_flight', $1, 9223372036854775807)",
        args![two_hours_ago],
    )
    .await;

    // This layer pruned less than a minute ago: nothing is deleted yet.
    send(h.request(Method::POST, "/count", Some("third"))).await;
    assert_eq!(h.keys().await.len(), 5);

    // A fresh layer prunes on its first keyed request.
    let layer = h.engine.idempotency_layer().retention(hour);
    let base = h.serve(layer).await;
    send(request_to(&base, Method::POST, "/count", Some("fourth"))).await;
    assert_eq!(
        h.keys().await,
        keys(&[
            ("fourth", "completed"),
            ("new", "completed"),
            ("running", "in_flight"),
            ("third", "completed"),
        ])
    );
    // A retry after the window runs again.
    let calls = h.calls();
    let res = send(request_to(&base, Method::POST, "/count", Some("old"))).await;
    assert_eq!(res.body, format!("call {}", calls + 1));
    assert!(!res.replayed());
}
both!(keys_older_than_the_retention_window_are_pruned);

async fn a_refusal_that_is_not_final_is_not_stored_and_the_retry_runs_again(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    // Each of these says "not now" (log in again, slow down, try later), not "no".
    let refusals: &[(u16, &[(&str, &str)])] = &[
        (401, &[("www-authenticate", "Bearer")]),
        (403, &[]),
        (419, &[]),
        (408, &[]),
        (425, &[]),
        (429, &[]),
        (429, &[("retry-after", "3")]),
        (409, &[("retry-after", "2")]),
        (503, &[("retry-after", "1")]),
        // Any answer that asks to be retried, even a success.
        (202, &[("retry-after", "5")]),
        // A redirect to a login page, as a plain redirect or an htmx one.
        (303, &[("location", "/login?next=/todos")]),
        (302, &[("location", "http://127.0.0.1:1/auth/sign-in")]),
        (307, &[("location", "/Signin")]),
        (200, &[("hx-redirect", "/sign-in")]),
        (
            200,
            &[("hx-location", r#"{"path": "/login", "target": "body"}"#)],
        ),
        (200, &[("hx-location", "/auth")]),
    ];
    for (i, (status, headers)) in refusals.iter().enumerate() {
        let key = format!("refused-{i}");
        let what = format!("{status} {headers:?}");
        h.gate(*status, headers);
        let calls = h.calls();
        let refused = send(h.request(Method::POST, "/gate", Some(&key))).await;
        assert_eq!(refused.status, *status, "{what}");
        for (name, value) in *headers {
            assert_eq!(
                refused.header(name),
                Some(*value),
                "{what}: {name} reaches the client"
            );
        }
        assert_eq!(
            h.keys().await.iter().filter(|(k, _)| *k == key).count(),
            0,
            "{what}: stored"
        );

        // The user logs in again, or the server has room again: the same key runs.
        h.gate(201, &[("hx-trigger", "saved")]);
        let retry = send(h.request(Method::POST, "/gate", Some(&key))).await;
        assert_eq!(
            (retry.status, retry.replayed()),
            (201, false),
            "{what}: {retry:?}"
        );
        assert_eq!(retry.body, format!("gate {}", calls + 2), "{what}");
        let replay = send(h.request(Method::POST, "/gate", Some(&key))).await;
        assert_eq!(
            (replay.status, replay.replayed()),
            (201, true),
            "{what}: {replay:?}"
        );
        assert_eq!(replay.body, retry.body, "{what}");
        assert_eq!(h.calls(), calls + 2, "{what}");
    }
}
both!(a_refusal_that_is_not_final_is_not_stored_and_the_retry_runs_again);

async fn final_answers_are_stored_with_the_headers_a_client_needs(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    let finals: &[(u16, &[(&str, &str)])] = &[
        // Post/Redirect/Get: the normal answer to a successful form post.
        (303, &[("location", "/todos")]),
        (302, &[("location", "/blog/authors")]),
        (301, &[("location", "/loginhelp")]),
        (303, &[("location", "/oauth2/callback")]),
        (200, &[("hx-redirect", "/todos/1")]),
        (409, &[]),
        (400, &[]),
        (404, &[]),
        (410, &[]),
        (413, &[]),
        (
            422,
            &[("hx-retarget", "#errors"), ("hx-reswap", "innerHTML")],
        ),
        (
            201,
            &[
                ("location", "/files/1"),
                ("content-location", "/files/1"),
                ("content-disposition", "attachment; filename=\"a.csv\""),
                ("cache-control", "no-store"),
                ("link", "</files/1>; rel=\"self\""),
                ("etag", "\"v1\""),
                ("last-modified", "Wed, 21 Oct 2026 07:28:00 GMT"),
                ("content-language", "de"),
                ("hx-trigger", "saved"),
                ("hx-push-url", "/files/1"),
            ],
        ),
    ];
    for (i, (status, headers)) in finals.iter().enumerate() {
        let key = format!("final-{i}");
        let what = format!("{status} {headers:?}");
        h.gate(*status, headers);
        let calls = h.calls();
        let first = send(h.request(Method::POST, "/gate", Some(&key))).await;
        assert_eq!(first.status, *status, "{what}");
        // The route would answer differently now; the replay must not ask it.
        h.gate(200, &[]);
        let replay = send(h.request(Method::POST, "/gate", Some(&key))).await;
        assert_eq!(
            (replay.status, replay.replayed()),
            (*status, true),
            "{what}"
        );
        assert_eq!(replay.body, first.body, "{what}");
        for (name, value) in *headers {
            assert_eq!(replay.header(name), Some(*value), "{what}: {name} replayed");
        }
        assert_eq!(h.calls(), calls + 1, "{what}");
    }
}
both!(final_answers_are_stored_with_the_headers_a_client_needs);

async fn a_keyed_upload_over_the_layer_limit_reaches_the_route_and_is_applied_once(
    backend: Backend,
) {
    let h = Harness::start(backend, |layer| layer).await;
    // A 3 MB photo: more than the layer buffers (1 MiB), less than the route accepts.
    let photo = bytes(3_000_000);
    let upload = |key: &str, body: Vec<u8>| {
        h.request(Method::POST, "/upload", Some(key))
            .header("content-type", "image/jpeg")
            .body(body)
    };
    let first = send(upload("photo", photo.clone())).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, format!("upload 1: {}", summary(&photo)));
    let replay = send(upload("photo", photo.clone())).await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (200, true),
        "{replay:?}"
    );
    assert_eq!(replay.body, first.body);
    assert_eq!(h.calls(), 1);

    // The same key for another upload is still told apart.
    let mut other = photo.clone();
    other[10] ^= 1;
    let res = send(upload("photo", other)).await;
    assert_eq!(res.status, 422, "{res:?}");
    assert_eq!(h.calls(), 1);

    // Around the layer's limit, and well past it: each reaches the route whole, once.
    for len in [MIB - 1, MIB, MIB + 1, 2 * MIB, 8 * MIB] {
        let body = bytes(len);
        let key = format!("len-{len}");
        let calls = h.calls();
        let res = send(upload(&key, body.clone())).await;
        assert_eq!(res.status, 200, "{len}: {res:?}");
        assert_eq!(
            res.body,
            format!("upload {}: {}", calls + 1, summary(&body))
        );
        let replay = send(upload(&key, body)).await;
        assert_eq!((replay.status, replay.replayed()), (200, true), "{len}");
        assert_eq!(replay.body, res.body, "{len}");
        assert_eq!(h.calls(), calls + 1, "{len}");
    }

    // The route's own limit decides, with a key exactly as without one.
    let calls = h.calls();
    let too_large = bytes(8 * MIB + 1);
    let keyless = send(
        h.request(Method::POST, "/upload", None)
            .body(too_large.clone()),
    )
    .await;
    let keyed = send(upload("too-large", too_large)).await;
    assert_eq!((keyless.status, keyed.status), (413, 413), "{keyed:?}");
    assert_eq!(keyed.body, keyless.body);
    let small_route = |key: Option<&str>| {
        h.request(Method::POST, "/upload-small", key)
            .body(bytes(3_000_000))
    };
    let keyless = send(small_route(None)).await;
    let keyed = send(small_route(Some("small-route"))).await;
    assert_eq!((keyless.status, keyed.status), (413, 413), "{keyed:?}");
    assert_eq!(h.calls(), calls);
}
both!(a_keyed_upload_over_the_layer_limit_reaches_the_route_and_is_applied_once);

async fn a_large_form_re_encoded_by_the_browser_is_still_the_same_request(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    // A form over the layer's limit, sent once as htmx encodes it and replayed as the
    // browser client re-encodes it: another multipart boundary, `+` for `%20`.
    let text = "a b ".repeat(400_000);
    let multipart = |boundary: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{text}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n{text}\r\n--{boundary}--\r\n"
        )
    };
    let send_multipart = |boundary: &str| {
        send(
            h.request(Method::POST, "/upload", Some("form"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(multipart(boundary)),
        )
    };
    let first = send_multipart("----WebKitFormBoundaryAAAAAAAAAAAAAAAA").await;
    assert_eq!((first.status, first.replayed()), (200, false), "{first:?}");
    let replay = send_multipart("----WebKitFormBoundaryBBBBBBBBBBBBBBBB").await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (200, true),
        "{replay:?}"
    );
    assert_eq!(h.calls(), 1);

    let urlencoded = |space: &str| {
        h.request(Method::POST, "/upload", Some("urlencoded"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("title=x&note={}", text.replace(' ', space)))
    };
    let first = send(urlencoded("%20")).await;
    assert_eq!((first.status, first.replayed()), (200, false), "{first:?}");
    let replay = send(urlencoded("+").header(
        "content-type",
        "application/x-www-form-urlencoded;charset=UTF-8",
    ))
    .await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (200, true),
        "{replay:?}"
    );
    assert_eq!(h.calls(), 2);
}
both!(a_large_form_re_encoded_by_the_browser_is_still_the_same_request);

async fn an_upload_broken_off_mid_body_frees_its_key(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(backend, |layer| layer).await;
    let photo = bytes(3_000_000);
    // Half the photo, then the connection drops: the route never saw the request
    // whole, so its answer (a 400) is not an answer to the request.
    let addr = h.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nIdempotency-Key: photo\r\n\
         Content-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        photo.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&photo[..1_500_000]).await.unwrap();
    drop(conn);

    // The client retries with the same key; until the server has noticed the drop, it
    // is told the first attempt is still in progress.
    let deadline = tokio::time::Instant::now() + WAIT;
    let retry = loop {
        let res = send(
            h.request(Method::POST, "/upload", Some("photo"))
                .header("content-type", "image/jpeg")
                .body(photo.clone()),
        )
        .await;
        if res.status != 409 {
            break res;
        }
        assert!(tokio::time::Instant::now() < deadline, "still in flight");
        tokio::task::yield_now().await;
    };
    assert_eq!(retry.status, 200, "{retry:?}");
    assert!(!retry.replayed());
    assert_eq!(retry.body, format!("upload 1: {}", summary(&photo)));
}
both!(an_upload_broken_off_mid_body_frees_its_key);

/// Adds `n` todos straight to the database (fast; the change log records them too).
async fn add_todos(db: &Db, n: usize) {
    db.execute_each(
        "INSERT INTO todos (id, title, completed) VALUES ($1, $2, false)",
        (1..=n).map(|i| args![format!("t{i:06}"), format!("todo number {i}")]),
    )
    .await;
}

/// The stored body's length per key: `None` when it was not kept.
async fn stored_bodies(db: &Db) -> Vec<(String, Option<i64>)> {
    db.fetch_all(
        "SELECT key, CAST(length(body) AS BIGINT) FROM _rhtmx_sync_idempotency ORDER BY key",
        args![],
    )
    .await
}

async fn a_response_too_large_to_store_is_still_applied_once(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    for (path, key) in [("/huge", "huge"), ("/huge-stream", "huge-stream")] {
        let calls = h.calls();
        let first = send(h.request(Method::POST, path, Some(key))).await;
        assert_eq!(first.status, 200, "{path}");
        assert_eq!(
            first.body,
            format!("{} {}", calls + 1, "x".repeat(2 * MIB)),
            "{path}: the client gets the whole answer"
        );
        let replay = send(h.request(Method::POST, path, Some(key))).await;
        assert_eq!((replay.status, replay.replayed()), (200, true), "{path}");
        assert_eq!(h.calls(), calls + 1, "{path}: the route ran twice");
        // The body was not kept: the replay says so, and tells htmx not to swap it.
        assert_eq!(replay.body, "", "{path}");
        assert_eq!(
            replay.header("idempotent-body-omitted"),
            Some("true"),
            "{path}"
        );
        assert_eq!(replay.header("hx-reswap"), Some("none"), "{path}");
        if path == "/huge" {
            assert_eq!(replay.header("hx-trigger"), Some("huge"));
            assert_eq!(replay.header("content-type"), Some("text/html"));
        }
    }
    assert_eq!(
        stored_bodies(&h.db).await,
        vec![("huge".to_owned(), None), ("huge-stream".to_owned(), None)]
    );

    // The example: its list passes 1 MiB at about 2,000 todos of these titles, and a
    // bodiless toggle flips. Replayed with its key, it must flip once.
    add_todos(&h.db, 2500).await;
    let toggle = || h.request(Method::POST, "/todos/t000001/toggle", Some("toggle"));
    let first = send(toggle()).await;
    assert_eq!(first.status, 200);
    assert!(first.body.len() > MIB, "{} bytes", first.body.len());
    let replay = send(toggle()).await;
    assert_eq!((replay.status, replay.replayed()), (200, true));
    let completed: bool =
        h.db.scalar("SELECT completed FROM todos WHERE id = 't000001'", args![])
            .await;
    assert!(completed, "toggled twice");
}
both!(a_response_too_large_to_store_is_still_applied_once);

async fn a_response_whose_body_fails_is_still_applied_once(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    // The client sees the broken answer as a network error and retries with the key.
    match h.request(Method::POST, "/broken", Some("k")).send().await {
        Ok(first) => assert!(
            first.text().await.is_err(),
            "the failure reaches the client"
        ),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    let replay = send(h.request(Method::POST, "/broken", Some("k"))).await;
    assert_eq!(
        (replay.status, replay.replayed()),
        (200, true),
        "{replay:?}"
    );
    assert_eq!(replay.header("idempotent-body-omitted"), Some("true"));
    assert_eq!(h.calls(), 1);
}
both!(a_response_whose_body_fails_is_still_applied_once);

async fn the_store_keeps_each_body_below_its_cap_by_default(backend: Backend) {
    let h = Harness::start(backend, |layer| layer).await;
    // 200 todos render to well over 64 KiB; only the first create's list is smaller.
    let small = send(
        h.request(Method::POST, "/todos", Some("small"))
            .form(&[("title", "first")]),
    )
    .await;
    add_todos(&h.db, 200).await;
    let large = send(
        h.request(Method::POST, "/todos", Some("large"))
            .form(&[("title", "milk")]),
    )
    .await;
    assert!(large.body.len() > 64 * 1024, "{}", large.body.len());
    assert_eq!(
        stored_bodies(&h.db).await,
        vec![
            ("large".to_owned(), None),
            ("small".to_owned(), Some(small.body.len() as i64))
        ]
    );
    let replay = send(
        h.request(Method::POST, "/todos", Some("large"))
            .form(&[("title", "milk")]),
    )
    .await;
    assert!(replay.replayed());
    assert_eq!(todos(&h.db).await.len(), 202);
}
both!(the_store_keeps_each_body_below_its_cap_by_default);

/// What the store holds, counted by SQL: `(keys, bytes)`.
async fn counted(db: &Db) -> (u64, u64) {
    let (keys, bytes): (i64, i64) = db
        .fetch_one(
            "SELECT CAST(count(*) AS BIGINT), CAST(coalesce(sum(length(key) + length(fingerprint)
                    + coalesce(length(headers), 0) + coalesce(length(body), 0)), 0) AS BIGINT)
             FROM _rhtmx_sync_idempotency",
            args![],
        )
        .await;
    (keys as u64, bytes as u64)
}

async fn the_store_stays_within_its_byte_budget_and_keeps_every_key(backend: Backend) {
    const BUDGET: u64 = 1024 * 1024;
    let h = Harness::start(backend, |layer| {
        layer.replay_body_limit(256 * 1024).max_bytes(BUDGET)
    })
    .await;
    // Keyed creates without a client id: only the layer stands between a replay and a
    // second row. Each answer is the whole list, so stored answers grow with it.
    let layer = h.engine.idempotency_layer();
    for i in 0..300 {
        let res = send(
            h.request(Method::POST, "/todos", Some(&format!("create-{i:03}")))
                .form(&[("title", format!("todo {i}"))]),
        )
        .await;
        assert_eq!(res.status, 200);
        let usage = layer.usage().await.unwrap();
        assert_eq!((usage.keys, usage.bytes), counted(&h.db).await, "after {i}");
        assert!(usage.bytes <= BUDGET, "after {i}: {usage:?}");
    }
    let usage = layer.usage().await.unwrap();
    assert_eq!(usage.keys, 300);

    // Every key still answers without running again: the newest with their bodies,
    // the oldest with status and headers only.
    let bodies = stored_bodies(&h.db).await;
    assert_eq!(bodies[0].1, None, "the oldest body was dropped first");
    assert!(bodies[299].1.is_some(), "the newest body is kept");
    for i in [0, 150, 299] {
        let replay = send(
            h.request(Method::POST, "/todos", Some(&format!("create-{i:03}")))
                .form(&[("title", format!("todo {i}"))]),
        )
        .await;
        assert_eq!((replay.status, replay.replayed()), (200, true), "{i}");
        assert_eq!(
            replay.header("idempotent-body-omitted").is_some(),
            bodies[i].1.is_none(),
            "{i}"
        );
    }
    assert_eq!(todos(&h.db).await.len(), 300);

    // A database from before the totals existed: they start from what it holds.
    let drop_totals: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER _rhtmx_sync_idempotency_usage_insert",
            "DROP TRIGGER _rhtmx_sync_idempotency_usage_update",
            "DROP TRIGGER _rhtmx_sync_idempotency_usage_delete",
        ],
        Backend::Postgres => {
            &["DROP TRIGGER _rhtmx_sync_idempotency_usage ON _rhtmx_sync_idempotency"]
        }
    };
    for statement in drop_totals {
        h.db.execute(statement, args![]).await;
    }
    h.db.execute("DROP TABLE _rhtmx_sync_idempotency_usage", args![])
        .await;
    let engine = app::engine(h.engine.pool().clone()).await.unwrap();
    let usage = engine.idempotency_layer().usage().await.unwrap();
    assert_eq!((usage.keys, usage.bytes), counted(&h.db).await);
}
both!(the_store_stays_within_its_byte_budget_and_keeps_every_key);

async fn past_the_key_budget_the_oldest_completed_keys_go_first(backend: Backend) {
    let mut h = Harness::start(backend, |layer| layer.max_keys(10)).await;
    let base = h.base.clone();
    // A claim still in flight is never evicted.
    let slow = tokio::spawn(send(
        request_to(&base, Method::POST, "/slow", Some("slow")).body("a"),
    ));
    assert_eq!(h.entered().await, 1);
    for i in 0..20 {
        let res = send(h.request(Method::POST, "/count", Some(&format!("k{i:02}")))).await;
        assert_eq!(res.status, 201);
        let usage = h.engine.idempotency_layer().usage().await.unwrap();
        assert!(usage.keys <= 10, "after {i}: {usage:?}");
        assert_eq!((usage.keys, usage.bytes), counted(&h.db).await);
    }
    let kept: Vec<String> = h.keys().await.into_iter().map(|(k, _)| k).collect();
    assert!(kept.contains(&"slow".to_owned()), "{kept:?}");
    assert!(kept.contains(&"k19".to_owned()), "{kept:?}");
    assert!(!kept.contains(&"k00".to_owned()), "{kept:?}");
    h.probe.release.add_permits(1);
    assert_eq!(slow.await.unwrap().body, "slow 1: a");
    // The newest keys still replay; an evicted one runs again (documented).
    let calls = h.calls();
    assert!(send(h.request(Method::POST, "/count", Some("k19")))
        .await
        .replayed());
    assert!(!send(h.request(Method::POST, "/count", Some("k00")))
        .await
        .replayed());
    assert_eq!(h.calls(), calls + 1);
}
both!(past_the_key_budget_the_oldest_completed_keys_go_first);
