//! Parked changes: another engine's update of a row this database does not have, kept
//! until a change creates the row.
//!
//! With three or more engines, changes reach each one in any order: an update engine B
//! made to a row engine A created can reach C before A's create does. Refusing it there
//! would lose it on C for good while A and B keep it. An update of a deleted row waits
//! too: a later re-creation of the row (by HLC, before the update) brings it back, and
//! the update applies to it as it did where the re-creation came first. When
//! [`SyncEngine::apply_authored`](crate::SyncEngine::apply_authored) writes a row, the
//! changes parked for it are taken out and applied again through the same merge, so the
//! order they arrived in no longer matters. A row this database creates itself (the
//! app's SQL, a push, `engine.write`) is found by its log entry at the next
//! [`SyncEngine::apply_parked`](crate::SyncEngine::apply_parked), which every
//! `apply_authored` runs first.

use crate::backend::Conn;
use crate::error::Result;
use crate::replication::AuthoredChange;

/// The table of parked changes (one row per change, by row, author, HLC and the
/// author's version: two writes of one row may share an HLC); the same text on both
/// backends.
pub(crate) const DDL: &str = "CREATE TABLE IF NOT EXISTS _rhtmx_sync_parked (
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    author    TEXT NOT NULL,
    hlc       TEXT NOT NULL,
    version   BIGINT NOT NULL DEFAULT 0,
    change    TEXT NOT NULL,
    waits     TEXT NOT NULL DEFAULT 'row',
    PRIMARY KEY (entity, entity_id, author, hlc, version)
)";

/// Gives a table made by the first version of [`DDL`] (keyed without `version`) the
/// current key, on SQLite: a table's key cannot be altered there, so it is copied.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_UPGRADE: &str = "
ALTER TABLE _rhtmx_sync_parked RENAME TO _rhtmx_sync_parked_v1;
CREATE TABLE _rhtmx_sync_parked (
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    author    TEXT NOT NULL,
    hlc       TEXT NOT NULL,
    version   BIGINT NOT NULL DEFAULT 0,
    change    TEXT NOT NULL,
    waits     TEXT NOT NULL DEFAULT 'row',
    PRIMARY KEY (entity, entity_id, author, hlc, version)
);
INSERT INTO _rhtmx_sync_parked (entity, entity_id, author, hlc, change)
    SELECT entity, entity_id, author, hlc, change FROM _rhtmx_sync_parked_v1;
DROP TABLE _rhtmx_sync_parked_v1;
";

/// [`SQLITE_UPGRADE`] on PostgreSQL; does nothing where the key is current.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_UPGRADE: &str = "
DO $$ BEGIN
    IF to_regclass('_rhtmx_sync_parked') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('_rhtmx_sync_parked')
        AND attname = 'version' AND NOT attisdropped
    ) THEN
        ALTER TABLE _rhtmx_sync_parked ADD COLUMN version bigint NOT NULL DEFAULT 0;
        ALTER TABLE _rhtmx_sync_parked DROP CONSTRAINT _rhtmx_sync_parked_pkey;
        ALTER TABLE _rhtmx_sync_parked
            ADD PRIMARY KEY (entity, entity_id, author, hlc, version);
    END IF;
END $$;
ALTER TABLE IF EXISTS _rhtmx_sync_parked ADD COLUMN IF NOT EXISTS waits text NOT NULL
    DEFAULT 'row';
";

/// Adds `waits` to a SQLite table made before it (where the column is missing).
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_ADD_WAITS: &str =
    "ALTER TABLE _rhtmx_sync_parked ADD COLUMN waits TEXT NOT NULL DEFAULT 'row'";

/// What a parked change waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waits {
    /// Its row: it updates a row this database does not have (yet, or any more).
    Row,
    /// Another change: a UNIQUE or foreign-key constraint refused it here (a child
    /// that came before its parent; a value another row holds until a later change
    /// frees it). Tried again whenever other changes were applied.
    Constraint,
}

impl Waits {
    fn as_str(self) -> &'static str {
        match self {
            Waits::Row => "row",
            Waits::Constraint => "constraint",
        }
    }
}

