//! Clients that stop reading never block the app or the sync API: a pull or an event
//! stream holds no pooled connection and no read snapshot while it waits on the socket.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;

async fn stalled_pulls_do_not_block_the_app_or_the_sync_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    fill_log(&server).await;
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    // More stalled readers than the app's pool has connections (sqlx's default is 10).
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(stalled_request(addr, "/api/sync/todos?since=0&limit=10000").await);
    }
    // And event streams catching up through the whole log, never read either.
    for _ in 0..12 {
        let path = "/api/sync/events?last_event_id=0";
        stalled.insert(0, stalled_request(addr, path).await);
    }
    // Every path that needs the database still answers while they hang. Without the fix
    // these wait for the pool's 30 s acquire timeout and then fail.
    let deadline = Duration::from_secs(20);
    let list_url = format!("{}/todos", server.base);
    let list = tokio::time::timeout(deadline, get_status(&list_url));
    assert_eq!(list.await.expect("GET /todos answered"), 200);
    let fresh = todo_id("fresh");
    let create = tokio::time::timeout(deadline, add_todo(&server, &fresh, "still works"));
    create.await.expect("POST /todos answered");
    let pull = tokio::time::timeout(deadline, pull(&server.base, "todos", "?since=0&limit=5"));
    let (status, page) = pull.await.expect("a new pull answered");
    assert_eq!(
        (status, page["changes"].as_array().unwrap().len()),
        (200, 5)
    );
    let mut events = tokio::time::timeout(deadline, Sse::connect(&server.base, "", Some("0")))
        .await
        .expect("a new event stream opened");
    assert_eq!(events.next().await.data["id"], "row-00000");

    // A stalled reader that resumes still gets a complete, well-formed page.
    let mut slow = stalled.pop().unwrap();
    let mut body = Vec::new();
    slow.read_to_end(&mut body).await.unwrap_or_default();
    drop(slow);
    let text = String::from_utf8_lossy(&body);
    let json_start = text.find("\r\n\r\n").unwrap() + 4;
    let chunks = dechunk(&text[json_start..]);
    let page: serde_json::Value = serde_json::from_str(&chunks).expect("a complete JSON page");
    assert_eq!(page["changes"].as_array().unwrap().len(), 10_000);
    assert_eq!(page["has_more"], true);
}
both!(multi_thread: stalled_pulls_do_not_block_the_app_or_the_sync_api);

/// Decodes an HTTP/1.1 chunked body (the response is read raw off the socket).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}
