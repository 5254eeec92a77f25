//! Pull pages through the log; push applies changes all or nothing.

mod common;

use common::*;
use serde_json::json;

async fn pull_pages_through_the_log_in_version_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    for i in 0..25 {
        add_todo(&server, &todo_id(&format!("p{i:02}")), "x").await;
    }
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = pull(&server.base, "todos", &format!("?since={since}&limit=10")).await;
        assert_eq!(status, 200);
        pages += 1;
        for c in page["changes"].as_array().unwrap() {
            let v = c["version"].as_i64().unwrap();
            assert!(v > since, "version {v} not after since {since}");
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        since = page["version"].as_i64().unwrap();
        // Every page names the head it was read up to: where the pull ends.
        assert_eq!(page["head"], 25);
        if page["has_more"] == false {
            break;
        }
        assert_eq!(page["changes"].as_array().unwrap().len(), 10);
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| todo_id(&format!("p{i:02}"))).collect();
    assert_eq!(seen, expected);
    assert_eq!(since, server.engine.head().await.unwrap());
    // Caught up: an empty page at the same version.
    let (_, page) = pull(&server.base, "todos", &format!("?since={since}")).await;
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["version"].as_i64(), Some(since));
}
both!(pull_pages_through_the_log_in_version_order);

async fn a_complete_page_skips_past_other_entities_versions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (server, pool) = start_with_notes(&db).await;
    add_todo(&server, &todo_id("t"), "x").await;
    pool.execute("INSERT INTO notes (body) VALUES ('a'), ('b')", args![])
        .await;
    let (_, page) = pull(&server.base, "todos", "").await;
    assert_eq!(page["changes"].as_array().unwrap().len(), 1);
    assert_eq!(page["version"], 3);
    let (_, notes) = pull(&server.base, "notes", "?since=1").await;
    assert_eq!(notes["changes"][0]["id"], 1);
    assert_eq!(notes["changes"][1]["data"], json!({"id": 2, "body": "b"}));
}
both!(a_complete_page_skips_past_other_entities_versions);

async fn pull_streams_a_large_page(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.pull_limit(1000, 50_000)).await;
    server
        .db
        .execute_each(
            "INSERT INTO todos (id, title) VALUES ($1, 'row with some text in it')",
            (0..20_000).map(|i| args![format!("r{i:05}")]),
        )
        .await;
    numbered(&server.engine, 20_000).await;
    let res = client()
        .get(format!("{}/api/sync/todos?limit=50000", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(
        res.headers().get("content-length").is_none(),
        "the body is streamed"
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["changes"].as_array().unwrap().len(), 20_000);
    assert_eq!(body["has_more"], false);
}
both!(pull_streams_a_large_page);

async fn push_applies_creates_updates_and_deletes_and_reports_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let old = todo_id("old");
    add_todo(&server, &old, "to delete").await;
    let mut sse = Sse::connect(&server.base, "", None).await;
    let body = json!({
        "client_id": "tab-1",
        "changes": [
            {"id": "n1", "action": "create", "data": {"title": "new", "completed": false}, "client_version": 0},
            {"id": "n1", "action": "update", "data": {"completed": true}},
            {"id": old, "action": "delete"},
            {"id": "ghost", "action": "update", "data": {"title": "nobody"}},
        ]
    });
    let (status, res) = push_raw(&server.base, "todos", body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["applied"], json!(["n1", "n1", old]));
    assert_eq!(
        res["conflicts"],
        json!([{"id": "ghost", "action": "update", "reason": "not_found"}])
    );
    assert_eq!(
        res["version"].as_i64(),
        Some(server.engine.head().await.unwrap())
    );
    assert_eq!(todos(&server.db).await, [("n1".into(), "new".into(), true)]);

    let events = sse.take(3).await;
    assert!(events.iter().all(|e| e.data["client_id"] == "tab-1"));
    assert_eq!(events[2].data["action"], "delete");

    // Replaying the same create is harmless: no duplicate, no error.
    let again = json!({"changes": [{"id": "n1", "action": "create", "data": {"title": "new"}}]});
    let (status, _) = push_raw(&server.base, "todos", again.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(todos(&server.db).await.len(), 1);
}
both!(push_applies_creates_updates_and_deletes_and_reports_them);

async fn the_client_id_header_is_recorded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let res = client()
        .post(format!("{}/api/sync/todos", server.base))
        .header("x-rhtmx-client-id", "browser-9")
        .header("content-type", "application/json")
        .body(
            json!({"changes": [{"id": "h", "action": "create", "data": {"title": "t"}}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, page) = pull(&server.base, "todos", "").await;
    assert_eq!(page["changes"][0]["client_id"], "browser-9");
}
both!(the_client_id_header_is_recorded);

async fn client_js_is_served_with_an_etag_and_revalidates(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let res = client()
        .get(format!("{}/api/sync/client.js", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"'));
    assert!(res.text().await.unwrap().contains("rhtmx:"));
    let res = client()
        .get(format!("{}/api/sync/client.js", server.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = client()
        .get(format!("{}/api/sync/client.js", server.base))
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
both!(client_js_is_served_with_an_etag_and_revalidates);

async fn routes_live_under_a_custom_prefix(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.prefix("/sync/")).await;
    add_todo(&server, &todo_id("t"), "x").await;
    assert_eq!(
        get_status(&format!("{}/sync/todos", server.base)).await,
        200
    );
    assert_eq!(
        get_status(&format!("{}/api/sync/todos", server.base)).await,
        404
    );
}
both!(routes_live_under_a_custom_prefix);

async fn the_routes_merge_into_a_router_with_any_state(backend: Backend) {
    #[derive(Clone)]
    struct AppState {
        greeting: &'static str,
    }
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let app: axum::Router = axum::Router::<AppState>::new()
        .route(
            "/hello",
            axum::routing::get(
                |axum::extract::State(s): axum::extract::State<AppState>| async move { s.greeting },
            ),
        )
        .merge(server.engine.routes())
        .with_state(AppState { greeting: "hi" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hello = client().get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(hello.text().await.unwrap(), "hi");
    let (status, _) = pull(&base, "todos", "").await;
    assert_eq!(status, 200);
}
both!(the_routes_merge_into_a_router_with_any_state);