/// Runs `$body` with `$c` bound to the backend's connection.
macro_rules! each {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            Conn::Postgres($c) => $body,
        }
    };
}

/// Keeps `change` of `author` for the row `key` (its key as text) of `entity`, until
/// what it `waits` for; keeping the same change twice keeps it once.
pub(crate) async fn park(
    conn: &mut Conn,
    author: &str,
    key: &str,
    change: &AuthoredChange,
    waits: Waits,
) -> Result<()> {
    let json = serde_json::to_string(change).expect("a change serializes");
    let sql = "INSERT INTO _rhtmx_sync_parked (entity, entity_id, author, hlc, version, \
               change, waits) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
    let hlc = change.hlc.to_string();
    each!(conn, c => {
        sqlx::query(sql)
            .bind(&change.entity)
            .bind(key)
            .bind(author)
            .bind(&hlc)
            .bind(change.version)
            .bind(&json)
            .bind(waits.as_str())
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}

/// The rows with changes a constraint refused, by entity, as key text: due again once
/// other changes were applied.
pub(crate) async fn refused(conn: &mut Conn) -> Result<Vec<(String, Vec<String>)>> {
    let sql = "SELECT DISTINCT entity, entity_id FROM _rhtmx_sync_parked \
               WHERE waits = 'constraint' ORDER BY entity, entity_id";
    let rows: Vec<(String, String)> =
        each!(conn, c => sqlx::query_as(sql).fetch_all(&mut **c).await?);
    Ok(by_entity(rows))
}

/// `(entity, key)` pairs sorted by entity, grouped.
fn by_entity(rows: Vec<(String, String)>) -> Vec<(String, Vec<String>)> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (entity, key) in rows {
        match grouped.last_mut() {
            Some((e, keys)) if *e == entity => keys.push(key),
            _ => grouped.push((entity, vec![key])),
        }
    }
    grouped
}

/// Removes `change` of `author` for the row `key`, once it is applied.
pub(crate) async fn remove(
    conn: &mut Conn,
    author: &str,
    key: &str,
    change: &AuthoredChange,
) -> Result<()> {
    let sql = "DELETE FROM _rhtmx_sync_parked WHERE entity = $1 AND entity_id = $2 \
               AND author = $3 AND hlc = $4 AND version = $5";
    let hlc = change.hlc.to_string();
    each!(conn, c => {
        sqlx::query(sql)
            .bind(&change.entity)
            .bind(key)
            .bind(author)
            .bind(&hlc)
            .bind(change.version)
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}

/// The changes parked for the rows `keys` of `entity`, as `(author, key, change)` in
/// HLC order. They stay parked until [`remove`]d: one lost between being read and
/// being applied (a crash, a cancelled task) is read again. A stored change that no
/// longer reads (from another version) is dropped with a warning.
pub(crate) async fn take(
    conn: &mut Conn,
    entity: &str,
    keys: &[String],
) -> Result<Vec<(String, String, AuthoredChange)>> {
    let any = "SELECT 1 FROM _rhtmx_sync_parked WHERE entity = $1 LIMIT 1";
    let any: Option<i32> =
        each!(conn, c => sqlx::query_scalar(any).bind(entity).fetch_optional(&mut **c).await?);
    if any.is_none() {
        return Ok(Vec::new());
    }
    let sql = "SELECT author, entity_id, hlc, version, change FROM _rhtmx_sync_parked \
               WHERE entity = $1 AND entity_id = $2";
    let mut taken: Vec<(String, String, String, i64, String)> = Vec::new();
    for key in keys {
        let rows: Vec<(String, String, String, i64, String)> = each!(conn, c => {
            sqlx::query_as(sql).bind(entity).bind(key).fetch_all(&mut **c).await?
        });
        taken.extend(rows);
    }
    taken.sort_by(|a, b| (&a.2, a.3).cmp(&(&b.2, b.3)));
    let mut changes = Vec::with_capacity(taken.len());
    for (author, key, hlc, version, json) in taken {
        match serde_json::from_str(&json) {
            Ok(change) => changes.push((author, key, change)),
            Err(error) => {
                tracing::warn!(%error, "a parked change could not be read: dropped");
                let sql = "DELETE FROM _rhtmx_sync_parked WHERE entity = $1 AND entity_id = $2 \
                           AND author = $3 AND hlc = $4 AND version = $5";
                each!(conn, c => {
                    sqlx::query(sql)
                        .bind(entity)
                        .bind(&key)
                        .bind(&author)
                        .bind(&hlc)
                        .bind(version)
                        .execute(&mut **c)
                        .await?;
                });
            }
        }
    }
    Ok(changes)
}

/// The rows with parked changes that exist here now (their latest log entry is not a
/// delete: created again by this database's own write since), by entity, as key text.
pub(crate) async fn due(conn: &mut Conn) -> Result<Vec<(String, Vec<String>)>> {
    // The latest entry is the greatest version on SQLite, the greatest `seq` on
    // PostgreSQL (`version` is stamped after commit).
    let sql = |order: &str| {
        format!(
            "SELECT DISTINCT _p.entity, _p.entity_id FROM _rhtmx_sync_parked AS _p \
             WHERE _p.waits = 'row' AND COALESCE((SELECT _l.action FROM _rhtmx_sync_log AS _l \
             WHERE _l.entity = _p.entity AND _l.entity_id = _p.entity_id \
             ORDER BY _l.{order} DESC LIMIT 1), 'delete') <> 'delete' \
             ORDER BY _p.entity, _p.entity_id"
        )
    };
    let any: Option<i32> = each!(conn, c => {
        sqlx::query_scalar("SELECT 1 FROM _rhtmx_sync_parked LIMIT 1")
            .fetch_optional(&mut **c)
            .await?
    });
    if any.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String)> = match conn {
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(c) => sqlx::query_as(&sql("version")).fetch_all(&mut **c).await?,
        #[cfg(feature = "postgres")]
        Conn::Postgres(c) => sqlx::query_as(&sql("seq")).fetch_all(&mut **c).await?,
    };
    Ok(by_entity(rows))
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    fn change(field: &str, version: i64) -> AuthoredChange {
        serde_json::from_value(serde_json::json!({
            "entity": "todos", "id": "x", "action": "update", "data": {field: "v"},
            "hlc": "001750000000000-00001-00000000000000aa", "version": version,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_change_stays_parked_until_removed_and_one_hlc_keeps_two_changes() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query(DDL).execute(&pool).await.unwrap();
        let mut conn = Conn::Sqlite(pool.acquire().await.unwrap());
        // Two writes of one row that share an HLC, and the first again.
        for c in [
            change("title", 4),
            change("completed", 5),
            change("title", 4),
        ] {
            park(&mut conn, "aa", "x", &c, Waits::Row).await.unwrap();
        }
        let keys = ["x".to_owned()];
        let read = take(&mut conn, "todos", &keys).await.unwrap();
        assert_eq!(read.len(), 2, "{read:?}");
        // Read, not applied (a crash, a cancelled task): still there.
        let again = take(&mut conn, "todos", &keys).await.unwrap();
        assert_eq!(again.len(), 2);
        remove(&mut conn, "aa", "x", &read[0].2).await.unwrap();
        let left = take(&mut conn, "todos", &keys).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].2, read[1].2);
    }

    #[tokio::test]
    async fn a_table_keyed_without_version_is_upgraded_and_keeps_its_changes() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let v1 = DDL
            .replace("    version   BIGINT NOT NULL DEFAULT 0,\n", "")
            .replace("    waits     TEXT NOT NULL DEFAULT 'row',\n", "")
            .replace(", version)", ")");
        sqlx::query(&v1).execute(&pool).await.unwrap();
        let json = serde_json::to_string(&change("title", 4)).unwrap();
        sqlx::query("INSERT INTO _rhtmx_sync_parked VALUES ('todos', 'x', 'aa', 'h', ?)")
            .bind(&json)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(SQLITE_UPGRADE).execute(&pool).await.unwrap();
        let mut conn = Conn::Sqlite(pool.acquire().await.unwrap());
        let completed = change("completed", 5);
        park(&mut conn, "aa", "x", &completed, Waits::Row)
            .await
            .unwrap();
        let read = take(&mut conn, "todos", &["x".to_owned()]).await.unwrap();
        assert_eq!(read.len(), 2, "{read:?}");
    }
}
