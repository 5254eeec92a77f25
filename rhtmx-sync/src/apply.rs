//! Applying a client's change through the merge, shared by the push API and
//! [`SyncEngine::write`](crate::SyncEngine::write).
//!
//! [`validate`] checks a change against the registered columns and the clock before the
//! database is touched. [`apply`] then runs inside the caller's write transaction: it
//! reads the row and its log, asks [`conflict::merge`](crate::conflict::merge) for a
//! decision, executes it through the table (so the capture triggers log it like any
//! write) and stamps the new log entry with the change's HLC, client and conflict. When
//! the decision writes nothing but has something to record (a conflict the server won,
//! a field both sides set alike, a delete of a row never seen), it appends that entry
//! itself: every resolved conflict is in the log, so it reaches every client in order
//! and survives reconnects.

use serde_json::Value;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::Sqlite;

use crate::capture;
use crate::conflict::{self, Change, Conflict, Decision, Entry, History, Row, Status, Write};
use crate::entity::{convert, normalize, quote_ident, Entity, Key, SqlValue};
use crate::error::{Error, Result};
use crate::hlc::{Hlc, HlcClock};
use crate::log::{self, EFFECTIVE_HLC, LOG_TABLE};
use crate::syncable::SyncStrategy;
use crate::wire::Action;

/// A change that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    /// The id as it travels on the wire.
    pub wire_id: Value,
    pub action: Action,
    key: Key,
    /// The fields without the id, as the log would encode them.
    fields: Row,
    hlc: Option<Hlc>,
    base: Option<i64>,
}

/// A change as a client sends it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub id: &'a Value,
    pub action: Action,
    pub data: Option<&'a serde_json::Map<String, Value>>,
    pub hlc: Option<Hlc>,
    pub base: Option<i64>,
}

/// Checks a change against the registered columns and its HLC against the clock's
/// maximum drift; touches nothing.
pub(crate) fn validate(entity: &Entity, clock: &HlcClock, c: Incoming<'_>) -> Result<Validated> {
    let key = entity.parse_id(c.id)?;
    let mut fields = Row::new();
    if let Some(data) = c.data {
        for (field, value) in data {
            let Some(column) = entity.column(field) else {
                return Err(Error::invalid(format!(
                    "unknown field `{}` for `{}`",
                    crate::error::quote(field),
                    entity.name
                )));
            };
            if column.name == entity.id {
                if entity.parse_id(value)?.text != key.text {
                    return Err(Error::invalid("`data.id` differs from the change's `id`"));
                }
                continue;
            }
            let value = convert(column, value)?;
            fields.insert(column.name.clone(), normalize(column, &value));
        }
    }
    match c.action {
        Action::Create => {
            let data = c
                .data
                .ok_or_else(|| Error::invalid("a create needs `data`"))?;
            if let Some(missing) = entity.columns.iter().find(|col| {
                col.name != entity.id
                    && col.not_null
                    && !col.has_default
                    && !data.contains_key(&col.name)
            }) {
                return Err(Error::invalid(format!(
                    "field `{}` is required",
                    missing.name
                )));
            }
        }
        Action::Update if fields.is_empty() => {
            return Err(Error::invalid(
                "an update needs at least one field in `data`",
            ));
        }
        _ => {}
    }
    if c.base.is_some_and(|b| b < 0) {
        return Err(Error::invalid("`client_version` must not be negative"));
    }
    if let Some(hlc) = c.hlc {
        clock.check(hlc)?;
    }
    Ok(Validated {
        wire_id: entity.wire_id(&key.text),
        action: c.action,
        key,
        fields,
        hlc: c.hlc,
        base: c.base,
    })
}

/// Starts a transaction holding the write lock from its first statement: reading before
/// writing in a deferred transaction can fail with `SQLITE_BUSY_SNAPSHOT` when another
/// writer commits in between.
pub(crate) async fn begin_write(
    pool: &sqlx::SqlitePool,
) -> Result<sqlx::Transaction<'static, Sqlite>> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE _rhtmx_sync_meta SET value = value WHERE key = 'schema_version'")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// What became of one change.
#[derive(Debug)]
pub(crate) struct Applied {
    pub status: Status,
    /// The conflict, with the version of the log entry that carries it.
    pub conflict: Option<Conflict>,
}

