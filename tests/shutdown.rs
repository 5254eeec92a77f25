//! Graceful shutdown is not held up by open event streams: `SyncEngine::shutdown` ends
//! them, refuses new ones with 503, and leaves every other route working until the
//! server stops.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::sync::oneshot;

async fn graceful_shutdown_ends_open_event_streams(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = app::open(&db.url).await.unwrap();
    let engine = app::engine(pool).await.unwrap();
    let router = app::app(engine.clone()).merge(engine.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let closer = engine.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
                closer.shutdown();
            })
            .await
            .unwrap();
    });
    // Two open streams, one of them a stream that never receives an event.
    let mut live = Sse::connect(&base, "", None).await;
    let quiet = client()
        .get(format!("{base}/api/sync/events?entities=todos"))
        .send()
        .await
        .unwrap();
    assert_eq!(quiet.status(), 200);
    let res = client()
        .post(format!("{base}/todos"))
        .form(&[("id", todo_id("a").as_str()), ("title", "before shutdown")])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(live.next().await.data["id"], todo_id("a"));

    stop.send(()).unwrap();
    // Without `shutdown` the server waits for every stream to close, forever; the
    // bound here only keeps a failing run from hanging the suite.
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stopped with streams open")
        .unwrap();
    let mut rest = quiet.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), rest.next())
        .await
        .expect("the quiet stream ended")
    {
        chunk.expect("ended cleanly, not cut off");
    }
}
both!(graceful_shutdown_ends_open_event_streams);

async fn after_shutdown_new_streams_get_503_and_other_routes_still_work(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    server.engine.shutdown();
    server.engine.shutdown();
    let res = client()
        .get(format!("{}/api/sync/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "the server is shutting down");
    add_todo(&server, &todo_id("b"), "still written").await;
    let (status, page) = pull(&server.base, "todos", "").await;
    assert_eq!(
        (status, page["changes"][0]["id"].as_str()),
        (200, Some(todo_id("b").as_str()))
    );
}
both!(after_shutdown_new_streams_get_503_and_other_routes_still_work);
