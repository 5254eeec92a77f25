//! Scopes on PostgreSQL: a principal pulls, streams and pushes only its own rows, and
//! a row moved to another owner by the app's SQL leaves its old owner's view.

mod common;
use common::pg;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use common::{client, serve, Sse};
use rhtmx_sync::{Principal, Scope, SyncEngine};
use serde_json::{json, Value};

/// The `x-user` header names who is asking (an app's session would).
struct Session(Principal);

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Session(match parts.headers.get("x-user") {
            Some(user) => Principal::user(String::from_utf8_lossy(user.as_bytes())),
            None => Principal::anonymous(),
        }))
    }
}

impl From<Session> for Principal {
    fn from(s: Session) -> Principal {
        s.0
    }
}

async fn pull_as(base: &str, user: &str) -> Value {
    let res = client()
        .get(format!("{base}/api/sync/notes?since=0"))
        .header("x-user", user)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<(String, String)> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_owner_reads_and_writes_only_its_rows() {
    let pool = pg::database().await;
    sqlx::query("CREATE TABLE notes (id text PRIMARY KEY, owner_id text, body text)")
        .execute(&pool)
        .await
        .unwrap();
    let engine = SyncEngine::builder(pool.clone())
        .entity_named("notes")
        .authenticate::<Session>()
        .scope("notes", Scope::owner("owner_id"))
        .writable("notes")
        .build()
        .await
        .unwrap();
    let (base, _task) = serve(engine.routes()).await;
    let events = client()
        .get(format!("{base}/api/sync/events"))
        .header("x-user", "bob");
    let mut bob_events = Sse::open(events).await;
    sqlx::raw_sql("INSERT INTO notes VALUES ('a1', 'alice', 'mine'), ('b1', 'bob', 'his');")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        ids(&pull_as(&base, "alice").await),
        [("a1".into(), "create".into())]
    );
    assert_eq!(
        ids(&pull_as(&base, "bob").await),
        [("b1".into(), "create".into())]
    );
    assert_eq!(bob_events.next().await.data["id"], "b1");

    // Bob may not write Alice's row: refused, nothing written.
    let res = client()
        .post(format!("{base}/api/sync/notes"))
        .header("x-user", "bob")
        .header("content-type", "application/json")
        .body(
            json!({"changes": [{"id": "a1", "action": "update",
                                  "data": {"body": "taken"}}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = 'a1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(body, "mine");

    // The app gives Alice's row to Bob: it leaves her view and enters his.
    sqlx::query("UPDATE notes SET owner_id = 'bob' WHERE id = 'a1'")
        .execute(&pool)
        .await
        .unwrap();
    let entered = bob_events.next().await;
    assert_eq!(entered.data["id"], "a1");
    assert_eq!(entered.data["data"]["body"], "mine");
    let alice = ids(&pull_as(&base, "alice").await);
    assert_eq!(
        alice.last().unwrap(),
        &("a1".to_owned(), "delete".to_owned())
    );
    let bob: Vec<String> = ids(&pull_as(&base, "bob").await)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(bob, ["b1", "a1"]);
}