/// Merges and writes one validated change inside the caller's write transaction.
pub(crate) async fn apply(
    conn: &mut SqliteConnection,
    entity: &Entity,
    clock: &HlcClock,
    v: &Validated,
    client_id: Option<&str>,
) -> Result<Applied> {
    let hlc = match v.hlc {
        Some(hlc) => {
            clock.observe(hlc)?;
            hlc
        }
        None => clock.now(),
    };
    let change = Change {
        entity: entity.name.to_string(),
        id: v.wire_id.clone(),
        action: v.action,
        fields: v.fields.clone(),
        hlc,
        client_id: client_id.map(str::to_owned),
        base: v.base,
    };
    let [value, alt] = v.key.lookup();
    let select = capture::row_select(entity);
    let raw_row: Option<String> = bind(bind(sqlx::query_scalar(&select), value), alt)
        .fetch_optional(&mut *conn)
        .await?;
    let current = raw_row.as_deref().map(|s| parse_row(entity, s));
    let history = read_history(
        conn,
        entity,
        &v.key.text,
        &change,
        current.is_some(),
        v.hlc.is_some(),
    )
    .await?;
    let decision = conflict::merge(&change, current.as_ref(), &history, &entity.policy());
    let before = log::head(conn).await?;
    execute(conn, entity, v, &decision.write).await?;
    record(
        conn,
        entity,
        v,
        &change,
        decision,
        before,
        raw_row.as_deref(),
    )
    .await
}

/// Binds a value to a query of any output.
fn bind<'q, O>(
    q: sqlx::query::QueryScalar<'q, Sqlite, O, SqliteArguments<'q>>,
    value: SqlValue,
) -> sqlx::query::QueryScalar<'q, Sqlite, O, SqliteArguments<'q>> {
    match value {
        SqlValue::Null => q.bind(None::<i64>),
        SqlValue::Int(n) => q.bind(n),
        SqlValue::Real(f) => q.bind(f),
        SqlValue::Text(s) => q.bind(s),
        SqlValue::Blob(b) => q.bind(b),
    }
}

fn bind_query<'q>(
    q: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    value: SqlValue,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    match value {
        SqlValue::Null => q.bind(None::<i64>),
        SqlValue::Int(n) => q.bind(n),
        SqlValue::Real(f) => q.bind(f),
        SqlValue::Text(s) => q.bind(s),
        SqlValue::Blob(b) => q.bind(b),
    }
}

/// A row's JSON from the table or the log, without its key.
fn parse_row(entity: &Entity, json: &str) -> Row {
    let mut row: Row = serde_json::from_str(json).unwrap_or_default();
    row.remove(&entity.id);
    row
}

fn parse_hlc(s: &str) -> Hlc {
    s.parse().unwrap_or_else(|_| {
        // Only a hand-edited log can hold one; it sorts first rather than failing writes.
        tracing::warn!(hlc = s, "malformed HLC in the change log");
        Hlc::new(0, 0, 0)
    })
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    version: i64,
    action: String,
    data: Option<String>,
    changed: Option<String>,
    client_id: Option<String>,
    hlc: String,
}

/// Reads what [`History::from_log`] would extract from the row's whole log, with one
/// indexed query per part.
async fn read_history(
    conn: &mut SqliteConnection,
    entity: &Entity,
    id: &str,
    change: &Change,
    exists: bool,
    from_client: bool,
) -> Result<History> {
    let name = &*entity.name;
    let mut history = History::default();
    if let Some(floor) = History::floor(change) {
        let rows: Vec<EntryRow> = sqlx::query_as(&format!(
            "SELECT version, action, data, changed, client_id, {EFFECTIVE_HLC} AS hlc \
             FROM {LOG_TABLE} WHERE entity = ? AND entity_id = ? AND version > ? ORDER BY version"
        ))
        .bind(name)
        .bind(id)
        .bind(floor)
        .fetch_all(&mut *conn)
        .await?;
        history.since_base = rows
            .into_iter()
            .map(|r| Entry {
                version: r.version,
                action: Action::parse(&r.action).unwrap_or(Action::Update),
                changed: r
                    .changed
                    .as_deref()
                    .and_then(|c| serde_json::from_str(c).ok()),
                data: r.data.as_deref().map(|d| parse_row(entity, d)),
                hlc: parse_hlc(&r.hlc),
                client_id: r.client_id,
            })
            .collect();
    }
    if let (Action::Update, Some(base), SyncStrategy::Custom) =
        (change.action, change.base, entity.strategy)
    {
        let data: Option<Option<String>> = sqlx::query_scalar(&format!(
            "SELECT data FROM {LOG_TABLE} WHERE entity = ? AND entity_id = ? AND version <= ? \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(name)
        .bind(id)
        .bind(base)
        .fetch_optional(&mut *conn)
        .await?;
        history.base_row = data.flatten().map(|d| parse_row(entity, &d));
    }
    if !exists {
        let live: Option<(i64, Option<String>)> = sqlx::query_as(&format!(
            "SELECT version, data FROM {LOG_TABLE} WHERE entity = ? AND entity_id = ? \
             AND action != 'delete' ORDER BY version DESC LIMIT 1"
        ))
        .bind(name)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        // Every entry after the last live one is a delete: the first removed the row,
        // the latest is when it was last deleted.
        let deletes: (Option<i64>, Option<String>) = sqlx::query_as(&format!(
            "SELECT min(version), max({EFFECTIVE_HLC}) FROM {LOG_TABLE} \
             WHERE entity = ? AND entity_id = ? AND version > ?"
        ))
        .bind(name)
        .bind(id)
        .bind(live.as_ref().map_or(0, |l| l.0))
        .fetch_one(&mut *conn)
        .await?;
        if let (Some(version), Some(hlc)) = deletes {
            history.tombstone = Some(conflict::Tombstone {
                version,
                hlc: parse_hlc(&hlc),
                last_row: live.and_then(|l| l.1).map(|d| parse_row(entity, &d)),
            });
        }
    }
    // The server's own HLCs are new by construction; only a client's can be a replay.
    if from_client {
        history.replayed = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {LOG_TABLE} WHERE entity = ? AND entity_id = ? AND hlc = ?)"
        ))
        .bind(name)
        .bind(id)
        .bind(change.hlc.to_string())
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(history)
}

