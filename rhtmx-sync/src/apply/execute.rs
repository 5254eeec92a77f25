//! Executing a merge decision through the table, inside the write transaction.
//!
//! The change's context — HLC, client, touched fields, conflict, digest — goes into a
//! context row keyed by the changed row; the capture triggers read it when they log
//! *that* row, so each log entry is written once, complete, by the triggers. Rows the
//! write touches as a side effect (cascades, the app's own triggers) are other rows:
//! they find no context and are logged as the app's own writes are. Only a decision
//! that leaves the table as it is but must still be recorded (a conflict the server
//! won, a tombstone, a field set to the value it had) is appended here, complete.

use serde_json::Value;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::Sqlite;

use crate::capture;
use crate::conflict::{Change, Conflict, Decision, Row, Write};
use crate::entity::{convert, quote_ident, Entity, Key, SqlValue};
use crate::error::{Error, Result};
use crate::log::{self, CONTEXT_TABLE, LOG_TABLE};

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Binds a value of any kind.
fn bind(q: Query<'_>, value: SqlValue) -> Query<'_> {
    match value {
        SqlValue::Null => q.bind(None::<i64>),
        SqlValue::Int(n) => q.bind(n),
        SqlValue::Real(f) => q.bind(f),
        SqlValue::Text(s) => q.bind(s),
        SqlValue::Blob(b) => q.bind(b),
    }
}

/// The row as the log encodes it, if it exists.
pub(super) async fn read_row(
    conn: &mut SqliteConnection,
    entity: &Entity,
    key: &Key,
) -> Result<Option<String>> {
    use sqlx::Row as _;
    let [value, alt] = key.lookup();
    let select = capture::row_select(entity);
    let row = bind(bind(sqlx::query(&select), value), alt)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.get::<String, _>(0)))
}

/// The scope of the row (see [`crate::scope`]) as the triggers record it: `None` if
/// the row does not exist or the entity has no scope column, `Some(None)` for a row
/// whose scope column is null.
pub(super) async fn read_scope(
    conn: &mut SqliteConnection,
    entity: &Entity,
    key: &Key,
) -> Result<Option<Option<String>>> {
    let Some(column) = entity.scope_column() else {
        return Ok(None);
    };
    let [value, alt] = key.lookup();
    let select = format!(
        "SELECT {} FROM {} AS _row WHERE _row.{} IN (?, ?)",
        capture::key_text("_row", column),
        quote_ident(&entity.table),
        quote_ident(&entity.id)
    );
    use sqlx::Row as _;
    let row = bind(bind(sqlx::query(&select), value), alt)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.get::<Option<String>, _>(0)))
}

/// Executes the decision and returns its conflict, carrying the version of the log
/// entry that records it.
#[allow(clippy::too_many_arguments)] // one change's parts, all needed here
pub(super) async fn write(
    conn: &mut SqliteConnection,
    entity: &Entity,
    key: &Key,
    change: &Change,
    decision: Decision,
    current: Option<&Row>,
    raw_row: Option<&str>,
    digest: Option<&str>,
) -> Result<Option<Conflict>> {
    let Decision {
        write,
        touched,
        mut conflict,
        ..
    } = decision;
    let must_record = write == Write::Tombstone || conflict.is_some() || !touched.is_empty();
    let changed = match &write {
        Write::Update(set) => Some(in_column_order(entity, set.keys().chain(&touched))),
        Write::Nothing if current.is_some() => Some(in_column_order(entity, touched.iter())),
        _ => None,
    };
    // Stored without its version, which readers add from the entry's own.
    let conflict_json = conflict
        .as_ref()
        .map(|c| serde_json::to_string(c).expect("a conflict serializes"));
    let name = &*entity.name;
    sqlx::query(&format!(
        "INSERT OR REPLACE INTO {CONTEXT_TABLE} \
         (entity, entity_id, hlc, client_id, changed, conflict, digest) \
         VALUES (?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(name)
    .bind(&key.text)
    .bind(change.hlc.to_string())
    .bind(change.client_id.as_deref())
    .bind(changed.as_deref())
    .bind(conflict_json.as_deref())
    .bind(digest)
    .execute(&mut *conn)
    .await?;
    let before = log::head(conn).await?;
    execute(conn, entity, key, &write).await?;
    let logged: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {LOG_TABLE} WHERE version > ? AND entity = ? AND entity_id = ? \
         ORDER BY version DESC LIMIT 1"
    ))
    .bind(before)
    .bind(name)
    .bind(&key.text)
    .fetch_optional(&mut *conn)
    .await?;
    let version = match logged {
        Some(version) => Some(version),
        None if must_record => {
            // No trigger fired, so the table holds the row as it was (or none).
            let exists = !matches!(write, Write::Delete | Write::Tombstone) && raw_row.is_some();
            let (action, data, changed) = match raw_row {
                Some(row) if exists => ("update", Some(row), changed),
                _ => ("delete", None, None),
            };
            // The row stays where it is: its scope before and after is the one it has.
            let scope = match exists {
                true => read_scope(conn, entity, key).await?.flatten(),
                false => None,
            };
            let version: i64 = sqlx::query_scalar(&format!(
                "INSERT INTO {LOG_TABLE} \
                 (entity, entity_id, action, data, changed, client_id, hlc, conflict, digest, \
                 scope_before, scope_after) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?10, ?10) RETURNING version"
            ))
            .bind(name)
            .bind(&key.text)
            .bind(action)
            .bind(data)
            .bind(changed)
            .bind(change.client_id.as_deref())
            .bind(change.hlc.to_string())
            .bind(conflict_json.as_deref())
            .bind(digest)
            .bind(scope)
            .fetch_one(&mut *conn)
            .await?;
            Some(version)
        }
        None => None,
    };
    sqlx::query(&format!(
        "DELETE FROM {CONTEXT_TABLE} WHERE entity = ? AND entity_id = ?"
    ))
    .bind(name)
    .bind(&key.text)
    .execute(&mut *conn)
    .await?;
    if let Some(c) = conflict.as_mut() {
        c.version = version;
    }
    Ok(conflict)
}

