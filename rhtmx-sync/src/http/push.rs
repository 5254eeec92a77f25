//! `POST {prefix}/{entity}`: apply a client's changes in one transaction, all or nothing.
//!
//! Every change is validated against the registered columns before the database is
//! touched; the writes then go through the same triggers as the app's own, so the log
//! and the broadcast need no special path.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::Value;

use crate::entity::{convert, quote_ident, Entity, SqlValue};
use crate::error::{Error, Result};
use crate::log::{self, LOG_TABLE};
use crate::wire::{Action, Conflict, PushChange, PushRequest, PushResponse};
use crate::SyncEngine;

/// The header a client may identify itself with (same as the body's `client_id`).
pub(crate) const CLIENT_ID_HEADER: &str = "x-rhtmx-client-id";
const MAX_CLIENT_ID: usize = 128;

/// One validated change, ready to execute.
struct Planned {
    id: Value,
    action: Action,
    sql: String,
    binds: Vec<SqlValue>,
}

#[tracing::instrument(skip_all, fields(entity = %name, changes))]
pub(crate) async fn push(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PushResponse>> {
    let entity = engine.entity(&name)?;
    let limit = engine.inner.options.body_limit;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_too_large(&e) {
            Error::PayloadTooLarge { limit }
        } else {
            Error::MalformedJson("the request body could not be read".into())
        }
    })?;
    let request: PushRequest = serde_json::from_slice(&bytes).map_err(json_error)?;
    tracing::Span::current().record("changes", request.changes.len());
    let client_id = client_id(&headers, request.client_id)?;
    let planned = request
        .changes
        .iter()
        .enumerate()
        .map(|(i, c)| plan(entity, c).map_err(|e| Error::invalid(format!("changes[{i}]: {e}"))))
        .collect::<Result<Vec<_>>>()?;

    let mut tx = engine.inner.pool.begin().await?;
    // Take the write lock first: reading before writing in a deferred transaction can
    // fail with SQLITE_BUSY_SNAPSHOT when another writer commits in between.
    sqlx::query("UPDATE _rhtmx_sync_meta SET value = value WHERE key = 'schema_version'")
        .execute(&mut *tx)
        .await?;
    let before = log::head(&mut tx).await?;
    let (mut applied, mut conflicts) = (Vec::new(), Vec::new());
    for (i, p) in planned.into_iter().enumerate() {
        let mut query = sqlx::query(&p.sql);
        for value in p.binds {
            query = match value {
                SqlValue::Null => query.bind(None::<i64>),
                SqlValue::Int(n) => query.bind(n),
                SqlValue::Real(f) => query.bind(f),
                SqlValue::Text(s) => query.bind(s),
            };
        }
        let done = query
            .execute(&mut *tx)
            .await
            .map_err(|e| constraint(e, i))?;
        if p.action == Action::Update && done.rows_affected() == 0 {
            conflicts.push(Conflict {
                id: p.id,
                action: p.action,
                reason: "not_found",
            });
        } else {
            applied.push(p.id);
        }
    }
    if let Some(client_id) = &client_id {
        sqlx::query(&format!(
            "UPDATE {LOG_TABLE} SET client_id = ? WHERE version > ?"
        ))
        .bind(client_id)
        .bind(before)
        .execute(&mut *tx)
        .await?;
    }
    let version = log::head(&mut tx).await?;
    tx.commit().await?;
    engine.inner.hub.wake.notify_one();
    Ok(Json(PushResponse {
        version,
        conflicts,
        applied,
    }))
}

fn is_too_large(e: &axum::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Malformed JSON is 400; well-formed JSON of the wrong shape is 422.
fn json_error(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Error::invalid(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => Error::MalformedJson(e.to_string()),
    }
}

/// A constraint the schema enforces is the client's fault; anything else is ours.
fn constraint(e: sqlx::Error, index: usize) -> Error {
    if let sqlx::Error::Database(db) = &e {
        if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
            return Error::invalid(format!(
                "changes[{index}] violates a constraint of the table"
            ));
        }
    }
    Error::Database(e)
}

fn client_id(headers: &HeaderMap, body: Option<String>) -> Result<Option<String>> {
    let header = match headers.get(CLIENT_ID_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::invalid("the client id must be ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    let id = header.or(body);
    if id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > MAX_CLIENT_ID)
    {
        return Err(Error::invalid(format!(
            "the client id must be 1 to {MAX_CLIENT_ID} characters"
        )));
    }
    Ok(id)
}

/// Validates one change against the registered columns and builds its statement.
fn plan(entity: &Entity, change: &PushChange) -> Result<Planned> {
    let (id_text, id_value) = entity.parse_id(&change.id)?;
    let table = quote_ident(&entity.table);
    let id_col = quote_ident(&entity.id);
    let mut fields: Vec<(&str, SqlValue)> = Vec::new();
    if let Some(data) = &change.data {
        for (key, value) in data {
            let Some(column) = entity.column(key) else {
                return Err(Error::invalid(format!(
                    "unknown field `{key}` for `{}`",
                    entity.name
                )));
            };
            let value = convert(column, value)?;
            if column.name == entity.id {
                if value != id_value {
                    return Err(Error::invalid("`data.id` differs from the change's `id`"));
                }
                continue;
            }
            fields.push((&column.name, value));
        }
    }
    let (sql, mut binds) = match change.action {
        Action::Create => {
            let data = change
                .data
                .as_ref()
                .ok_or_else(|| Error::invalid("a create needs `data`"))?;
            if let Some(missing) = entity.columns.iter().find(|c| {
                c.name != entity.id && c.not_null && !c.has_default && !data.contains_key(&c.name)
            }) {
                return Err(Error::invalid(format!(
                    "field `{}` is required",
                    missing.name
                )));
            }
            let mut cols = vec![id_col.clone()];
            cols.extend(fields.iter().map(|(c, _)| quote_ident(c)));
            let marks = vec!["?"; cols.len()].join(", ");
            // Replaying a create must not fail or duplicate: it overwrites the fields it
            // carries.
            let on_conflict = if fields.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                let sets = fields
                    .iter()
                    .map(|(c, _)| format!("{q} = excluded.{q}", q = quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("DO UPDATE SET {sets}")
            };
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({marks}) ON CONFLICT ({id_col}) {on_conflict}",
                cols.join(", ")
            );
            let mut binds = vec![id_value.clone()];
            binds.extend(fields.into_iter().map(|(_, v)| v));
            (sql, binds)
        }
        Action::Update => {
            if fields.is_empty() {
                return Err(Error::invalid(
                    "an update needs at least one field in `data`",
                ));
            }
            let sets = fields
                .iter()
                .map(|(c, _)| format!("{} = ?", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("UPDATE {table} SET {sets} WHERE {id_col} = ?");
            (sql, fields.into_iter().map(|(_, v)| v).collect())
        }
        Action::Delete => (
            format!("DELETE FROM {table} WHERE {id_col} = ?"),
            Vec::new(),
        ),
    };
    if change.action != Action::Create {
        binds.push(id_value);
    }
    Ok(Planned {
        id: entity.wire_id(&id_text),
        action: change.action,
        sql,
        binds,
    })
}
