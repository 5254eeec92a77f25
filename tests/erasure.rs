//! Erasure, on SQLite and on PostgreSQL: after `SyncEngine::erase`, no earlier value of
//! the row is anywhere in the database — log entries, conflict reports — while browsers
//! still converge, later pushes still merge and a retried push is not applied again.

mod common;

use common::*;
use rhtmx_sync::Error;
use serde_json::{json, Value};

/// Pushes `changes` as `client`, expecting 200.
async fn push(base: &str, client: &str, changes: Value) -> Value {
    let body = json!({"client_id": client, "changes": changes});
    let (status, res) = push_raw(base, "todos", body.to_string()).await;
    assert_eq!(status, 200, "{res}");
    res
}

/// A row with a history of secret values: pushed, renamed by the app, and a conflict
/// whose report carries a value that never reached the table. Returns the version a
/// client last saw it at.
async fn secret_history(server: &Server, id: &str) -> i64 {
    let res = push(
        &server.base,
        "a",
        json!([{"id": id, "action": "create", "hlc": hlc(0, 0xa),
                "data": {"title": "secret-1", "completed": false}}]),
    )
    .await;
    let base = res["version"].as_i64().unwrap();
    server
        .db
        .execute(
            "UPDATE todos SET title = 'secret-2' WHERE id = $1",
            args![id],
        )
        .await;
    let res = push(
        &server.base,
        "b",
        json!([{"id": id, "action": "update", "hlc": hlc(-1000, 0xb),
                "data": {"title": "secret-3"}, "client_version": base}]),
    )
    .await;
    assert_eq!(res["conflicts"].as_array().unwrap().len(), 1, "{res}");
    base
}

async fn an_erased_row_keeps_no_earlier_value(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let id = todo_id("gone");
    let kept = todo_id("kept");
    let base = secret_history(&server, &id).await;
    push(
        &server.base,
        "a",
        json!([{"id": kept, "action": "create", "hlc": hlc(0, 0xa),
                "data": {"title": "secret-other", "completed": false}}]),
    )
    .await;
    server
        .db
        .execute(
            "UPDATE todos SET title = 'now' WHERE id = $1",
            args![id.as_str()],
        )
        .await;
    all_numbered(&server.db).await;
    let stale = pull(&server.base, "todos", "?since=0").await.1["cursor"].clone();
    let dump = every_row(&server.db, &server.engine).await;
    for secret in ["secret-1", "secret-2", "secret-3"] {
        assert!(dump.contains(secret), "{secret} is there before");
    }

    // Named twice: still one row, and its present is kept.
    let erased = server
        .engine
        .erase("todos", [id.as_str(), id.as_str()])
        .await
        .unwrap();
    assert_eq!(erased.rows, 1, "{erased:?}");
    assert!(erased.entries >= 3, "{erased:?}");
    let dump = every_row(&server.db, &server.engine).await;
    for secret in ["secret-1", "secret-2", "secret-3"] {
        assert!(!dump.contains(secret), "{secret} is gone:\n{dump}");
    }
    assert!(dump.contains("secret-other"), "another row is untouched");
    // A fresh client, and one that had pulled before, both converge on the table.
    let (status, page) = pull(&server.base, "todos", "?since=0").await;
    assert_eq!(status, 200);
    let titles: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["secret-other", "now"]);
    let (status, page) = pull(
        &server.base,
        "todos",
        &format!("?since={}", stale.as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    // A push based before the erasure still merges field by field: the app's rename
    // came later than this client's edit, and still wins.
    let res = push(
        &server.base,
        "b",
        json!([{"id": id, "action": "update", "hlc": hlc(-500, 0xb),
                "data": {"title": "late", "completed": true}, "client_version": base}]),
    )
    .await;
    let fields = res["conflicts"][0]["fields"].as_object().unwrap().clone();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["title"], "{res}");
    assert_eq!(
        todos(&server.db).await.iter().find(|r| r.0 == id).unwrap(),
        &(id.clone(), "now".to_owned(), true)
    );
}
both!(an_erased_row_keeps_no_earlier_value);

