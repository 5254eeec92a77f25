//! Rows SQLite removes or rewrites as a side effect — a REPLACE that deletes the row it
//! collides with, foreign-key actions — are logged: replaying the log from version 0
//! gives exactly the tables.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;
use sqlx::SqlitePool;

const SCHEMA: &str = "
CREATE TABLE tags (
    id   TEXT PRIMARY KEY NOT NULL,
    slug TEXT UNIQUE,
    a    INTEGER,
    b    INTEGER,
    note TEXT,
    UNIQUE (a, b)
);
CREATE UNIQUE INDEX tags_note ON tags (note) WHERE note IS NOT NULL;
CREATE TABLE items (
    id     INTEGER PRIMARY KEY,
    tag    TEXT REFERENCES tags (id) ON DELETE CASCADE ON UPDATE CASCADE,
    backup TEXT REFERENCES tags (id) ON DELETE SET NULL,
    code   TEXT UNIQUE
);
";

async fn start_tags(db: &std::path::Path) -> (Server, SqlitePool) {
    let pool = app::open_db(&url(db)).await.unwrap();
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let server = start_with(db, |b| b.entity_named("tags").entity_named("items")).await;
    (server, pool)
}

/// The table's rows as the log encodes them, by key text.
async fn table(pool: &SqlitePool, entity: &str) -> BTreeMap<String, Value> {
    let sql = match entity {
        "tags" => "SELECT id, json_object('id', id, 'slug', slug, 'a', a, 'b', b, 'note', note) FROM tags",
        _ => "SELECT CAST(id AS TEXT), json_object('id', id, 'tag', tag, 'backup', backup, 'code', code) FROM items",
    };
    let rows: Vec<(String, String)> = sqlx::query_as(sql).fetch_all(pool).await.unwrap();
    rows.into_iter()
        .map(|(id, json)| (id, serde_json::from_str(&json).unwrap()))
        .collect()
}

async fn assert_log_matches(pool: &SqlitePool, after: &str) {
    for entity in ["tags", "items"] {
        assert_eq!(
            replayed(pool, entity).await,
            table(pool, entity).await,
            "{entity} after {after}"
        );
    }
}

#[tokio::test]
async fn every_row_removed_or_rewritten_as_a_side_effect_is_logged() {
    let (_dir, db) = temp_db();
    let (_server, pool) = start_tags(&db).await;
    let steps = [
        "INSERT INTO tags (id, slug, a, b, note) VALUES ('row-1', 'a', 1, 1, 'n1'), ('row-5', 'e', 5, 5, NULL)",
        // The input from the report: REPLACE deletes row-1, which collides on `slug`.
        "INSERT OR REPLACE INTO tags (id, slug) VALUES ('row-2', 'a')",
        // The same through the REPLACE keyword, on a two-column UNIQUE.
        "INSERT INTO tags (id, slug, a, b) VALUES ('row-3', 'c', 2, 2)",
        "REPLACE INTO tags (id, slug, a, b) VALUES ('row-4', 'd', 2, 2)",
        // One new row colliding with two others on different constraints at once.
        "INSERT INTO tags (id, slug, note) VALUES ('row-6', 'f', 'n6')",
        "INSERT OR REPLACE INTO tags (id, slug, note) VALUES ('row-7', 'e', 'n6')",
        // Colliding on the key itself: the row is replaced as a whole.
        "INSERT OR REPLACE INTO tags (id, slug) VALUES ('row-7', 'g')",
        // UPDATE OR REPLACE on a UNIQUE column (on the key: see `items` below; SQLite
        // refuses it for a parent table with foreign keys on).
        "INSERT INTO tags (id, slug) VALUES ('row-8', 'h'), ('row-9', 'i'), ('row-10', 'j')",
        "UPDATE OR REPLACE tags SET slug = 'h' WHERE id = 'row-9'",
        // An upsert and an OR IGNORE remove nothing.
        "INSERT INTO tags (id, slug) VALUES ('row-11', 'j') ON CONFLICT (slug) DO UPDATE SET note = 'upserted'",
        "INSERT OR IGNORE INTO tags (id, slug) VALUES ('row-12', 'g')",
        "DELETE FROM tags WHERE id = 'row-7'",
        "INSERT INTO tags (id, slug) VALUES ('row-13', 'k')",
        // Foreign-key actions: cascading deletes and updates, SET NULL.
        "INSERT INTO items (id, tag, backup, code) VALUES (1, 'row-2', 'row-4', 'x'), (2, 'row-4', 'row-9', 'y')",
        "UPDATE tags SET id = 'row-2b' WHERE id = 'row-2'",
        "DELETE FROM tags WHERE id = 'row-4'",
        // A REPLACE whose victim cascades.
        "INSERT INTO items (id, tag, code) VALUES (3, 'row-10', 'z')",
        "INSERT OR REPLACE INTO tags (id, slug) VALUES ('row-14', 'h')",
        // Replacing a child on its own UNIQUE, and UPDATE OR REPLACE on the key.
        "INSERT OR REPLACE INTO items (id, tag, code) VALUES (4, 'row-13', 'x')",
        "INSERT INTO items (id, code) VALUES (5, 'v'), (6, 'w')",
        "UPDATE OR REPLACE items SET id = 6, code = 'x' WHERE id = 5",
    ];
    for step in steps {
        if let Err(e) = sqlx::query(step).execute(&pool).await {
            panic!("{step}: {e}");
        }
        assert_log_matches(&pool, step).await;
    }
    // Nothing was logged twice: no two deletes of a row without a create between.
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM _rhtmx_sync_log AS d WHERE d.action = 'delete' AND \
         (SELECT action FROM _rhtmx_sync_log AS p WHERE p.entity = d.entity \
          AND p.entity_id = d.entity_id AND p.version < d.version \
          ORDER BY p.version DESC LIMIT 1) = 'delete'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0, "a removed row was logged twice");
}

/// With recursive triggers on, SQLite fires delete triggers for REPLACE itself: the
/// removed row must still be logged once, not twice.
#[tokio::test]
async fn a_replace_with_recursive_triggers_on_is_logged_once() {
    let (_dir, db) = temp_db();
    let (_server, pool) = start_tags(&db).await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("PRAGMA recursive_triggers = ON")
        .execute(&mut *conn)
        .await
        .unwrap();
    for step in [
        "INSERT INTO tags (id, slug) VALUES ('row-1', 'a')",
        "INSERT OR REPLACE INTO tags (id, slug) VALUES ('row-2', 'a')",
    ] {
        sqlx::query(step).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    assert_log_matches(&pool, "recursive REPLACE").await;
    let deletes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM _rhtmx_sync_log WHERE action = 'delete' AND entity_id = 'row-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(deletes, 1);
}
