//! Reading what the log says a table holds and what it holds, in one snapshot
//! (`crate::audit`'s check).

use futures_util::TryStreamExt;
use sqlx::{Connection, SqliteConnection};

use crate::audit::Sides;
use crate::capture::{key_text, row_json};
use crate::entity::{quote_ident, Entity};
use crate::error::Result;
use crate::log::LOG_TABLE;

/// Whether the log and the table agree exactly within the scope keys `keys`: every row
/// of the table has as its latest entry one that is not a delete, in scope, with
/// exactly the text the triggers would log for it now, and the log says no other row
/// exists. One statement (one snapshot), compared in SQL: nothing is read out. `false`
/// is not yet a difference ([`sides`] compares what the text may hide).
pub(crate) async fn in_step(
    conn: &mut SqliteConnection,
    entity: &Entity,
    keys: Option<&str>,
) -> Result<bool> {
    let scope = match entity.scope_column() {
        Some(column) => key_text("_row", column),
        None => "NULL".to_owned(),
    };
    let in_keys = "(?2 IS NULL OR _e.scope_after IN (SELECT value FROM json_each(?2)))";
    let sql = format!(
        "SELECT (SELECT count(*) FROM (SELECT max(version) AS v FROM {LOG_TABLE}                  WHERE entity = ?1 GROUP BY entity_id) AS _l                  JOIN {LOG_TABLE} AS _e ON _e.version = _l.v                  WHERE _e.action <> 'delete' AND {in_keys}),          count(*),          coalesce(sum((SELECT CASE WHEN _e.action <> 'delete' AND {in_keys} THEN _e.data END                        FROM {LOG_TABLE} AS _e WHERE _e.entity = ?1 AND _e.entity_id = {key}                        ORDER BY _e.version DESC LIMIT 1) IS {json}), 0)          FROM {table} AS _row WHERE _row.{id} IS NOT NULL          AND (?2 IS NULL OR {scope} IN (SELECT value FROM json_each(?2)))",
        key = key_text("_row", &entity.id),
        json = row_json(entity, "_row"),
        table = quote_ident(&entity.table),
        id = quote_ident(&entity.id),
    );
    let (logged, held, matching): (i64, i64, i64) = sqlx::query_as(&sql)
        .bind(&entity.table)
        .bind(keys)
        .fetch_one(&mut *conn)
        .await?;
    Ok(logged == held && held == matching)
}

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
