//! Reading what the log says a table holds and what it holds, in one snapshot
//! (`crate::audit`'s check).

use futures_util::TryStreamExt;
use sqlx::PgConnection;

use super::capture::{key_text, kind_of, pin, row_json};
use crate::audit::Sides;
use crate::entity::{quote_ident, Entity};
use crate::error::Result;

/// Whether the log and the table agree exactly within the scope keys `keys` (as on
/// SQLite, `crate::backend::sqlite::audit::in_step`): one statement, compared in SQL.
pub(crate) async fn in_step(
    conn: &mut PgConnection,
    entity: &Entity,
    keys: Option<&str>,
) -> Result<bool> {
    let scope = match entity.scope_column() {
        Some(c) => key_text("_o", c, kind_of(entity, c)),
        None => "NULL".to_owned(),
    };
    let key = key_text("_o", &entity.id, kind_of(entity, &entity.id));
    let in_keys =
        "($2::jsonb IS NULL OR _e.scope_after IN (SELECT jsonb_array_elements_text($2::jsonb)))";
    let sql = format!(
        "SELECT (SELECT count(*) FROM                  (SELECT DISTINCT ON (entity_id) action, scope_after FROM _rhtmx_sync_log                   WHERE entity = $1 ORDER BY entity_id, seq DESC) AS _e                  WHERE _e.action <> 'delete' AND {in_keys}),          count(*),          count(*) FILTER (WHERE (SELECT CASE WHEN _e.action <> 'delete' AND {in_keys}                                   THEN _e.data END                                  FROM _rhtmx_sync_log AS _e                                  WHERE _e.entity = $1 AND _e.entity_id = _r.k                                  ORDER BY _e.seq DESC LIMIT 1) IS NOT DISTINCT FROM _r.j)          FROM (SELECT {key} AS k, {json} AS j, {scope} AS s                FROM (SELECT to_jsonb(_t) AS _o FROM {table} AS _t) AS _rows) AS _r          WHERE k IS NOT NULL          AND ($2::jsonb IS NULL OR s IN (SELECT jsonb_array_elements_text($2::jsonb)))",
        json = row_json(entity, "_o"),
        table = quote_ident(&entity.table),
    );
    let mut tx = sqlx::Connection::begin(conn).await?;
    // Values formatted as the triggers format them.
    pin(&mut tx).await?;
    let (logged, held, matching): (i64, i64, i64) = sqlx::query_as(&sql)
        .bind(&entity.table)
        .bind(keys)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(logged == held && held == matching)
}

/// Both sides of `entity` within the scope keys `keys` (a JSON array; `None`: every
/// row), in one `REPEATABLE READ` snapshot: the log's entries and the table's rows of
/// the same committed transactions. Entries not numbered yet count (the latest entry
/// is the latest in write order, `seq`, as for the audit).
pub(crate) async fn sides(
    conn: &mut PgConnection,
    entity: &Entity,
    keys: Option<&str>,
) -> Result<Sides> {
    let mut sides = Sides::default();
    let name = &entity.table;
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Values formatted as the triggers format them.
    pin(&mut tx).await?;
    let logged = "SELECT entity_id, data FROM \
         (SELECT DISTINCT ON (entity_id) entity_id, action, data, scope_after \
          FROM _rhtmx_sync_log WHERE entity = $1 ORDER BY entity_id, seq DESC) AS _l \
         WHERE action <> 'delete' \
         AND ($2::jsonb IS NULL OR scope_after IN (SELECT jsonb_array_elements_text($2::jsonb)))";
    let mut rows = sqlx::query_as::<_, (String, Option<String>)>(logged)
        .bind(name)
        .bind(keys)
        .fetch(&mut *tx);
    while let Some((key, data)) = rows.try_next().await? {
        sides.log.add(name, &key, data.as_deref());
    }
    drop(rows);
    let scope = match entity.scope_column() {
        Some(c) => key_text("_o", c, kind_of(entity, c)),
        None => "NULL".to_owned(),
    };
    let key = key_text("_o", &entity.id, kind_of(entity, &entity.id));
    let held = format!(
        "SELECT k, j FROM (SELECT {key} AS k, {json} AS j, {scope} AS s \
         FROM (SELECT to_jsonb(_t) AS _o FROM {table} AS _t) AS _rows) AS _r \
         WHERE k IS NOT NULL \
         AND ($1::jsonb IS NULL OR s IN (SELECT jsonb_array_elements_text($1::jsonb)))",
        json = row_json(entity, "_o"),
        table = quote_ident(&entity.table),
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
