//! `GET {prefix}/{entity}/digest?at=` and `GET {prefix}/{entity}/rows?at=&buckets=`:
//! the principal's state of an entity at a cursor, as a digest and as the rows of some
//! buckets (see `crate::integrity`).
//!
//! The state is read as a first pull reads it (`Select::Latest` from 0 up to the
//! cursor, filtered by the principal's scope in SQL), a page per pooled connection: the
//! work grows with what the principal may read, not with the table, and the rows of
//! every bucket are streamed, never held. When compaction has passed the cursor, the
//! state there is no longer in the log (a row's entry at it may be superseded and gone):
//! the digest is `null` and the rows `complete: false` — the client checks again at a
//! later cursor rather than resyncing.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::{ReadLog, Select};
use crate::cursor::{self, Cursor};
use crate::entity::Entity;
use crate::error::{quote, Error, Result};
use crate::integrity::{self, Digest, BUCKETS};
use crate::log::LogRow;
use crate::principal::Asking;
use crate::scope::{Read, View};
use crate::SyncEngine;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DigestQuery {
    /// The cursor whose state to digest.
    at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RowsQuery {
    at: String,
    /// Comma-separated bucket numbers, each below [`BUCKETS`].
    buckets: String,
}

/// Entries read per pooled connection while walking the state.
const PAGE: i64 = 1000;

/// Rows are flushed to the socket in chunks of about this many bytes.
const CHUNK: usize = 16 * 1024;

/// A state request whose cursor checked out.
struct At {
    entity: Arc<Entity>,
    read: Read,
    keys: Option<String>,
    version: i64,
    /// The cursor to answer with.
    token: String,
}

/// The principal's state of `name` at the cursor `at`, checked; or the reset to answer.
async fn check(
    engine: &SyncEngine,
    name: &str,
    access: &crate::scope::Access,
    at: &str,
) -> Result<std::result::Result<At, Response>> {
    let entity = engine.entity(name)?.clone();
    let read = access.read(&entity.name).clone();
    if read == Read::Nothing {
        return Err(Error::NotReadable(name.to_owned()));
    }
    let at = Cursor::parse(at.trim()).ok_or_else(|| {
        Error::BadQuery(format!(
            "`at` must be a cursor (a version, or `version.tag`), not `{}`",
            quote(at)
        ))
    })?;
    let log_id = &engine.inner.log_id;
    let suffix = access.suffix();
    let mut conn = engine.inner.pool.acquire().await?;
    let head = conn.settled_head().await?;
    let fingerprint = access.fingerprint.as_deref();
    if let Some(why) = cursor::check(&mut conn, log_id, &at, head, fingerprint).await? {
        let head_id = cursor::token(&mut conn, log_id, head).await? + suffix;
        return Ok(Err(super::pull::reset(&head_id, head, why)));
    }
    let token = match at.version {
        0 => "0".to_owned(),
        v => {
            let purges = conn.purges().await?;
            cursor::token_resuming(&mut conn, log_id, v, purges).await? + suffix
        }
    };
    let keys = read.keys_json();
    Ok(Ok(At {
        entity,
        read,
        keys,
        version: at.version,
        token,
    }))
}

/// The next page of the state at `at` after version `after`, on a pooled connection of
/// its own; `None` when compaction has passed the cursor (the state is no longer there).
async fn page(engine: &SyncEngine, at: &At, after: i64) -> Result<Option<Vec<LogRow>>> {
    if matches!(&at.read, Read::Keys(keys) if keys.is_empty()) {
        return Ok(Some(Vec::new()));
    }
    let mut conn = engine.inner.pool.acquire().await?;
    let rows = conn
        .read_entity(
            &at.entity.name,
            (after, at.version),
            at.keys.as_deref(),
            PAGE,
            Select::Latest { fresh: true },
        )
        .await?;
    // Read after the page: a pass that removed an entry of it had raised it first.
    if at.version > 0 && conn.horizon().await? > at.version {
        return Ok(None);
    }
    Ok(Some(rows))
}

/// The rows of a page the principal holds, as `(id, data)`.
fn held<'a>(at: &'a At, rows: &'a [LogRow]) -> impl Iterator<Item = (Value, Value)> + 'a {
    rows.iter()
        .filter(|row| match at.read.view_row(row) {
            View::AsIs => row.action != "delete",
            View::Entering => true,
            View::Hidden | View::Removal => false,
        })
        .map(|row| {
            let data = (row.data.as_deref())
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            (at.entity.wire_id(&row.entity_id), data)
        })
}

#[tracing::instrument(skip_all, fields(entity = %name))]
pub(crate) async fn digest(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    Asking(access): Asking,
    query: std::result::Result<Query<DigestQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let _place = engine.inner.pulls.take(&access.principal)?;
    let at = match check(&engine, &name, &access, &query.at).await? {
        Ok(at) => at,
        Err(reset) => return Ok(reset),
    };
    let walk = async {
        let mut digest = Digest::default();
        let mut after = 0;
        loop {
            let Some(rows) = page(&engine, &at, after).await? else {
                return Ok(Value::Null);
            };
            for (id, data) in held(&at, &rows) {
                digest.add(&at.entity.name, &id, &data);
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => after = last.version,
                _ => return Ok::<_, Error>(json!(digest.hex())),
            }
        }
    };
    // The digest is of the log: an entry damaged on the server agrees with the client
    // that mirrored it. What the check corrects is logged after the cursor. Neither
    // waits for the other (each on a pooled connection of its own).
    let (buckets, corrected) = tokio::join!(walk, engine.check_log(&at.entity, &at.read));
    let (buckets, corrected) = (buckets?, corrected?);
    Ok(Json(json!({
        "entity": name,
        "version": at.version,
        "cursor": at.token,
        "buckets": buckets,
        "corrected": corrected,
    }))
    .into_response())
}

/// The buckets a `buckets` parameter names.
fn buckets(list: &str) -> Result<[bool; BUCKETS]> {
    let mut wanted = [false; BUCKETS];
    for part in list.split(',') {
        // Digits as the client writes them: no sign, no leading zeros.
        let plain = part == "0" || (!part.starts_with('0') && !part.is_empty());
        match part.parse::<usize>() {
            Ok(b) if b < BUCKETS && plain && part.bytes().all(|c| c.is_ascii_digit()) => {
                wanted[b] = true
            }
            _ => {
                return Err(Error::BadQuery(format!(
                "`buckets` must be bucket numbers below {BUCKETS}, separated by commas, not `{}`",
                quote(list)
            )))
            }
        }
    }
    Ok(wanted)
}

#[tracing::instrument(skip_all, fields(entity = %name))]
pub(crate) async fn rows(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    Asking(access): Asking,
    query: std::result::Result<Query<RowsQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let wanted = buckets(&query.buckets)?;
    let place = engine.inner.pulls.take(&access.principal)?;
    let at = match check(&engine, &name, &access, &query.at).await? {
        Ok(at) => at,
        Err(reset) => return Ok(reset),
    };
    // The first page before answering: a failing database gets a 500, not a cut 200.
    let first = page(&engine, &at, 0).await?;
    let stream = async_stream::try_stream! {
        let _place = place;
        let mut buf = json!({"entity": name, "version": at.version, "cursor": at.token})
            .to_string();
        buf.pop();
        buf.push_str(",\"rows\":[");
        let (mut next, mut count) = (first, 0usize);
        let complete = loop {
            let Some(rows) = next else { break false };
            for (id, data) in held(&at, &rows) {
                if !wanted[integrity::bucket(&id)] {
                    continue;
                }
                if count > 0 {
                    buf.push(',');
                }
                buf.push_str(&json!({"id": id, "data": data}).to_string());
                count += 1;
                if buf.len() >= CHUNK {
                    yield Bytes::from(std::mem::take(&mut buf));
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => {
                    next = page(&engine, &at, last.version).await?;
                }
                _ => break true,
            }
        };
        buf.push_str(&format!("],\"complete\":{complete}}}"));
        yield Bytes::from(buf);
    };
    let stream = stream.map_err(|e: Error| {
        tracing::error!(error = %e, "a state read failed mid-stream");
        e
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}
