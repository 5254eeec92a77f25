//! `GET {prefix}/{entity}/digest?at=` and `GET {prefix}/{entity}/rows?at=&buckets=`:
//! the principal's state of an entity at a cursor, as a digest and as the rows of some
//! buckets (see `crate::integrity`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::ReadLog;
use crate::cursor::{self, Cursor, Reset};
use crate::error::{quote, Error, Result};
use crate::integrity::{self, Digest, BUCKETS};
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

/// Rows read per query while walking the state.
const PAGE: i64 = 1000;

/// The state at a checked cursor: calls `each(id, data)` for every row the principal
/// holds there, and returns the cursor's version and token; or the reset to answer.
async fn walk(
    engine: &SyncEngine,
    name: &str,
    access: &crate::scope::Access,
    at: &str,
    mut each: impl FnMut(&Value, &Value),
) -> Result<std::result::Result<(i64, String), Response>> {
    let entity = engine.entity(name)?;
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
    let _place = engine.inner.pulls.take(&access.principal)?;
    let log_id = &engine.inner.log_id;
    let suffix = access.suffix();
    let mut conn = engine.inner.pool.acquire().await?;
    let head = conn.settled_head().await?;
    let fingerprint = access.fingerprint.as_deref();
    if let Some(why) = cursor::check(&mut conn, log_id, &at, head, fingerprint).await? {
        let head_id = cursor::token(&mut conn, log_id, head).await? + suffix;
        return Ok(Err(super::pull::reset(&head_id, head, why)));
    }
    let mut after = String::new();
    loop {
        let rows = conn
            .latest_at(&entity.name, at.version, &after, PAGE)
            .await?;
        for row in &rows {
            let held = match read.view_row(row) {
                View::AsIs => row.action != "delete",
                View::Entering => true,
                View::Hidden | View::Removal => false,
            };
            if !held {
                continue;
            }
            let data: Value = row
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            each(&entity.wire_id(&row.entity_id), &data);
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == PAGE => after = last.entity_id.clone(),
            _ => break,
        }
    }
    // Compaction that moved past the cursor meanwhile may have taken a row's entry at
    // it: the state read may be short, and the cursor is no longer resumable anyway.
    if conn.horizon().await? > at.version {
        let head_id = cursor::token(&mut conn, log_id, head).await? + suffix;
        return Ok(Err(super::pull::reset(
            &head_id,
            head,
            Reset::BehindHorizon,
        )));
    }
    let token = if at.version == 0 {
        "0".to_owned()
    } else {
        cursor::token(&mut conn, log_id, at.version).await? + suffix
    };
    Ok(Ok((at.version, token)))
}

#[tracing::instrument(skip_all, fields(entity = %name))]
pub(crate) async fn digest(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    Asking(access): Asking,
    query: std::result::Result<Query<DigestQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let mut digest = Digest::default();
    let walked = walk(&engine, &name, &access, &query.at, |id, data| {
        digest.add(&name, id, data)
    })
    .await?;
    let Ok(at) = walked else {
        return Ok(answer(walked, &name, &[]));
    };
    // The digest is of the log: an entry damaged on the server agrees with the client
    // that mirrored it. What the check corrects is logged after the cursor.
    let entity = engine.entity(&name)?;
    let corrected = engine.check_log(&entity, access.read(&entity.name)).await?;
    Ok(answer(
        Ok(at),
        &name,
        &[
            ("buckets", json!(digest.hex())),
            ("corrected", json!(corrected)),
        ],
    ))
}

#[tracing::instrument(skip_all, fields(entity = %name))]
pub(crate) async fn rows(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    Asking(access): Asking,
    query: std::result::Result<Query<RowsQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let mut wanted = [false; BUCKETS];
    for part in query.buckets.split(',') {
        // Digits as the client writes them: no sign, no leading zeros.
        let plain = part == "0" || (!part.starts_with('0') && !part.is_empty());
        match part.parse::<usize>() {
            Ok(b) if b < BUCKETS && plain && part.bytes().all(|c| c.is_ascii_digit()) => {
                wanted[b] = true
            }
            _ => {
                return Err(Error::BadQuery(format!(
                "`buckets` must be bucket numbers below {BUCKETS}, separated by commas, not `{}`",
                quote(&query.buckets)
            )))
            }
        }
    }
    let mut rows = Vec::new();
    let walked = walk(&engine, &name, &access, &query.at, |id, data| {
        if wanted[integrity::bucket(id)] {
            rows.push(json!({"id": id, "data": data}));
        }
    })
    .await?;
    Ok(answer(walked, &name, &[("rows", Value::Array(rows))]))
}

/// `{entity, version, cursor, <fields>}` for a walked state, or its reset.
fn answer(
    walked: std::result::Result<(i64, String), Response>,
    name: &str,
    fields: &[(&str, Value)],
) -> Response {
    match walked {
        Ok((version, cursor)) => {
            let mut body = json!({"entity": name, "version": version, "cursor": cursor});
            for (field, value) in fields {
                body[*field] = value.clone();
            }
            Json(body).into_response()
        }
        Err(reset) => reset,
    }
}
