//! `POST {prefix}/{entity}`: apply a client's changes in one transaction, all or nothing.
//!
//! Every change is validated against the registered columns (and its HLC against the
//! clock) before the database is touched; each is then merged field by field with what
//! happened to the row since the client's `client_version` (see
//! [`conflict`](crate::conflict)) and written through the same triggers as the app's
//! own writes, so the log and the broadcast need no special path.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;

use crate::apply::{self, Incoming};
use crate::conflict::Status;
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::permission::{Push, PushedChange};
use crate::principal::Asking;
use crate::scope::{Access, Keys, Read, Rule};
use crate::wire::Action;
use crate::wire::{PushConflict, PushRequest, PushResponse};
use crate::SyncEngine;

/// The header a client may identify itself with (same as the body's `client_id`).
pub(crate) const CLIENT_ID_HEADER: &str = "x-rhtmx-client-id";
const MAX_CLIENT_ID: usize = 128;

#[tracing::instrument(skip_all, fields(entity = %name, changes))]
pub(crate) async fn push(
    State(engine): State<SyncEngine>,
    Path(name): Path<String>,
    Asking(access): Asking,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PushResponse>> {
    let entity = &*engine.entity(&name)?;
    super::origin::same_origin(&headers, &engine.inner.options.allowed_origins)?;
    if matches!(entity.push, Push::Refused) {
        return Err(Error::NotWritable(name));
    }
    if !is_json(&headers) {
        return Err(Error::UnsupportedMediaType);
    }
    let limit = engine.inner.options.body_limit;
    let read = axum::body::to_bytes(body, limit);
    let bytes = tokio::time::timeout(engine.inner.options.body_timeout, read)
        .await
        .map_err(|_| Error::BodyTimeout)?
        .map_err(|e| {
            if is_too_large(&e) {
                Error::PayloadTooLarge { limit }
            } else {
                Error::MalformedJson("the request body could not be read".into())
            }
        })?;
    let mut request: PushRequest = serde_json::from_slice(&bytes).map_err(json_error)?;
    tracing::Span::current().record("changes", request.changes.len());
    let max = engine.inner.options.max_push_changes;
    if request.changes.len() > max {
        return Err(Error::TooManyChanges {
            limit: max,
            sent: request.changes.len(),
        });
    }
    // Bound to the principal: nobody's writes count as another user's client's.
    let client_id = client_id(&headers, request.client_id.take())?
        .map(|id| crate::principal::bind_client_id(&access.principal, &id));
    let read = access.read(&entity.name);
    // A row created without its scope column lands in the principal's own scope.
    if let (Some(column), Some(own)) = (entity.scope_column(), own_scope(entity, &access)) {
        for change in &mut request.changes {
            if let (Action::Create, Some(data)) = (change.action, change.data.as_mut()) {
                data.entry(column)
                    .or_insert_with(|| serde_json::Value::String(own.clone()));
            }
        }
    }
    let mut validated = request
        .changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let hlc = c.hlc.as_deref().map(str::parse::<Hlc>).transpose();
            hlc.and_then(|hlc| {
                let incoming = Incoming {
                    id: &c.id,
                    action: c.action,
                    data: c.data.as_ref(),
                    hlc,
                    base: c.client_version,
                };
                apply::validate(entity, incoming)
            })
            .map_err(|e| Error::invalid(format!("changes[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // The app's own rules, on changes that fit the table, before anything is written.
    if let Push::Validated(validator) = &entity.push {
        for (i, c) in request.changes.iter().enumerate() {
            let change = PushedChange {
                entity: &entity.name,
                id: &c.id,
                action: c.action,
                data: c.data.as_ref(),
            };
            validator
                .validate(&change)
                .map_err(|why| Error::invalid(format!("changes[{i}]: {why}")))?;
        }
    }
    // A principal with no scope key of the entity (anonymous, or without a tenant) may
    // write none of it: refused before the database is touched.
    if matches!(read, Read::Keys(keys) if keys.is_empty()) {
        return Err(Error::NotWritable(name));
    }
    // Number identical changes in the order sent (see `Validated::occurrence`).
    let mut seen = std::collections::HashMap::new();
    for change in &mut validated {
        let count = seen.entry(change.identity()).or_insert(0u32);
        change.occurrence = *count;
        *count += 1;
    }

    let (outcomes, version) = apply::transaction(
        &engine.inner,
        entity,
        &validated,
        client_id.as_deref(),
        read,
    )
    .await
    .map_err(|failed| constraint(failed.error, failed.index))?;
    let mut response = PushResponse {
        version,
        conflicts: Vec::new(),
        applied: Vec::new(),
        duplicates: Vec::new(),
        clamped: Vec::new(),
    };
    for (change, done) in validated.into_iter().zip(outcomes) {
        if done.clamped.is_some() {
            response.clamped.push(change.wire_id.clone());
        }
        match done.status {
            Status::NotFound => response.conflicts.push(PushConflict::NotFound {
                id: change.wire_id,
                action: change.action,
                reason: "not_found",
            }),
            Status::Deleted => {}
            Status::Duplicate => response.duplicates.push(change.wire_id),
            _ => response.applied.push(change.wire_id),
        }
        if let Some(conflict) = done.conflict {
            response
                .conflicts
                .push(PushConflict::Resolved(Box::new(conflict)));
        }
    }
    Ok(Json(response))
}

/// The scope a principal's new rows belong to, for a scope by user or tenant.
fn own_scope(entity: &crate::entity::Entity, access: &Access) -> Option<String> {
    match &entity.scope.as_ref()?.rule {
        Rule::Column {
            keys: Keys::User, ..
        } => access.principal.user.clone(),
        Rule::Column {
            keys: Keys::Tenant, ..
        } => access.principal.tenant.clone(),
        _ => None,
    }
}

/// `application/json` or `application/*+json`, with any parameters (as axum's `Json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
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

/// A constraint the schema enforces, or a value its column cannot hold (PostgreSQL's
/// data exceptions, class 22, and a value for an identity column that is always
/// generated, 428C9), is the client's fault; anything else is ours.
fn constraint(e: Error, index: usize) -> Error {
    if let Error::Database(sqlx::Error::Database(db)) = &e {
        let code = db.code();
        if code
            .as_deref()
            // SQLSTATEs (five characters; SQLite's codes are numbers).
            .is_some_and(|c| c.len() == 5 && (c.starts_with("22") || c == "428C9"))
        {
            return Error::invalid(format!(
                "changes[{index}] has a value its column cannot hold"
            ));
        }
        if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
            return Error::invalid(format!(
                "changes[{index}] violates a constraint of the table"
            ));
        }
    }
    e
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
    crate::replication::refuse_author_claim(id.as_deref())?;
    Ok(id)
}
