//! A replayed write names the user it was made by (`X-Rhtmx-Principal`, sent by the
//! browser client); when the app tells the engine who is asking, the idempotency layer
//! refuses (403) a replay made by another user than the request's, so a queued write is
//! never applied as someone else, whatever the browser's cookies are.

mod common;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use common::*;
use rhtmx_sync::Principal;

/// The app's own notion of who is asking: here a header, in an app its session.
struct AsUser(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for AsUser {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let user = parts.headers.get("x-user");
        Ok(AsUser(user.map(|v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        })))
    }
}

impl From<AsUser> for Principal {
    fn from(who: AsUser) -> Principal {
        who.0.map_or_else(Principal::anonymous, Principal::user)
    }
}

async fn a_replay_made_by_another_user_is_refused_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.authenticate::<AsUser>()).await;
    let post = |key: &str, title: &str, made_by: Option<&str>, cookie_user: &str| {
        let mut req = client()
            .post(format!("{}/todos", server.base))
            .header("Idempotency-Key", key)
            .header("X-Rhtmx-Replay", "1")
            .header("x-user", cookie_user)
            .form(&[("title", title)]);
        if let Some(by) = made_by {
            req = req.header("X-Rhtmx-Principal", by);
        }
        req.send()
    };
    let refused = post("k1", "alice's", Some("alice"), "bob").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(todos(&server.db).await.is_empty());
    // Percent-encoded names (as the client sends them) compare by their text.
    let ok = post("k2", "alice's", Some("al%C3%AFce"), "alïce")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A client that names nobody is not checked.
    let plain = post("k3", "anyone's", None, "bob").await.unwrap();
    assert_eq!(plain.status(), 200);
    // The refused key was not claimed: alice's own replay goes through.
    let alice = post("k1", "alice's", Some("alice"), "alice").await.unwrap();
    assert_eq!(alice.status(), 200);
    assert_eq!(todos(&server.db).await.len(), 3);
}
both!(a_replay_made_by_another_user_is_refused_and_writes_nothing);

/// Who wrote a row's entries, as the log has them (everything written so far numbered
/// first: on PostgreSQL an entry waits for its version until it is committed).
async fn writers(server: &Server) -> Vec<Option<String>> {
    server.engine.head().await.unwrap();
    let rows: Vec<(Option<String>,)> = server
        .db
        .fetch_all(
            "SELECT client_id FROM _rhtmx_sync_log WHERE version IS NOT NULL ORDER BY version",
            args![],
        )
        .await;
    rows.into_iter().map(|(c,)| c).collect()
}

/// A request cannot claim another user's client id: the id is bound to the signed-in
/// user, so bob's edit made "as alice's client" is a concurrent edit of alice's (a
/// conflict), not her own later one — through the push API and through the app's own
/// handler (`SyncContext` behind the idempotency layer).
async fn a_forged_client_id_does_not_make_a_write_count_as_another_users(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.authenticate::<AsUser>()).await;
    let id = todo_id("shared");
    add_todo(&server, &id, "start").await;
    let base = server.engine.head().await.unwrap();
    let push = |user: &'static str, title: &'static str| {
        let body = serde_json::json!({
            "client_id": "alices-tab",
            "changes": [{"id": id, "action": "update", "data": {"title": title},
                         "client_version": base}],
        });
        client()
            .post(format!("{}/api/sync/todos", server.base))
            .header("x-user", user)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let alice: serde_json::Value = push("alice", "alice's")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(alice["conflicts"].as_array().unwrap().is_empty(), "{alice}");
    let bob: serde_json::Value = push("bob", "bob's").await.unwrap().json().await.unwrap();
    assert_eq!(bob["conflicts"].as_array().unwrap().len(), 1, "{bob}");
    let logged = writers(&server).await;
    let (a, b) = (logged[1].clone().unwrap(), logged[2].clone().unwrap());
    assert!(
        a.ends_with("~alices-tab") && b.ends_with("~alices-tab"),
        "{logged:?}"
    );
    assert_ne!(a, b, "bound to different users");
    // Sending the bound id back binds it again: it is never taken as is.
    let again = client()
        .post(format!("{}/api/sync/todos", server.base))
        .header("x-user", "bob")
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"client_id": a, "changes": [
                {"id": id, "action": "update", "data": {"title": "x"}}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let logged = writers(&server).await;
    assert_ne!(logged.last().unwrap().as_deref(), Some(a.as_str()));

    // The app's handler, through the idempotency layer: the same binding.
    let rename = |user: &'static str, key: &'static str| {
        client()
            .put(format!("{}/todos/{id}", server.base))
            .header("x-user", user)
            .header("X-Rhtmx-Client-Id", "alices-tab")
            .header("Idempotency-Key", key)
            .form(&[("title", user)])
            .send()
    };
    assert_eq!(rename("alice", "r1").await.unwrap().status(), 200);
    assert_eq!(rename("bob", "r2").await.unwrap().status(), 200);
    let logged = writers(&server).await;
    let n = logged.len();
    assert_eq!(logged[n - 2].as_deref(), Some(a.as_str()), "{logged:?}");
    assert_ne!(logged[n - 1].as_deref(), Some(a.as_str()), "{logged:?}");
    assert!(logged[n - 1].as_deref().unwrap().ends_with("~alices-tab"));
}
both!(a_forged_client_id_does_not_make_a_write_count_as_another_users);

/// A stored answer belongs to the user whose request made it: the same key from
/// another user (or nobody) is another request, never answered with the first one's
/// response (which would show that user's page).
async fn an_idempotency_key_of_another_user_is_another_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_with(&db, |b| b.authenticate::<AsUser>()).await;
    let post = |user: Option<&'static str>, title: &'static str| {
        let mut req = client()
            .post(format!("{}/todos", server.base))
            .header("Idempotency-Key", "shared-key")
            .form(&[("title", title)]);
        if let Some(user) = user {
            req = req.header("x-user", user);
        }
        req.send()
    };
    let first = post(Some("alice"), "alice's").await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    // Alice's own replay is answered from the store.
    let again = post(Some("alice"), "alice's").await.unwrap();
    assert!(again.headers().contains_key("idempotent-replayed"));
    // Bob's, and an anonymous one, with the same key run as requests of their own.
    for user in [Some("bob"), None] {
        let other = post(user, "alice's").await.unwrap();
        assert_eq!(other.status(), 200, "{user:?}");
        assert!(
            !other.headers().contains_key("idempotent-replayed"),
            "{user:?}"
        );
    }
    assert_eq!(todos(&server.db).await.len(), 3);
}
both!(an_idempotency_key_of_another_user_is_another_request);
