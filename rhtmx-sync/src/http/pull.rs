//! `GET {prefix}/{entity}?since=&limit=`: the entity's changes after a version.
//!
//! The body is streamed from one read transaction in version order, so the server's
//! memory stays flat however many rows a page holds, and every page is a consistent
//! snapshot.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::log::{self, LogRow, LOG_TABLE, ROW_COLUMNS};
use crate::wire;
use crate::SyncEngine;

#[derive(Debug, Deserialize)]
pub(crate) struct PullQuery {
    since: Option<i64>,
    limit: Option<i64>,
}

/// Rows are flushed to the socket in chunks of about this many bytes.
const CHUNK: usize = 16 * 1024;

#[tracing::instrument(skip_all, fields(entity = %name))]
pub(crate) async fn pull(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    query: Result<Query<PullQuery>, QueryRejection>,
) -> Result<Response> {
    let entity = engine.entity(&name)?.clone();
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let since = query.since.unwrap_or(0);
    if since < 0 {
        return Err(Error::BadQuery("`since` must not be negative".into()));
    }
    let options = &engine.inner.options;
    let limit = match query.limit {
        None => options.default_pull_limit,
        Some(n) if n >= 1 => n.min(options.max_pull_limit),
        Some(_) => return Err(Error::BadQuery("`limit` must be at least 1".into())),
    };
    // Open the snapshot before answering, so a failing database still gets a 500.
    let mut tx = engine.inner.pool.begin().await?;
    let head = log::head(&mut tx).await?;

    let stream = async_stream::try_stream! {
        let mut buf = String::with_capacity(CHUNK + 1024);
        buf.push_str("{\"entity\":");
        buf.push_str(&serde_json::to_string(&*entity.name).unwrap_or_default());
        buf.push_str(",\"changes\":[");
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM {LOG_TABLE} \
             WHERE entity = ? AND version > ? AND version <= ? ORDER BY version LIMIT ?"
        );
        let mut rows = sqlx::query_as::<_, LogRow>(&sql)
            .bind(&*entity.name)
            .bind(since)
            .bind(head)
            .bind(limit + 1)
            .fetch(&mut *tx);
        let (mut count, mut last, mut has_more) = (0i64, since, false);
        while let Some(row) = rows.try_next().await? {
            if count == limit {
                has_more = true;
                break;
            }
            if count > 0 {
                buf.push(',');
            }
            buf.push_str(&wire::encode(&entity, &row, false));
            count += 1;
            last = row.version;
            if buf.len() >= CHUNK {
                yield Bytes::from(std::mem::take(&mut buf));
            }
        }
        drop(rows);
        // The next `since`: where this page stopped, or the head when it is complete,
        // so a client skips past other entities' versions too.
        let version = if has_more { last } else { head };
        buf.push_str(&format!("],\"version\":{version},\"has_more\":{has_more}}}"));
        yield Bytes::from(buf);
        tx.rollback().await?;
    };
    let stream = stream.map_err(|e: sqlx::Error| {
        tracing::error!(error = %e, "pull failed mid-stream");
        e
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}