/// A JSON array of the fields named, in column order, each once.
fn in_column_order<'a>(entity: &Entity, fields: impl Iterator<Item = &'a String>) -> String {
    let fields: Vec<&String> = fields.collect();
    let ordered: Vec<&str> = entity
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|c| fields.iter().any(|f| f.as_str() == *c))
        .collect();
    serde_json::to_string(&ordered).expect("strings serialize")
}

/// Converts a decided value for its column; only a resolver (or a restored row) can
/// produce one that does not fit.
fn column_value(entity: &Entity, field: &str, value: &Value) -> Result<Option<(String, SqlValue)>> {
    let Some(column) = entity.column(field).filter(|c| !c.generated) else {
        // A restored row may hold a column that is no longer synced, and holds the
        // generated ones, which the database computes again.
        return Ok(None);
    };
    let value = convert(column, value).map_err(|e| {
        Error::Resolver(format!(
            "the value decided for `{}.{field}` does not fit the column: {e}",
            entity.name
        ))
    })?;
    Ok(Some((column.name.clone(), value)))
}

/// Executes the decided write through the table, so the triggers log it.
async fn execute(
    conn: &mut SqliteConnection,
    entity: &Entity,
    key: &Key,
    write: &Write,
) -> Result<()> {
    let table = quote_ident(&entity.table);
    let id_col = quote_ident(&entity.id);
    let (sql, binds) = match write {
        Write::Insert(row) | Write::Restore(row) => {
            let mut cols = vec![id_col];
            let mut binds = vec![key.value.clone()];
            for (field, value) in row {
                if let Some((name, value)) = column_value(entity, field, value)? {
                    cols.push(quote_ident(&name));
                    binds.push(value);
                }
            }
            let marks = vec!["?"; cols.len()].join(", ");
            let sql = format!("INSERT INTO {table} ({}) VALUES ({marks})", cols.join(", "));
            (sql, binds)
        }
        Write::Update(row) => {
            let mut sets = Vec::new();
            let mut binds = Vec::new();
            for (field, value) in row {
                if let Some((name, value)) = column_value(entity, field, value)? {
                    sets.push(format!("{} = ?", quote_ident(&name)));
                    binds.push(value);
                }
            }
            binds.extend(key.lookup());
            let sql = format!(
                "UPDATE {table} SET {} WHERE {id_col} IN (?, ?)",
                sets.join(", ")
            );
            (sql, binds)
        }
        Write::Delete => (
            format!("DELETE FROM {table} WHERE {id_col} IN (?, ?)"),
            key.lookup().to_vec(),
        ),
        _ => return Ok(()),
    };
    let mut query = sqlx::query(&sql);
    for value in binds {
        query = bind(query, value);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}
