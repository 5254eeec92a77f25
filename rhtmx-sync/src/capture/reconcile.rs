//! Reconciling the log with a table: whatever the triggers did not see — rows that were
//! there before the engine was adopted, writes made while the triggers were removed for
//! a migration or a table was being recreated, columns added or dropped since a row was
//! last logged — is logged now, so that replaying the log from version 0 gives the
//! table again.
//!
//! Rows whose keys share one text form (a UUID stored once as text and once as bytes;
//! `1` and `'1'` in an untyped column) are one row to clients: only one of them — the
//! same one every time — is compared, so a restart never logs them again.
//!
//! Runs inside the transaction that installs the triggers (at build, and when the
//! broadcaster puts triggers back), so no write falls between the two. It costs a scan
//! of the table and of the log's `(entity, entity_id, version)` index; when the log is
//! already in step it writes nothing.

use sqlx::SqliteConnection;

use super::{key_text, row_json};
use crate::entity::{quote_ident, quote_literal, Entity};
use crate::error::Result;
use crate::log::LOG_TABLE;

/// Logs a delete for every row the log holds that the table does not, and the row for
/// every one whose latest entry is missing, a delete, or other data. Returns how many
/// entries were written.
pub(crate) async fn reconcile(conn: &mut SqliteConnection, entity: &Entity) -> Result<u64> {
    let table = quote_ident(&entity.table);
    let id = quote_ident(&entity.id);
    let ent = quote_literal(&entity.table);
    let key = key_text("_row", &entity.id);
    let json = row_json(entity, "_row");
    let scope = entity.scope_column();
    match scope {
        Some(column) => backfill(conn, entity, column).await?,
        // Entries written while unscoped carry no scope: a later scope fills them in.
        None => {
            sqlx::query("DELETE FROM _rhtmx_sync_meta WHERE key = ?")
                .bind(scope_key(entity))
                .execute(&mut *conn)
                .await?;
        }
    }
    // A scoped entity's entries carry the scope the row had and has (`crate::scope`).
    let (gone_cols, gone_scope) = match scope {
        Some(_) => (", scope_before", ", _entry.scope_after"),
        None => ("", ""),
    };
    let gone = sqlx::query(&format!(
        "INSERT INTO {LOG_TABLE} (entity, entity_id, action{gone_cols}) \
         SELECT {ent}, _last.entity_id, 'delete'{gone_scope} FROM \
         (SELECT entity_id, max(version) AS version FROM {LOG_TABLE} \
          WHERE entity = {ent} GROUP BY entity_id) AS _last \
         JOIN {LOG_TABLE} AS _entry ON _entry.version = _last.version \
         WHERE _entry.action != 'delete' \
         AND _last.entity_id NOT IN \
         (SELECT {key} FROM {table} AS _row WHERE _row.{id} IS NOT NULL) \
         ORDER BY _last.version"
    ))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // A field the logged row lacks is new; when it is null (a column added without a
    // default) the client's view does not change, so a runtime `ADD COLUMN` does not log
    // the whole table again.
    let new_field = "(_was.key IS NULL AND _now.type != 'null')";
    // A logged row differs when a synced field has another value (or is missing), or
    // when it holds a column the table no longer has. A column the table has but this
    // registration does not sync (another version of the app syncs it) is no reason:
    // a rolling deploy must not log every row again at each build.
    let differs = format!(
        "CASE WHEN json_valid(_entry.data) THEN \
         EXISTS (SELECT 1 FROM json_each(_cur.j) AS _now \
                 LEFT JOIN json_each(_entry.data) AS _was ON _was.key = _now.key \
                 WHERE {new_field} OR (_was.key IS NOT NULL \
                 AND (_now.type IS NOT _was.type OR _now.value IS NOT _was.value))) \
         OR EXISTS (SELECT 1 FROM json_each(_entry.data) AS _was \
                    WHERE _was.key NOT IN (SELECT name FROM pragma_table_xinfo({ent}))) \
         ELSE 1 END"
    );
    // An update lists the fields whose value differs (in column order), so a later merge
    // sees exactly what changed unseen, not every field.
    let changed = format!(
        "(SELECT json_group_array(_now.key) FROM json_each(_cur.j) AS _now \
          LEFT JOIN json_each(_entry.data) AS _was ON _was.key = _now.key \
          WHERE _now.key != {id} AND ({new_field} OR (_was.key IS NOT NULL \
          AND (_now.type IS NOT _was.type OR _now.value IS NOT _was.value))))",
        id = quote_literal(&entity.id)
    );
    // The same expressions the triggers use, so a row logged as it is compares equal.
    let (cur_cols, cur_scope, one_scope) = match scope {
        Some(column) => (
            ", scope_before, scope_after",
            ", CASE WHEN _entry.action IS NULL OR _entry.action = 'delete' THEN NULL \
             ELSE _entry.scope_after END, _cur.s",
            // A bare column beside `max()`: SQLite takes it from the row the maximum
            // came from, so data and scope are of one row, never one's data under
            // another's scope.
            format!(", {} AS s", key_text("_row", column)),
        ),
        None => ("", "", String::new()),
    };
    let one_s = if scope.is_some() { ", _one.s" } else { "" };
    // An entry that puts the row in another scope than its own (damaged, or written
    // by hand) would show it to that scope's readers: the row's scope is logged again,
    // as a move out of the wrong scope.
    let moved = if scope.is_some() {
        " OR _entry.scope_after IS NOT _cur.s"
    } else {
        ""
    };
    let unseen = sqlx::query(&format!(
        "INSERT INTO {LOG_TABLE} (entity, entity_id, action, data, changed{cur_cols}) \
         SELECT {ent}, _cur.k, \
         CASE WHEN _entry.action IS NULL OR _entry.action = 'delete' \
         THEN 'create' ELSE 'update' END, _cur.j, \
         CASE WHEN _entry.action IS NULL OR _entry.action = 'delete' THEN NULL \
         WHEN json_valid(_entry.data) THEN {changed} ELSE NULL END{cur_scope} \
         FROM (SELECT _one.k, _one.j{one_s}, \
               (SELECT version FROM {LOG_TABLE} WHERE entity = {ent} AND entity_id = _one.k \
                ORDER BY version DESC LIMIT 1) AS v \
               FROM (SELECT {key} AS k, max({json}) AS j{one_scope} FROM {table} AS _row \
                     WHERE _row.{id} IS NOT NULL GROUP BY 1) AS _one) AS _cur \
         LEFT JOIN {LOG_TABLE} AS _entry ON _entry.version = _cur.v \
         WHERE _entry.action IS NULL OR _entry.action = 'delete' \
         OR (_entry.data IS NOT _cur.j AND {differs}){moved} \
         ORDER BY _cur.k"
    ))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let written = gone + unseen;
    if written > 0 {
        tracing::info!(
            entity = %entity.name,
            deletes = gone,
            rows = unseen,
            "logged what the change-capture triggers had not seen"
        );
    }
    Ok(written)
}

