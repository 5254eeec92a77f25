//! Answers that carry row data are never stored by a browser or proxy cache: pulls,
//! pushes and the event stream say `Cache-Control: no-store`, whatever their status.

mod common;

use common::*;
use serde_json::json;

async fn cache_control(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let value = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, value)
}

#[tokio::test]
async fn row_data_is_never_cached_and_the_client_files_are_revalidated() {
    let (_dir, db) = temp_db();
    let server = start(&db).await;
    add_todo(&server, &todo_id("a"), "private").await;
    let http = client();
    let base = &server.base;
    let push = |body: String, kind: &'static str| {
        http.post(format!("{base}/api/sync/todos"))
            .header("content-type", kind)
            .body(body)
            .send()
    };
    let cases = vec![
        ("pull", http.get(format!("{base}/api/sync/todos?since=0")).send().await, 200),
        ("pull of an unknown entity", http.get(format!("{base}/api/sync/nope?since=0")).send().await, 404),
        ("pull with a bad cursor", http.get(format!("{base}/api/sync/todos?since=x")).send().await, 400),
        ("push", push(json!({"changes": [{"id": todo_id("b"), "action": "create", "data": {"title": "t"}}]}).to_string(), "application/json").await, 200),
        ("refused push", push("{}".into(), "text/plain").await, 415),
        ("bad push", push(json!({"changes": [{"id": 5, "action": "delete"}]}).to_string(), "application/json").await, 422),
        ("event stream", http.get(format!("{base}/api/sync/events")).send().await, 200),
        ("event stream of unknown entities", http.get(format!("{base}/api/sync/events?entities=nope")).send().await, 404),
    ];
    for (what, res, status) in cases {
        let (got, value) = cache_control(res.expect(what)).await;
        assert_eq!((got, value.as_str()), (status, "no-store"), "{what}");
    }
    let (status, value) = cache_control(
        http.get(format!("{base}/api/sync/client.js"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, value.as_str()), (200, "no-cache"));
}
