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
    let gone = sqlx::query(&format!(
        "INSERT INTO {LOG_TABLE} (entity, entity_id, action) \
         SELECT {ent}, _last.entity_id, 'delete' FROM \
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
    let unseen = sqlx::query(&format!(
        "INSERT INTO {LOG_TABLE} (entity, entity_id, action, data, changed) \
         SELECT {ent}, _cur.k, \
         CASE WHEN _entry.action IS NULL OR _entry.action = 'delete' \
         THEN 'create' ELSE 'update' END, _cur.j, \
         CASE WHEN _entry.action IS NULL OR _entry.action = 'delete' THEN NULL \
         WHEN json_valid(_entry.data) THEN {changed} ELSE NULL END \
         FROM (SELECT _one.k, _one.j, \
               (SELECT version FROM {LOG_TABLE} WHERE entity = {ent} AND entity_id = _one.k \
                ORDER BY version DESC LIMIT 1) AS v \
               FROM (SELECT {key} AS k, max({json}) AS j FROM {table} AS _row \
                     WHERE _row.{id} IS NOT NULL GROUP BY 1) AS _one) AS _cur \
         LEFT JOIN {LOG_TABLE} AS _entry ON _entry.version = _cur.v \
         WHERE _entry.action IS NULL OR _entry.action = 'delete' \
         OR (_entry.data IS NOT _cur.j AND {differs}) \
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
