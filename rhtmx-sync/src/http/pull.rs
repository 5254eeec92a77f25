//! `GET {prefix}/{entity}?since=&limit=&latest=`: the entity's changes after a version.
//!
//! The body is streamed in version order, in batches read on a pooled connection that
//! is returned before the batch is written: the server's memory stays flat however many
//! rows a page holds, and a client that stops reading holds neither a connection nor a
//! read snapshot. Every page covers exactly the versions up to the head read when it
//! began; entries below the head never change, so batches add up to one snapshot.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;

use crate::backend::{ReadLog, Select};
use crate::cursor::{self, Cursor, Reset};
use crate::error::{quote, Error, Result};
use crate::principal::Asking;
use crate::scope::Read;
use crate::wire;
use crate::SyncEngine;

// An unknown parameter is a mistake (`?sinse=5` would pull from 0): 400, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullQuery {
    /// A cursor (`version.tag`, or a bare version).
    since: Option<String>,
    limit: Option<i64>,
    /// Each changed row once, at its latest (`ReadLog::read_entity`): what the browser
    /// client asks for. Without it, every entry the log holds.
    #[serde(default)]
    latest: bool,
}

/// Rows are flushed to the socket in chunks of about this many bytes.
const CHUNK: usize = 16 * 1024;

/// Rows read per pooled connection: bounds both how long a connection is held and the
/// memory a pull uses, however slowly its client reads.
const BATCH: i64 = 256;

/// 409 with the reset the client must make: its cursor is from another history of the
/// log (or beyond it). It drops what it holds and pulls from 0.
pub(super) fn reset(head_id: &str, head: i64, why: Reset) -> Response {
    tracing::debug!(head, reason = why.reason(), "pull reset");
    let error = match why {
        Reset::AccessChanged => {
            "what you may read has changed: drop what you hold and pull again from 0"
        }
        _ => "the cursor is not from this history of the log: pull again from 0",
    };
    let body = serde_json::json!({
        "error": error,
        "reset": { "version": head, "cursor": head_id, "reason": why.reason() },
    });
    (StatusCode::CONFLICT, axum::Json(body)).into_response()
}

#[tracing::instrument(skip_all, fields(entity = %name))]
pub(crate) async fn pull(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    Asking(access): Asking,
    query: Result<Query<PullQuery>, QueryRejection>,
) -> Result<Response> {
    let entity = engine.entity(&name)?.clone();
    // Only the rows the principal may read, and of those that left its scope, only
    // that they left (see `crate::scope`).
    let read = access.read(&entity.name).clone();
    if read == Read::Nothing {
        return Err(Error::NotReadable(name));
    }
    let keys = read.keys_json();
    let suffix = access.suffix().to_owned();
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let since = match query.since.as_deref().map(str::trim) {
        None | Some("") => Cursor {
            version: 0,
            tag: None,
            access: None,
        },
        Some(s) => Cursor::parse(s).ok_or_else(|| {
            Error::BadQuery(format!(
                "`since` must be a cursor (a version, or `version.tag`), not `{}`",
                quote(s)
            ))
        })?,
    };
    let options = &engine.inner.options;
    let limit = match query.limit {
        None => options.default_pull_limit,
        Some(n) if n >= 1 => n.min(options.max_pull_limit),
        Some(_) => return Err(Error::BadQuery("`limit` must be at least 1".into())),
    };
    let select = match query.latest {
        false => Select::Every,
        true => Select::Latest {
            fresh: since.version == 0,
        },
    };
    // A place in the budget (in total and of this principal), held until the whole body
    // is written.
    let place = engine.inner.pulls.take(&access.principal)?;
    let pool = engine.inner.pool.clone();
    // Read the head and the first batch before answering, so a failing database still
    // gets a 500 rather than a truncated 200.
    let log_id = engine.inner.log_id.clone();
    let (head, head_id, first, purges) = {
        let mut conn = pool.acquire().await?;
        let mut attempts = 0;
        loop {
            let head = conn.settled_head().await?;
            let head_id = cursor::token(&mut conn, &log_id, head).await? + &suffix;
            let fingerprint = access.fingerprint.as_deref();
            let purges = conn.purges().await?;
            if let Some(why) = cursor::check(&mut conn, &log_id, &since, head, fingerprint).await? {
                return Ok(reset(&head_id, head, why));
            }
            let first = conn
                .read_entity(
                    &entity.name,
                    (since.version, head),
                    keys.as_deref(),
                    BATCH.min(limit + 1),
                    select,
                )
                .await?;
            // Compaction removed a deleted row meanwhile: read again (nothing is sent yet).
            if conn.purges().await? == purges {
                break (head, head_id, first, purges);
            }
            attempts += 1;
            if attempts == 5 {
                return Err(Error::Contended { retry_after: 1 });
            }
        }
    };
    let since = since.version;

    let stream = async_stream::try_stream! {
        let _place = place;
        let mut buf = String::with_capacity(CHUNK + 1024);
        buf.push_str("{\"entity\":");
        buf.push_str(&serde_json::to_string(&*entity.name).unwrap_or_default());
        buf.push_str(",\"changes\":[");
        let (mut count, mut last, mut has_more) = (0i64, since, false);
        let mut rows = first;
        'pages: loop {
            let full = rows.len() as i64 == BATCH.min(limit + 1 - count);
            for row in &rows {
                if count == limit {
                    has_more = true;
                    break 'pages;
                }
                if count > 0 {
                    buf.push(',');
                }
                buf.push_str(&wire::encode_as(&entity, row, false, read.view_row(row)));
                count += 1;
                last = row.version;
                if buf.len() >= CHUNK {
                    yield Bytes::from(std::mem::take(&mut buf));
                }
            }
            if !full {
                break;
            }
            // A connection per batch, returned before the next yield: a client that
            // stops reading holds no connection and no snapshot. The log below `head`
            // is append-only, so the batches read the same rows one snapshot would.
            rows = {
                let mut conn = pool.acquire().await?;
                let want = BATCH.min(limit + 1 - count);
                let rows = conn
                    .read_entity(&entity.name, (last, head), keys.as_deref(), want, select)
                    .await?;
                // Compaction purged entries meanwhile: a row this page sent may have
                // lost the delete it would have read next. End here; resuming from
                // `last` resets if that is below the horizon (`cursor::token_resuming`).
                if conn.purges().await? != purges {
                    has_more = true;
                    break 'pages;
                }
                rows
            };
        }
        // The next `since`: where this page stopped, or the head when it is complete,
        // so a client skips past other entities' versions too.
        // A page cut short ends at its last row: one lookup for its tag, not a hash per row.
        let (version, cursor) = if has_more {
            let mut conn = pool.acquire().await?;
            let tag = if last == 0 {
                "0".to_owned()
            } else {
                cursor::token_resuming(&mut conn, &log_id, last, purges).await? + &suffix
            };
            (last, tag)
        } else {
            // A pass raised the horizon past the head meanwhile (a short history
            // window): a cursor that resumes while nothing was purged, not one that
            // resets at once.
            let mut conn = pool.acquire().await?;
            if head < conn.horizon().await? {
                let tag = cursor::token_resuming(&mut conn, &log_id, head, purges).await?;
                (head, tag + &suffix)
            } else {
                (head, head_id)
            }
        };
        buf.push_str(&format!(
            "],\"version\":{version},\"cursor\":\"{cursor}\",\"head\":{head},\"has_more\":{has_more}}}"
        ));
        yield Bytes::from(buf);
    };
    let stream = stream.map_err(|e: Error| {
        tracing::error!(error = %e, "pull failed mid-stream");
        e
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}
