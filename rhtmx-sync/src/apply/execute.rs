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

use crate::backend::{Context, NewEntry, WriteTx};
use crate::conflict::{Change, Conflict, Decision, Row, Write};
use crate::entity::{convert, Entity, Key, SqlValue};
use crate::error::{Error, Result};

/// Executes the decision and returns its conflict, carrying the version of the log
/// entry that records it.
#[allow(clippy::too_many_arguments)] // one change's parts, all needed here
pub(super) async fn write(
    conn: &mut impl WriteTx,
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
    // Another engine's change refused on a missing row leaves no report (an update waits,
    // see `crate::parked`): as a `delete` entry it would read as that engine's delete and
    // move the row's tombstone later.
    let refused_remote = current.is_none()
        && write == Write::Nothing
        && change
            .client_id
            .as_deref()
            .is_some_and(|c| c.starts_with(crate::replication::AUTHOR_PREFIX));
    let must_record =
        write == Write::Tombstone || (conflict.is_some() && !refused_remote) || !touched.is_empty();
    let changed = match &write {
        Write::Update(set) => Some(in_column_order(entity, set.keys().chain(&touched))),
        Write::Nothing if current.is_some() => Some(in_column_order(entity, touched.iter())),
        _ => None,
    };
    // Stored without its version, which readers add from the entry's own.
    let conflict_json = conflict
        .as_ref()
        .map(|c| serde_json::to_string(c).expect("a conflict serializes"));
    let context = || Context {
        entity: &entity.name,
        id: &key.text,
        hlc: change.hlc.to_string(),
        client_id: change.client_id.as_deref(),
        changed: changed.as_deref(),
        conflict: conflict_json.as_deref(),
        digest,
    };
    conn.set_context(&context()).await?;
    let before = conn.head().await?;
    execute(conn, entity, key, &write).await?;
    conn.settle().await?;
    let logged = conn.latest_after(&entity.name, &key.text, before).await?;
    let version = match logged {
        Some(version) => Some(version),
        None if must_record => {
            // No trigger fired, so the table holds the row as it was (or none).
            let exists = !matches!(write, Write::Delete | Write::Tombstone) && raw_row.is_some();
            let (action, data, changed) = match raw_row {
                Some(row) if exists => ("update", Some(row), changed.as_deref()),
                _ => ("delete", None, None),
            };
            // The row stays where it is: its scope before and after is the one it has.
            let scope = match exists {
                true => conn.read_scope(entity, key).await?.flatten(),
                false => None,
            };
            let entry = NewEntry {
                context: Context {
                    changed,
                    ..context()
                },
                action,
                data,
                scope,
            };
            Some(conn.append(&entry).await?)
        }
        None => None,
    };
    conn.clear_context(&entity.name, &key.text).await?;
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
async fn execute(conn: &mut impl WriteTx, entity: &Entity, key: &Key, write: &Write) -> Result<()> {
    let columns = |row: &Row| -> Result<Vec<(String, SqlValue)>> {
        let mut columns = Vec::with_capacity(row.len());
        for (field, value) in row {
            if let Some(column) = column_value(entity, field, value)? {
                columns.push(column);
            }
        }
        Ok(columns)
    };
    match write {
        Write::Insert(row) | Write::Restore(row) => {
            let mut all = vec![(entity.id.clone(), key.value.clone())];
            all.extend(columns(row)?);
            conn.insert(entity, all).await
        }
        Write::Update(row) => conn.update(entity, key, columns(row)?).await,
        Write::Delete => conn.delete(entity, key).await,
        Write::Nothing | Write::Tombstone => Ok(()),
    }
}
