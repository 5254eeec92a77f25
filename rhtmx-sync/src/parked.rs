//! Parked changes: another engine's update of a row this database does not have, kept
//! until a change creates the row.
//!
//! With three or more engines, changes reach each one in any order: an update engine B
//! made to a row engine A created can reach C before A's create does. Refusing it there
//! would lose it on C for good while A and B keep it. An update of a deleted row waits
//! too: a later re-creation of the row (by HLC, before the update) brings it back, and
//! the update applies to it as it did where the re-creation came first. When
//! [`SyncEngine::apply_authored`](crate::SyncEngine::apply_authored) creates a row, the
//! changes parked for it are taken out and applied again through the same merge, so the
//! order they arrived in no longer matters.

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
