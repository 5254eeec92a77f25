//! Reading what the log says a table holds and what it holds, in one snapshot
//! (`crate::audit`'s check).

use futures_util::TryStreamExt;
use sqlx::{Connection, SqliteConnection};

use crate::audit::Sides;
use crate::capture::{key_text, row_json};
use crate::entity::{quote_ident, Entity};
use crate::error::Result;
use crate::log::LOG_TABLE;

/// Both sides of `entity` within the scope keys `keys` (a JSON array; `None`: every
/// row), in one read transaction: a write commits wholly before it or after it.
pub(crate) async fn sides(
    conn: &mut SqliteConnection,
    entity: &Entity,
    keys: Option<&str>,
) -> Result<Sides> {
    let mut sides = Sides::default();
    let name = &entity.table;
    let mut tx = conn.begin().await?;
    // Each row's latest entry: versions are in write order on SQLite.
    let logged = format!(
        "SELECT _e.entity_id, _e.data FROM (SELECT max(version) AS v FROM {LOG_TABLE} \
         WHERE entity = ?1 GROUP BY entity_id) AS _l JOIN {LOG_TABLE} AS _e ON _e.version = _l.v \
         WHERE _e.action <> 'delete' \
         AND (?2 IS NULL OR _e.scope_after IN (SELECT value FROM json_each(?2)))"
    );
    let mut rows = sqlx::query_as::<_, (String, Option<String>)>(&logged)
        .bind(name)
        .bind(keys)
        .fetch(&mut *tx);
    while let Some((key, data)) = rows.try_next().await? {
        sides.log.add(name, &key, data.as_deref());
    }
    drop(rows);
    // The row as the triggers would log it (the same expressions).
    let scope = match entity.scope_column() {
        Some(column) => key_text("_row", column),
        None => "NULL".to_owned(),
    };
    let held = format!(
        "SELECT {key}, {json} FROM {table} AS _row WHERE _row.{id} IS NOT NULL \
         AND (?1 IS NULL OR {scope} IN (SELECT value FROM json_each(?1)))",
        key = key_text("_row", &entity.id),
        json = row_json(entity, "_row"),
        table = quote_ident(&entity.table),
        id = quote_ident(&entity.id),
    );
    let mut rows = sqlx::query_as::<_, (String, Option<String>)>(&held)
        .bind(keys)
        .fetch(&mut *tx);
    while let Some((key, data)) = rows.try_next().await? {
        sides.table.add(name, &key, data.as_deref());
    }
    drop(rows);
    tx.commit().await?;
    Ok(sides)
}
