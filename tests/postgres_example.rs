//! The todo example on PostgreSQL, two instances on one database: a form posted to one
//! refreshes the other's page live, an offline form replayed (with its Idempotency-Key)
//! to the other instance runs once, and a merged edit made through either is the same.

mod common;
use common::pg;

use common::{app, client, serve, Sse};
use serde_json::json;

/// One instance of the example, as `main.rs` assembles it.
async fn instance(url: &str) -> (String, rhtmx_sync::SyncEngine, tokio::task::JoinHandle<()>) {
    let pool = app::open(url).await.expect("open the database");
    let engine = app::engine(pool).await.expect("engine");
    let router = app::app(engine.clone())
        .merge(engine.routes())
        .layer(engine.idempotency_layer());
    let (base, task) = serve(router).await;
    (base, engine, task)
}

#[tokio::test]
async fn two_instances_of_the_example_share_one_database() {
    let url = pg::database_url().await;
    let (a, _ea, _ta) = instance(&url).await;
    let (b, eb, _tb) = instance(&url).await;
    let mut on_b = Sse::connect(&b, "", None).await;

    // A form posted to A: B's page hears of it at once.
    let id = "0191d6a4-0000-7000-8000-000000000001";
    let res = client()
        .post(format!("{a}/todos"))
        .form(&[("title", "milk"), ("id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event = on_b.next().await;
    assert_eq!(
        (&event.data["id"], &event.data["action"]),
        (&json!(id), &json!("create"))
    );
    let page = client().get(format!("{b}/todos")).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("milk"));

    // An offline rename replayed twice, to each instance in turn, runs once.
    let rename = |base: &str| {
        client()
            .put(format!("{base}/todos/{id}"))
            .header("idempotency-key", "replay-1")
            .header("x-rhtmx-base-version", "1")
            .form(&[("title", "oat milk")])
    };
    assert_eq!(rename(&a).send().await.unwrap().status(), 200);
    let head = eb.head().await.unwrap();
    let again = rename(&b).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(eb.head().await.unwrap(), head, "not run again");
    assert_eq!(on_b.next().await.data["data"]["title"], "oat milk");

    // A toggle through B (the app's own SQL) reaches A's stream too.
    let mut on_a = Sse::connect(&a, &format!("?last_event_id={head}"), None).await;
    let res = client()
        .post(format!("{b}/todos/{id}/toggle"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event = on_a.next().await;
    assert_eq!(event.data["data"]["completed"], true);
    assert_eq!(event.version(), head + 1);
}