async fn a_deleted_and_erased_row_leaves_only_its_tombstone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let id = todo_id("gone");
    secret_history(&server, &id).await;
    all_numbered(&server.db).await;
    let on_erased = pull(&server.base, "todos", "?since=0").await.1["cursor"].clone();
    add_todo(&server, &todo_id("other"), "other").await;
    all_numbered(&server.db).await;
    let had_it = pull(&server.base, "todos", "?since=0").await.1["cursor"].clone();
    server
        .db
        .execute("DELETE FROM todos WHERE id = $1", args![id.as_str()])
        .await;
    all_numbered(&server.db).await;
    server.engine.erase("todos", [id.as_str()]).await.unwrap();
    let dump = every_row(&server.db, &server.engine).await;
    assert!(!dump.contains("secret"), "{dump}");
    let entries: Vec<(String, Option<String>)> = server
        .db
        .fetch_all(
            "SELECT action, data FROM _rhtmx_sync_log ORDER BY version",
            args![],
        )
        .await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1], ("delete".to_owned(), None));
    // A cursor at an entry that is gone (erased) cannot be checked; it resumes as a
    // bare version would, rather than resyncing, and learns of the delete.
    let (status, page) = pull(
        &server.base,
        "todos",
        &format!("?since={}", on_erased.as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == json!(id) && c["action"] == "delete"),
        "{page}"
    );
    // A client that had the row learns of the delete.
    let (status, page) = pull(
        &server.base,
        "todos",
        &format!("?since={}", had_it.as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["changes"][0]["action"], "delete", "{page}");
    // A late create from before the delete still cannot bring it back.
    let res = push(
        &server.base,
        "c",
        json!([{"id": id, "action": "create", "hlc": hlc(-5000, 0xc),
                "data": {"title": "stale", "completed": false}}]),
    )
    .await;
    assert_eq!(res["applied"], json!([]), "{res}");
}
both!(a_deleted_and_erased_row_leaves_only_its_tombstone);

async fn an_erasure_of_what_cannot_be_erases_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    secret_history(&server, &todo_id("x")).await;
    all_numbered(&server.db).await;
    let before = every_row(&server.db, &server.engine).await;
    let err = server.engine.erase("nope", ["x"]).await.unwrap_err();
    assert!(matches!(err, Error::UnknownEntity(_)), "{err}");
    // One good id, one the key cannot hold: nothing is erased.
    let err = server
        .engine
        .erase("todos", [json!(todo_id("x")), json!(["not", "an", "id"])])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(every_row(&server.db, &server.engine).await, before);
    // An id with no history is no error, and changes nothing.
    let none = server
        .engine
        .erase("todos", [todo_id("never")])
        .await
        .unwrap();
    assert_eq!((none.rows, none.entries), (0, 0));
    assert_eq!(every_row(&server.db, &server.engine).await, before);
}
both!(an_erasure_of_what_cannot_be_erases_nothing);

async fn a_push_retried_after_an_erasure_is_not_applied_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start(&db).await;
    let id = todo_id("again");
    let base = secret_history(&server, &id).await;
    server
        .db
        .execute(
            "UPDATE todos SET title = 'now' WHERE id = $1",
            args![id.as_str()],
        )
        .await;
    all_numbered(&server.db).await;
    server.engine.erase("todos", [id.as_str()]).await.unwrap();
    // The browser never saw the answer to its push (a 502) and sends it again.
    let res = push(
        &server.base,
        "b",
        json!([{"id": id, "action": "update", "hlc": hlc(-1000, 0xb),
                "data": {"title": "secret-3"}, "client_version": base}]),
    )
    .await;
    assert_eq!(res["duplicates"], json!([id]), "{res}");
    let dump = every_row(&server.db, &server.engine).await;
    assert!(!dump.contains("secret"), "not logged again:\n{dump}");
}
both!(a_push_retried_after_an_erasure_is_not_applied_again);
