//! The push API and `engine.write` share one write path: every log entry is written
//! once, complete, for its own row — rows a change touches as a side effect are not
//! stamped with its HLC or client — and a push is bounded in size.

mod common;

use common::*;
use rhtmx_sync::{Hlc, SyncContext};
use serde_json::{json, Value};

/// `lists` with `items` that cascade on delete, and a `stats` row that an app trigger
/// bumps on every rename of a list.
async fn start_lists(db: &TestDb) -> Server {
    let pool = db.connect().await;
    let tables = "CREATE TABLE lists (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL);
         CREATE TABLE items (id TEXT PRIMARY KEY NOT NULL,
                             list TEXT NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
                             label TEXT);
         CREATE TABLE stats (id TEXT PRIMARY KEY NOT NULL, renames INTEGER NOT NULL);
         INSERT INTO stats VALUES ('all', 0);";
    let trigger = match db.backend {
        Backend::Sqlite => {
            "CREATE TRIGGER app_count_renames AFTER UPDATE OF name ON lists BEGIN
                 UPDATE stats SET renames = renames + 1 WHERE id = 'all';
             END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION app_count_renames() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 UPDATE stats SET renames = renames + 1 WHERE id = 'all';
                 RETURN NULL;
             END $$;
             CREATE TRIGGER app_count_renames AFTER UPDATE OF name ON lists
                 FOR EACH ROW EXECUTE FUNCTION app_count_renames();"
        }
    };
    pool.execute_script(&format!("{tables}\n{trigger}")).await;
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

async fn side_effects_are_not_stamped_with_the_change_that_caused_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = start_lists(&db).await;
    server
        .db
        .execute_script(
            "INSERT INTO lists VALUES ('l1', 'groceries');
         INSERT INTO items VALUES ('i1', 'l1', 'milk'), ('i2', 'l1', 'eggs');",
        )
        .await;
    // A moment after the list was written (within the clock tolerance): an HLC below
    // the row's would be moved after it (causal stamping).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let at = Hlc::new(now + 2_000, 7, 0xabc);
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
    let later = Hlc::new(now + 2_500, 0, 0xabc);
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
    server
        .db
        .execute("UPDATE lists SET name = 'x' WHERE id = 'nope'", args![])
        .await;
    let left: i64 = server
        .db
        .scalar("SELECT count(*) FROM _rhtmx_sync_context", args![])
        .await;
    assert_eq!(left, 0);
}
both!(side_effects_are_not_stamped_with_the_change_that_caused_them);

async fn a_push_with_more_changes_than_the_cap_answers_413_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
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
    assert_eq!(todos(&server.db).await[0].1, "t99");
    assert_eq!(server.engine.head().await.unwrap(), head + 100);
}
both!(a_push_with_more_changes_than_the_cap_answers_413_and_changes_nothing);

/// A stored value serde cannot read (nesting deeper than 128, a number beyond f64) must
/// not make the merge see an empty row and overwrite the others with nothing.
async fn a_row_the_merge_cannot_read_is_refused_and_left_as_it_is(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pool = db.connect().await;
    // The number beyond f64: an infinite REAL on SQLite; on PostgreSQL (whose
    // `double precision` infinity reads as the string "Infinity") a JSON number.
    let (table, huge, row) = match backend {
        Backend::Sqlite => (
            "CREATE TABLE docs (id TEXT PRIMARY KEY NOT NULL, body JSON, size REAL, title TEXT)",
            "('huge', '[]', 1e308 * 10, 'b')",
            "json_object('b', body, 't', title)",
        ),
        Backend::Postgres => (
            "CREATE TABLE docs (id TEXT PRIMARY KEY NOT NULL, body JSONB, \
             size DOUBLE PRECISION, title TEXT)",
            "('huge', '[1e400]', 1, 'b')",
            "json_build_object('b', body, 't', title)::text",
        ),
    };
    pool.execute(table, args![]).await;
    let server = start_with(&db, |b| b.entity_named("docs").writable("docs")).await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let body = match backend {
        Backend::Sqlite => "$1",
        Backend::Postgres => "$1::jsonb",
    };
    pool.execute(
        &format!("INSERT INTO docs VALUES ('deep', {body}, 1, 'a'), {huge}"),
        args![&deep],
    )
    .await;
    let read = format!("SELECT id, {row} FROM docs WHERE id = $1");
    for id in ["deep", "huge"] {
        let before: (String, String) = pool.fetch_one(&read, args![id]).await;
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
        let after: (String, String) = pool.fetch_one(&read, args![id]).await;
        assert_eq!(before, after, "{id} was changed");
    }
    // Pulls still deliver such rows as the database wrote them (too deep for serde here
    // too).
    let res = client()
        .get(format!("{}/api/sync/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.contains(&deep) && body.contains("\"huge\""));
}
both!(a_row_the_merge_cannot_read_is_refused_and_left_as_it_is);
