//! Rows the database removes or rewrites as a side effect — foreign-key actions, an
//! upsert's update, and on SQLite a REPLACE that deletes the row it collides with — are
//! logged: replaying the log from version 0 gives exactly the tables.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

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

async fn start_tags(db: &TestDb) -> (Server, Db) {
    let pool = db.connect().await;
    match &pool {
        Db::Sqlite(p) => sqlx::raw_sql(SCHEMA).execute(p).await.map(drop),
        Db::Postgres(p) => sqlx::raw_sql(SCHEMA).execute(p).await.map(drop),
    }
    .unwrap();
    let server = start_with(db, |b| b.entity_named("tags").entity_named("items")).await;
    (server, pool)
}

/// The table's rows as the log encodes them, by key text.
async fn table(pool: &Db, entity: &str) -> BTreeMap<String, Value> {
    let object = match pool.backend() {
        Backend::Sqlite => "json_object",
        Backend::Postgres => "json_build_object",
    };
    let sql = match entity {
        "tags" => format!(
            "SELECT id, CAST({object}('id', id, 'slug', slug, 'a', a, 'b', b, 'note', note) AS TEXT) \
             FROM tags"
        ),
        _ => format!(
            "SELECT CAST(id AS TEXT), \
             CAST({object}('id', id, 'tag', tag, 'backup', backup, 'code', code) AS TEXT) FROM items"
        ),
    };
    let rows: Vec<(String, String)> = pool.fetch_all(&sql, args![]).await;
    rows.into_iter()
        .map(|(id, json)| (id, serde_json::from_str(&json).unwrap()))
        .collect()
}

async fn assert_log_matches(pool: &Db, after: &str) {
    all_numbered(pool).await;
    for entity in ["tags", "items"] {
        assert_eq!(
            replayed(pool, entity).await,
            table(pool, entity).await,
            "{entity} after {after}"
        );
    }
}

/// Nothing was logged twice: no two deletes of a row without a create between.
async fn assert_no_double_delete(pool: &Db) {
    all_numbered(pool).await;
    let doubled: i64 = pool
        .scalar(
            "SELECT count(*) FROM _rhtmx_sync_log AS d WHERE d.action = 'delete' AND \
             d.version IS NOT NULL AND \
             (SELECT action FROM _rhtmx_sync_log AS p WHERE p.entity = d.entity \
              AND p.entity_id = d.entity_id AND p.version < d.version \
              ORDER BY p.version DESC LIMIT 1) = 'delete'",
            args![],
        )
        .await;
    assert_eq!(doubled, 0, "a removed row was logged twice");
}

async fn foreign_key_actions_and_upserts_are_logged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (_server, pool) = start_tags(&db).await;
    let steps = [
        "INSERT INTO tags (id, slug, a, b, note) VALUES ('row-1', 'a', 1, 1, 'n1'), \
         ('row-2', 'b', 2, 2, NULL), ('row-3', 'c', NULL, NULL, 'n3')",
        "INSERT INTO tags (id, slug) VALUES ('row-4', 'd'), ('row-5', 'e'), ('row-6', 'f')",
        // An upsert updates the row it collides with, on a UNIQUE column, on a
        // two-column UNIQUE, on the key; DO NOTHING changes nothing.
        "INSERT INTO tags (id, slug) VALUES ('row-7', 'a') \
         ON CONFLICT (slug) DO UPDATE SET note = 'upserted'",
        "INSERT INTO tags (id, slug, a, b) VALUES ('row-8', 'h', 2, 2) \
         ON CONFLICT (a, b) DO UPDATE SET slug = excluded.slug",
        "INSERT INTO tags (id, slug) VALUES ('row-3', 'c2') \
         ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, note = NULL",
        "INSERT INTO tags (id, slug) VALUES ('row-9', 'e') ON CONFLICT DO NOTHING",
        // Foreign-key actions: cascading updates and deletes, SET NULL.
        "INSERT INTO items (id, tag, backup, code) VALUES (1, 'row-1', 'row-4', 'x'), \
         (2, 'row-4', 'row-5', 'y'), (3, 'row-5', NULL, 'z')",
        "UPDATE tags SET id = 'row-1b' WHERE id = 'row-1'",
        "DELETE FROM tags WHERE id = 'row-4'",
        // An upsert whose update cascades.
        "INSERT INTO items (id, tag, code) VALUES (4, 'row-6', 'w')",
        "INSERT INTO tags (id, slug) VALUES ('row-10', 'f') \
         ON CONFLICT (slug) DO UPDATE SET id = 'row-6b'",
        // An upsert of a child, moving it to another parent.
        "INSERT INTO items (id, tag, code) VALUES (3, 'row-6b', 'z2') \
         ON CONFLICT (id) DO UPDATE SET tag = excluded.tag, code = excluded.code",
        // One statement deleting several parents, each cascading.
        "DELETE FROM tags WHERE id IN ('row-5', 'row-6b')",
    ];
    for step in steps {
        if let Err(e) = pool.try_execute(step, args![]).await {
            panic!("{step}: {e}");
        }
        assert_log_matches(&pool, step).await;
    }
    assert_no_double_delete(&pool).await;
}
both!(foreign_key_actions_and_upserts_are_logged);

// SQLite-only: REPLACE (`INSERT OR REPLACE`, `REPLACE INTO`, `UPDATE OR REPLACE`) does
// not exist on PostgreSQL, whose upserts and foreign-key actions are covered above.
#[tokio::test]
async fn every_row_removed_or_rewritten_as_a_side_effect_is_logged() {
    let db = TestDb::new(Backend::Sqlite).await;
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
        if let Err(e) = pool.try_execute(step, args![]).await {
            panic!("{step}: {e}");
        }
        assert_log_matches(&pool, step).await;
    }
    assert_no_double_delete(&pool).await;
}

/// With recursive triggers on, SQLite fires delete triggers for REPLACE itself: the
/// removed row must still be logged once, not twice.
// SQLite-only: a PRAGMA and REPLACE, neither of which PostgreSQL has.
#[tokio::test]
async fn a_replace_with_recursive_triggers_on_is_logged_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (_server, pool) = start_tags(&db).await;
    let mut conn = pool.sqlite().acquire().await.unwrap();
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
    let deletes: i64 = pool
        .scalar(
            "SELECT count(*) FROM _rhtmx_sync_log WHERE action = 'delete' AND entity_id = 'row-1'",
            args![],
        )
        .await;
    assert_eq!(deletes, 1);
}