/// The meta key recording which column a table's log entries carry the scope of.
fn scope_key(entity: &Entity) -> String {
    format!("scope:{}", entity.table)
}

/// When a table is first scoped by `column` (or by another column than before), its
/// entries do not carry that scope: each is given the scope its row has now (a deleted
/// row's entries, none: they reach nobody). Clients reset at the change anyway (their
/// cursors carry what they may read), so they pull this history from the start.
async fn backfill(conn: &mut SqliteConnection, entity: &Entity, column: &str) -> Result<()> {
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = ?")
            .bind(scope_key(entity))
            .fetch_optional(&mut *conn)
            .await?;
    if recorded.as_deref() == Some(column) {
        return Ok(());
    }
    let table = quote_ident(&entity.table);
    // The rows' scopes by key text, indexed: one lookup per entry, not a table scan.
    sqlx::query("DROP TABLE IF EXISTS temp._rhtmx_sync_scopes")
        .execute(&mut *conn)
        .await?;
    sqlx::query("CREATE TEMP TABLE _rhtmx_sync_scopes (k TEXT PRIMARY KEY, s TEXT) WITHOUT ROWID")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "INSERT OR IGNORE INTO temp._rhtmx_sync_scopes SELECT {}, {} FROM {table} AS _row \
         WHERE _row.{} IS NOT NULL",
        key_text("_row", &entity.id),
        key_text("_row", column),
        quote_ident(&entity.id),
    ))
    .execute(&mut *conn)
    .await?;
    let now = format!("(SELECT s FROM temp._rhtmx_sync_scopes WHERE k = {LOG_TABLE}.entity_id)");
    let filled = sqlx::query(&format!(
        "UPDATE {LOG_TABLE} SET \
         scope_before = CASE WHEN action = 'create' THEN NULL ELSE {now} END, \
         scope_after = CASE WHEN action = 'delete' THEN NULL ELSE {now} END \
         WHERE entity = ?"
    ))
    .bind(&entity.table)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("DROP TABLE temp._rhtmx_sync_scopes")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO _rhtmx_sync_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = ?2",
    )
    .bind(scope_key(entity))
    .bind(column)
    .execute(&mut *conn)
    .await?;
    tracing::info!(entity = %entity.name, column, entries = filled, "the log now carries the scope of each entry");
    Ok(())
}
