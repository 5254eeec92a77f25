//! The push API and `engine.write` share one write path: every log entry is written
//! once, complete, for its own row — rows a change touches as a side effect are not
//! stamped with its HLC or client — and a push is bounded in size.

mod common;

use common::*;
use rhtmx_sync::{Hlc, SyncContext};
use serde_json::{json, Value};

/// `lists` with `items` that cascade on delete, and a `stats` row that an app trigger
/// bumps on every rename of a list.
async fn start_lists(db: &std::path::Path) -> Server {
    let pool = app::open_db(&url(db)).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE lists (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL);
         CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL,
                             list TEXT NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
                             label TEXT);
         CREATE TABLE stats (id TEXT PRIMARY KEY NOT NULL, renames INTEGER NOT NULL);
         INSERT INTO stats VALUES ('all', 0);
         CREATE TRIGGER app_count_renames AFTER UPDATE OF name ON lists BEGIN
             UPDATE stats SET renames = renames + 1 WHERE id = 'all';
         END;",
    )
    .execute(&pool)
    .await
    .unwrap();
    start_with(db, |b| {
        b.entity_named("lists")
            .entity_named("items")
            .entity_named("stats")
            .writable("lists")
            .writable("items")
            .writable("stats")
    })
    .await
}

/// Every log entry of `entity` as pulled.
async fn changes(server: &Server, entity: &str) -> Vec<Value> {
    let (_, page) = pull(&server.base, entity, "").await;
    page["changes"].as_array().unwrap().clone()
}

#[tokio::test]
async fn side_effects_are_not_stamped_with_the_change_that_caused_them() {
    let (_dir, db) = temp_db();
    let server = start_lists(&db).await;
    sqlx::raw_sql(
        "INSERT INTO lists VALUES ('l1', 'groceries');
         INSERT INTO items VALUES ('i1', 'l1', 'milk'), ('i2', 'l1', 'eggs');",
    )
    .execute(&server.pool)
    .await
    .unwrap();
    let at = Hlc::new(1_750_000_000_000, 7, 0xabc);
    let seen = server.engine.head().await.unwrap();
    // A rename through the push API: the app's trigger bumps `stats`.
    let (status, res) = push_raw(
        &server.base,
        "lists",
        json!({"client_id": "tab-1", "changes": [
            {"id": "l1", "action": "update", "data": {"name": "food"}, "hlc": at.to_string(), "client_version": seen}
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let list = changes(&server, "lists").await;
    let renamed = list.last().unwrap();
    assert_eq!(
        (&renamed["hlc"], &renamed["client_id"], &renamed["changed"]),
        (&json!(at.to_string()), &json!("tab-1"), &json!(["name"]))
    );
    let stats = changes(&server, "stats").await;
    let bumped = stats.last().unwrap();
    assert_eq!(bumped["changed"], json!(["renames"]), "{bumped}");
    assert!(bumped.get("client_id").is_none(), "{bumped}");
    assert_ne!(bumped["hlc"], json!(at.to_string()), "{bumped}");

    // A delete through `engine.write`: the cascaded items are the database's doing.
    let later = Hlc::new(1_750_000_000_500, 0, 0xabc);
    let ctx = SyncContext::new()
        .with_hlc(later)
        .with_client_id("tab-1")
        .with_base_version(server.engine.head().await.unwrap());
    let done = server
        .engine
        .write_to("lists", &ctx)
        .delete("l1")
        .await
        .unwrap();
    assert!(done.applied());
    let deleted = changes(&server, "lists").await;
    assert_eq!(deleted.last().unwrap()["hlc"], json!(later.to_string()));
    let items = changes(&server, "items").await;
    let cascaded: Vec<&Value> = items.iter().filter(|c| c["action"] == "delete").collect();
    assert_eq!(cascaded.len(), 2);
    for c in cascaded {
        assert!(c.get("client_id").is_none(), "{c}");
        assert_ne!(c["hlc"], json!(later.to_string()), "{c}");
    }
    // The context is gone once the change is written: a plain write after it is the
    // app's own.
    sqlx::query("UPDATE lists SET name = 'x' WHERE id = 'nope'")
        .execute(&server.pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM _rhtmx_sync_context")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_push_with_more_changes_than_the_cap_answers_413_and_changes_nothing() {
    let (_dir, db) = temp_db();
    let server = start_with(&db, |b| b.max_push_changes(100)).await;
    let r1 = todo_id("r1");
    add_todo(&server, &r1, "start").await;
    let head = server.engine.head().await.unwrap();
    let updates = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                let at = Hlc::new(1_750_000_000_000 + i as u64, 0, 0xa).to_string();
                json!({"id": r1, "action": "update", "data": {"title": format!("t{i}")},
                       "hlc": at, "client_version": head})
            })
            .collect()
    };
    let (status, res) = push_raw(
        &server.base,
        "todos",
        json!({"changes": updates(101)}).to_string(),
    )
    .await;
    assert_eq!(status, 413, "{res}");
    assert!(
        res["error"]
            .as_str()
            .unwrap()
            .contains("at most 100 changes"),
        "{res}"
    );
    assert_eq!(server.engine.head().await.unwrap(), head);
    // At the cap, every update of the one row is applied, in order.
    let (status, res) = push_raw(
        &server.base,
        "todos",
        json!({"client_id": "a", "changes": updates(100)}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["applied"].as_array().unwrap().len(), 100);
    assert_eq!(todos(&server.pool).await[0].1, "t99");
    assert_eq!(server.engine.head().await.unwrap(), head + 100);
}

/// A stored value serde cannot read (nesting deeper than 128, a number beyond f64) must
/// not make the merge see an empty row and overwrite the others with nothing.
#[tokio::test]
async fn a_row_the_merge_cannot_read_is_refused_and_left_as_it_is() {
    let (_dir, db) = temp_db();
    let pool = app::open_db(&url(&db)).await.unwrap();
    sqlx::query(
        "CREATE TABLE docs (id TEXT PRIMARY KEY NOT NULL, body JSON, size REAL, title TEXT)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let server = start_with(&db, |b| b.entity_named("docs").writable("docs")).await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    sqlx::query("INSERT INTO docs VALUES ('deep', ?, 1, 'a'), ('huge', '[]', 1e308 * 10, 'b')")
        .bind(&deep)
        .execute(&pool)
        .await
        .unwrap();
    for id in ["deep", "huge"] {
        let before: (String, String) =
            sqlx::query_as("SELECT id, json_object('b', body, 't', title) FROM docs WHERE id = ?")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        let (status, res) = push_raw(
            &server.base,
            "docs",
            json!({"changes": [{"id": id, "action": "update", "data": {"title": "new"},
                                "client_version": 0, "hlc": Hlc::new(1_750_000_000_000, 0, 1).to_string()}]})
            .to_string(),
        )
        .await;
        assert_eq!(status, 422, "{id}: {res}");
        assert!(
            res["error"].as_str().unwrap().contains("cannot read"),
            "{res}"
        );
        let after: (String, String) =
            sqlx::query_as("SELECT id, json_object('b', body, 't', title) FROM docs WHERE id = ?")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(before, after, "{id} was changed");
    }
    // Pulls still deliver such rows as SQLite wrote them (too deep for serde here too).
    let res = client()
        .get(format!("{}/api/sync/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.contains(&deep) && body.contains("\"huge\""));
}