/// Converts a decided value for its column; only a resolver (or a restored row) can
/// produce one that does not fit.
fn column_value(entity: &Entity, field: &str, value: &Value) -> Result<Option<(String, SqlValue)>> {
    let Some(column) = entity.column(field) else {
        // A restored row may hold a column that is no longer synced.
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
    v: &Validated,
    write: &Write,
) -> Result<()> {
    let table = quote_ident(&entity.table);
    let id_col = quote_ident(&entity.id);
    let (sql, binds) = match write {
        Write::Insert(row) | Write::Restore(row) => {
            let mut cols = vec![id_col];
            let mut binds = vec![v.key.value.clone()];
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
            binds.extend(v.key.lookup());
            let sql = format!(
                "UPDATE {table} SET {} WHERE {id_col} IN (?, ?)",
                sets.join(", ")
            );
            (sql, binds)
        }
        Write::Delete => (
            format!("DELETE FROM {table} WHERE {id_col} IN (?, ?)"),
            v.key.lookup().to_vec(),
        ),
        _ => return Ok(()),
    };
    let mut query = sqlx::query(&sql);
    for value in binds {
        query = bind_query(query, value);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// Stamps the entry the write logged (or appends one) with the change's HLC, client,
/// touched fields and conflict.
async fn record(
    conn: &mut SqliteConnection,
    entity: &Entity,
    v: &Validated,
    change: &Change,
    decision: Decision,
    before: i64,
    raw_row: Option<&str>,
) -> Result<Applied> {
    let Decision {
        write,
        touched,
        mut conflict,
        status,
        ..
    } = decision;
    let mut entries: Vec<(i64, Option<String>)> = sqlx::query_as(&format!(
        "SELECT version, changed FROM {LOG_TABLE} WHERE version > ? ORDER BY version"
    ))
    .bind(before)
    .fetch_all(&mut *conn)
    .await?;
    let must_record = write == Write::Tombstone || conflict.is_some() || !touched.is_empty();
    if entries.is_empty() && must_record {
        // No trigger fired, so the table holds the row as it was (or none).
        let exists = match &write {
            Write::Delete | Write::Tombstone => false,
            _ => raw_row.is_some(),
        };
        let (action, data, changed) = match raw_row {
            Some(row) if exists => (
                "update",
                Some(row.to_owned()),
                Some(serde_json::to_string(&touched).expect("strings serialize")),
            ),
            _ => ("delete", None, None),
        };
        let version: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {LOG_TABLE} (entity, entity_id, action, data, changed) \
             VALUES (?, ?, ?, ?, ?) RETURNING version"
        ))
        .bind(&*entity.name)
        .bind(&v.key.text)
        .bind(action)
        .bind(data)
        .bind(changed.clone())
        .fetch_one(&mut *conn)
        .await?;
        entries.push((version, changed));
    }
    let last = entries.len().saturating_sub(1);
    for (i, (version, changed)) in entries.into_iter().enumerate() {
        let changed = changed.map(|c| with_touched(entity, &c, &touched));
        let conflict_json = if i == last {
            conflict.as_mut().map(|c| {
                c.version = Some(version);
                serde_json::to_string(c).expect("a conflict serializes")
            })
        } else {
            None
        };
        sqlx::query(&format!(
            "UPDATE {LOG_TABLE} SET hlc = ?, client_id = COALESCE(?, client_id), changed = ?, \
             conflict = ? WHERE version = ?"
        ))
        .bind(change.hlc.to_string())
        .bind(change.client_id.as_deref())
        .bind(changed)
        .bind(conflict_json)
        .bind(version)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Applied { status, conflict })
}

/// The `changed` array of an update entry with the touched fields added, in column
/// order: a field set to the value it already had is still this change's.
fn with_touched(entity: &Entity, changed: &str, touched: &[String]) -> String {
    let mut fields: Vec<String> = serde_json::from_str(changed).unwrap_or_default();
    if touched.iter().all(|t| fields.contains(t)) {
        return changed.to_owned();
    }
    fields.extend(touched.iter().cloned());
    let order: Vec<String> = entity
        .columns
        .iter()
        .map(|c| c.name.clone())
        .filter(|c| fields.contains(c))
        .collect();
    serde_json::to_string(&order).expect("strings serialize")
}
