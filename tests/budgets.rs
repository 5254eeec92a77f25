//! Event streams and pulls have budgets: past them a request answers 429 with
//! `Retry-After` at once (never a hang, never unbounded memory or descriptors), and a
//! freed place is taken again.

mod common;

use common::*;

async fn event_streams_past_the_budget_answer_429_and_a_closed_one_frees_its_place(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.max_event_streams(3)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Sse::connect(&server.base, "", None).await);
    }
    let refused = client()
        .get(format!("{}/api/sync/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("event streams"),
        "{body}"
    );
    // The app's own pages still answer.
    assert_eq!(get_status(&format!("{}/todos", server.base)).await, 200);

    drop(open.pop());
    wait_until("a closed stream frees its place", || async {
        client()
            .get(format!("{}/api/sync/events", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}
both!(event_streams_past_the_budget_answer_429_and_a_closed_one_frees_its_place);

/// A pull whose answer is never read past its status line: the server cannot finish it.
async fn stalled_pull(base: &str) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://").parse().unwrap();
    stalled_request(addr, "/api/sync/todos?since=0&limit=10000").await
}

/// Sends `head` (a request whose body stops short) and returns the whole answer, failing
/// if the server never gives one.
async fn answer_to_stalled_body(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the server never answered a stalled body");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn pulls_past_the_budget_answer_429_until_one_ends(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.max_concurrent_pulls(2)).await;
    fill_log(&server).await;
    let mut stalled = vec![
        stalled_pull(&server.base).await,
        stalled_pull(&server.base).await,
    ];
    let refused = client()
        .get(format!("{}/api/sync/todos?since=0&limit=1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    drop(stalled.pop());
    wait_until("the ended pull frees its place", || async {
        pull(&server.base, "todos", "?since=0&limit=1").await.0 == 200
    })
    .await;
}
both!(multi_thread: pulls_past_the_budget_answer_429_until_one_ends);

/// A push whose body trickles in (or stops) is answered 408 once the body timeout
/// passes, and writes nothing; the connection is not held forever.
async fn a_push_body_that_trickles_is_cut_off_with_408(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| {
        b.body_timeout(std::time::Duration::from_millis(300))
    })
    .await;
    let head = "POST /api/sync/todos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"changes\": [";
    let text = answer_to_stalled_body(&server.base, head).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(todos(&server.db).await.is_empty());
}
both!(a_push_body_that_trickles_is_cut_off_with_408);

/// The idempotency layer reads a keyed request's body before the route: a body that
/// trickles is cut off with 408 there too, and the key is not claimed.
async fn a_keyed_body_that_trickles_is_cut_off_by_the_idempotency_layer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let engine = app::engine(pool.clone()).await.unwrap();
    let layer = engine
        .idempotency_layer()
        .body_timeout(std::time::Duration::from_millis(300));
    let (base, _task) = serve(app::app(engine.clone()).merge(engine.routes()).layer(layer)).await;
    let head = "POST /todos HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: k-1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntitle=slo";
    let text = answer_to_stalled_body(&base, head).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(todos(&Db::from(&pool)).await.is_empty());
}
both!(a_keyed_body_that_trickles_is_cut_off_by_the_idempotency_layer);

/// Who is asking, from a header (an app's session, in a real one).
struct AsUser(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AsUser {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let user = parts.headers.get("x-user");
        Ok(AsUser(user.map(|v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        })))
    }
}

impl From<AsUser> for rhtmx_sync::Principal {
    fn from(who: AsUser) -> Self {
        who.0.map_or_else(
            rhtmx_sync::Principal::anonymous,
            rhtmx_sync::Principal::user,
        )
    }
}

/// One signed-in user cannot take every place: past their own share they get 429, and
/// another user (or an anonymous visitor) still gets a stream and a pull.
async fn one_principal_holds_at_most_its_share_of_streams_and_pulls(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| {
        b.authenticate::<AsUser>()
            .max_event_streams_per_principal(2)
            .max_concurrent_pulls_per_principal(2)
    })
    .await;
    fill_log(&server).await;
    let stream = |user: Option<&'static str>| {
        let mut req = client().get(format!("{}/api/sync/events", server.base));
        if let Some(user) = user {
            req = req.header("x-user", user);
        }
        req.send()
    };
    let mut open = Vec::new();
    for _ in 0..2 {
        let res = stream(Some("alice")).await.unwrap();
        assert_eq!(res.status(), 200);
        open.push(res);
    }
    let refused = stream(Some("alice")).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    for other in [Some("bob"), None] {
        let res = stream(other).await.unwrap();
        assert_eq!(res.status(), 200, "{other:?}");
        open.push(res);
    }
    // Pulls: alice's two stalled pulls hold her share.
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let stalled_as = |user: &'static str| {
        let headers = format!("x-user: {user}\r\n");
        async move { stalled_request_with(addr, "/api/sync/todos?since=0&limit=10000", &headers).await }
    };
    let (a1, s1) = stalled_as("alice").await;
    let (a2, s2) = stalled_as("alice").await;
    assert_eq!((s1.as_str(), s2.as_str()), ("HTTP/1.1 200", "HTTP/1.1 200"));
    let (_a3, s3) = stalled_as("alice").await;
    assert_eq!(s3, "HTTP/1.1 429");
    let (_b, sb) = stalled_as("bob").await;
    assert_eq!(sb, "HTTP/1.1 200");
    // A pull that ends gives its place back.
    drop(a1);
    wait_until("alice's place is given back", || async {
        let (_s, status) = stalled_as("alice").await;
        status == "HTTP/1.1 200"
    })
    .await;
    drop((a2, open));
}
both!(one_principal_holds_at_most_its_share_of_streams_and_pulls);
