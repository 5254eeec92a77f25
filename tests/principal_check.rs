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

#[tokio::test]
async fn a_replay_made_by_another_user_is_refused_and_writes_nothing() {
    let (_dir, db) = temp_db();
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
    assert!(todos(&server.pool).await.is_empty());
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
    assert_eq!(todos(&server.pool).await.len(), 3);
}
