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

/// The table of parked changes (one row per change, by row, author and HLC); the same
/// text on both backends.
pub(crate) const DDL: &str = "CREATE TABLE IF NOT EXISTS _rhtmx_sync_parked (
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    author    TEXT NOT NULL,
    hlc       TEXT NOT NULL,
    change    TEXT NOT NULL,
    PRIMARY KEY (entity, entity_id, author, hlc)
)";

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

/// Keeps `change` of `author` for the row `key` (its key as text) of `entity`; keeping
/// the same change twice keeps it once.
pub(crate) async fn park(
    conn: &mut Conn,
    author: &str,
    key: &str,
    change: &AuthoredChange,
) -> Result<()> {
    let json = serde_json::to_string(change).expect("a change serializes");
    let sql = "INSERT INTO _rhtmx_sync_parked (entity, entity_id, author, hlc, change) \
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
    let hlc = change.hlc.to_string();
    each!(conn, c => {
        sqlx::query(sql)
            .bind(&change.entity)
            .bind(key)
            .bind(author)
            .bind(&hlc)
            .bind(&json)
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}

/// Takes out the changes parked for the rows `keys` of `entity`, as `(author, key,
/// change)` in HLC order. A stored change that no longer reads (from another version) is
/// dropped with a warning.
pub(crate) async fn take(
    conn: &mut Conn,
    entity: &str,
    keys: &[String],
) -> Result<Vec<(String, String, AuthoredChange)>> {
    let any = "SELECT count(*) FROM _rhtmx_sync_parked WHERE entity = $1";
    let count: i64 =
        each!(conn, c => sqlx::query_scalar(any).bind(entity).fetch_one(&mut **c).await?);
    if count == 0 {
        return Ok(Vec::new());
    }
    let sql = "DELETE FROM _rhtmx_sync_parked WHERE entity = $1 AND entity_id = $2 \
               RETURNING author, entity_id, hlc, change";
    let mut taken: Vec<(String, String, String, String)> = Vec::new();
    for key in keys {
        let rows: Vec<(String, String, String, String)> = each!(conn, c => {
            sqlx::query_as(sql).bind(entity).bind(key).fetch_all(&mut **c).await?
        });
        taken.extend(rows);
    }
    taken.sort_by(|a, b| a.2.cmp(&b.2));
    Ok(taken
        .into_iter()
        .filter_map(|(author, key, _, json)| match serde_json::from_str(&json) {
            Ok(change) => Some((author, key, change)),
            Err(error) => {
                tracing::warn!(%error, "a parked change could not be read: dropped");
                None
            }
        })
        .collect())
}

/// The rows with parked changes that exist here now (their latest log entry is not a
/// delete: created again by this database's own write since), by entity, as key text.
pub(crate) async fn due(conn: &mut Conn) -> Result<Vec<(String, Vec<String>)>> {
    // The latest entry is the greatest version on SQLite, the greatest `seq` on
    // PostgreSQL (`version` is stamped after commit).
    let sql = |order: &str| {
        format!(
            "SELECT DISTINCT _p.entity, _p.entity_id FROM _rhtmx_sync_parked AS _p \
             WHERE COALESCE((SELECT _l.action FROM _rhtmx_sync_log AS _l \
             WHERE _l.entity = _p.entity AND _l.entity_id = _p.entity_id \
             ORDER BY _l.{order} DESC LIMIT 1), 'delete') <> 'delete' \
             ORDER BY _p.entity, _p.entity_id"
        )
    };
    let rows: Vec<(String, String)> = match conn {
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(c) => sqlx::query_as(&sql("version")).fetch_all(&mut **c).await?,
        #[cfg(feature = "postgres")]
        Conn::Postgres(c) => sqlx::query_as(&sql("seq")).fetch_all(&mut **c).await?,
    };
    let mut due: Vec<(String, Vec<String>)> = Vec::new();
    for (entity, key) in rows {
        match due.last_mut() {
            Some((e, keys)) if *e == entity => keys.push(key),
            _ => due.push((entity, vec![key])),
        }
    }
    Ok(due)
}
