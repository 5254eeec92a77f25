//! Under abuse from one client the app still answers: 200 connections sending nothing or
//! trickling a byte a second (request headers, push bodies, the app's own form bodies),
//! 50 concurrent full
//! pulls that stop reading, and more event streams than the budget. The excess pulls
//! and streams answer 429 at once, every trickler is cut off by a timeout (headers by
//! the server's header read timeout, bodies by the engine's and the app's body
//! timeouts), and the app's own page answers meanwhile. Served as the examples serve
//! (`examples/shared/serve.rs`).

mod common;

#[path = "../examples/shared/serve.rs"]
#[allow(dead_code)]
mod serve;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use rhtmx_sync::SyncEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_http::timeout::TimeoutLayer;

const BODY_TIMEOUT: Duration = Duration::from_secs(2);
const STREAMS: usize = 20;

/// Opens a connection that sends `head` (and, when `body` is set, a body of that
/// many bytes announced) one byte a second; returns the status line the server
/// answered, or "" when it closed the connection without an answer.
async fn trickle(addr: std::net::SocketAddr, head: String, body: Option<usize>) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.split();
    let bytes: Vec<u8> = match body {
        None => head.into_bytes(),
        Some(n) => {
            let mut all = format!("{head}Content-Length: {n}\r\n\r\n").into_bytes();
            all.extend(std::iter::repeat_n(b'{', n));
            all
        }
    };
    let sender = async move {
        // The head of a body request goes at once; then a byte a second.
        let split = if body.is_some() {
            bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
        } else {
            0
        };
        let _ = write.write_all(&bytes[..split]).await;
        for byte in &bytes[split..] {
            if write.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    // Until the status line, or until the server closes the connection.
    let mut answer = Vec::new();
    let reader = async {
        let mut buf = [0u8; 256];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::select! {
        () = sender => unreachable!("the sender never ends"),
        () = reader => {}
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

async fn the_app_answers_while_one_client_abuses_every_budget(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let engine = SyncEngine::builder(pool.clone())
        .entity::<app::Todo>()
        .writable("todos")
        .body_timeout(BODY_TIMEOUT)
        .max_event_streams(STREAMS)
        .build()
        .await
        .unwrap();
    let router = app::app(engine.clone())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            BODY_TIMEOUT,
        ))
        .merge(engine.routes())
        .layer(engine.idempotency_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let _server = tokio::spawn(serve::serve(listener, router, 1000, std::future::pending()));
    fill_todos(&Db::from(&pool)).await;
    numbered(&engine, 12_000).await;

    // 200 tricklers: request headers, push bodies, and form bodies to the app.
    let mut tricklers = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (head, body) = match i % 4 {
            // Nothing at all: timed from the connection, not from a first byte.
            3 => (String::new(), None),
            0 => (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_owned(),
                None,
            ),
            1 => (
                "POST /api/sync/todos HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: application/json\r\n"
                    .to_owned(),
                Some(1000),
            ),
            _ => (
                "POST /todos HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n"
                    .to_owned(),
                Some(1000),
            ),
        };
        tricklers.spawn(async move { (i % 4, trickle(addr, head, body).await) });
    }
    // 50 full pulls that stop reading: the budget's 32 hold their places, the rest 429.
    let mut stalled = Vec::new();
    let mut refused_pulls = 0;
    for _ in 0..50 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /api/sync/todos?since=0&limit=10000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            )
            .await
            .unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        match &first {
            b"HTTP/1.1 200" => stalled.push(stream),
            b"HTTP/1.1 429" => refused_pulls += 1,
            other => panic!("pull answered {}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!((stalled.len(), refused_pulls), (32, 18));
    // More event streams than the budget: the excess answers 429 at once.
    let client = client();
    let mut streams = Vec::new();
    let mut refused_streams = 0;
    for _ in 0..STREAMS + 5 {
        let res = client
            .get(format!("{base}/api/sync/events"))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => streams.push(res),
            429 => {
                assert!(res.headers().contains_key("retry-after"));
                refused_streams += 1;
            }
            other => panic!("stream answered {other}"),
        }
    }
    assert_eq!((streams.len(), refused_streams), (STREAMS, 5));

    // Meanwhile the app's own pages answer (the time is printed, not asserted: see
    // BENCHMARKS.md for targets).
    for path in ["/", "/todos"] {
        let started = Instant::now();
        let res = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.bytes().await.unwrap();
        println!("GET {path} under load: {:?}", started.elapsed());
    }

    // Every trickler is cut off: headers by the read timeout (closed, no answer), push
    // bodies with 408, the app's form bodies with a 4xx from its body timeout.
    let mut seen = [0usize; 4];
    // (A guard, not a measure: far beyond every timeout, so a connection never cut off
    // fails the test instead of hanging it.)
    while let Some(done) = tokio::time::timeout(Duration::from_secs(120), tricklers.join_next())
        .await
        .expect("every trickler is cut off")
    {
        let (kind, answer) = done.unwrap();
        match kind {
            0 | 3 => assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "a header trickler got {answer:?}"
            ),
            1 => assert!(answer.starts_with("HTTP/1.1 408"), "push: {answer:?}"),
            _ => assert!(answer.starts_with("HTTP/1.1 4"), "app form: {answer:?}"),
        }
        seen[kind] += 1;
    }
    assert_eq!(seen, [50, 50, 50, 50]);
    drop((stalled, streams));
}
both!(the_app_answers_while_one_client_abuses_every_budget);
