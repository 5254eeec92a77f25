//! `GET {prefix}/events`: the live change stream (Server-Sent Events).
//!
//! Every event's `id:` is its cursor, `"{version}.{tag}"` ([`crate::cursor`]). A stream
//! resumes after the cursor in the `Last-Event-ID` header (sent by the browser when it
//! reconnects by itself) or the `last_event_id` query parameter (for a fresh
//! `EventSource` after a page load); the header wins because a reconnecting browser
//! keeps the old query string. Resuming reads the log, so there is no gap; versions not
//! newer than the cursor are dropped, so there is no duplicate. A cursor older than the
//! log keeps, newer than it has ever been, or from another history of it gets one
//! `reset` event instead; so does every open stream when the broadcaster finds the log
//! restored or replaced under it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::broadcast::LogEvent;
use crate::cursor::{self, Cursor};
use crate::engine::Entities;
use crate::error::{quote, Error, Result};
use crate::log::{self, LogRow};
use crate::wire;
use crate::SyncEngine;

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    last_event_id: Option<String>,
    /// Comma-separated entity names; absent means all.
    entities: Option<String>,
}

/// Which entities a stream wants.
struct Filter(Option<HashSet<Arc<str>>>);

impl Filter {
    fn wants(&self, entity: &str) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(entity))
    }
}

/// How many log rows a catch-up reads at a time.
const CATCH_UP_PAGE: i64 = 500;

#[tracing::instrument(skip_all)]
pub(crate) async fn events(
    State(engine): State<SyncEngine>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let from_header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("invalid").to_owned());
    let last_id = match from_header
        .or(query.last_event_id)
        .as_deref()
        .map(str::trim)
    {
        None | Some("") => None,
        Some(s) => Some(Cursor::parse(s).ok_or_else(|| {
            Error::BadQuery(format!(
                "the last event id `{}` is not a cursor (a version, or `version.tag`)",
                quote(s)
            ))
        })?),
    };
    // Unknown names must not take the stream down for every entity the page wants: the
    // stream carries the known ones and says which were not found.
    let (filter, unknown) = match query.entities.as_deref() {
        None => (Filter(None), Vec::new()),
        Some(list) => {
            let (mut set, mut unknown) = (HashSet::new(), Vec::new());
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match engine.entity(name) {
                    Ok(entity) => {
                        set.insert(entity.name.clone());
                    }
                    Err(_) => unknown.push(quote(name)),
                }
            }
            if set.is_empty() && !unknown.is_empty() {
                return Err(Error::UnknownEntity(list.to_owned()));
            }
            (Filter(Some(set)), unknown)
        }
    };

    let inner = engine.inner.clone();
    let mut closing = inner.hub.closing.subscribe();
    if *closing.borrow_and_update() {
        return Err(Error::ShuttingDown);
    }
    // A place in the budget, held by the stream until its client goes.
    let place = inner
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::Busy {
            what: "event streams",
            retry_after: 5,
        })?;
    // Subscribe before reading the log: whatever commits after the read below is then
    // certain to arrive through the channel.
    let mut rx = inner.hub.tx.subscribe();
    let (head, head_id, verdict) = {
        let mut conn = inner.pool.acquire().await?;
        let head = log::head(&mut conn).await?;
        let head_id = cursor::token(&mut conn, &inner.log_id, head).await?;
        let verdict = match &last_id {
            Some(last) => cursor::check(&mut conn, &inner.log_id, last, head).await?,
            None => None,
        };
        (head, head_id, verdict)
    };
    let retry = inner.options.sse_retry;
    let keep_alive = inner.options.keep_alive;

    let stream = async_stream::stream! {
        let _place = place;
        yield Ok::<_, Infallible>(Event::default().retry(retry).comment("rhtmx-sync"));
        if !unknown.is_empty() {
            let warning = serde_json::json!({
                "unknown_entities": unknown,
                "message": "these entities are not synced by the server; their pages get no live updates",
            });
            yield Ok(Event::default().event("warning").data(warning.to_string()));
        }
        let mut cursor = match (&last_id, verdict) {
            (None, _) => head,
            (Some(last), Some(why)) => {
                tracing::debug!(last = last.version, head, reason = why.reason(), "event stream reset");
                yield Ok(reset(&head_id, head, why.reason()));
                head
            }
            (Some(last), None) => last.version,
        };
        let mut catch_up = last_id.is_some();
        loop {
            if catch_up {
                catch_up = false;
                loop {
                    if *closing.borrow() {
                        return;
                    }
                    let rows = match read_page(&inner.pool, cursor).await {
                        Ok(rows) => rows,
                        Err(error) => {
                            // The browser reconnects with its last id: nothing is lost.
                            tracing::warn!(%error, "event stream catch-up failed; closing");
                            return;
                        }
                    };
                    for row in &rows {
                        cursor = row.version;
                        if let Some(event) = encode(&inner.entities.load(), &filter, row, &inner.log_id) {
                            yield Ok(event);
                        }
                    }
                    if (rows.len() as i64) < CATCH_UP_PAGE {
                        break;
                    }
                }
            }
            let received = tokio::select! {
                biased;
                // Shutdown: end the response, so the server's graceful shutdown can
                // finish; the browser reconnects, to another instance or after restart.
                _ = closing.wait_for(|closing| *closing) => return,
                received = rx.recv() => received,
            };
            match received {
                Ok(event) => match &*event {
                    LogEvent::Change { version, id, entity, json } => {
                        if *version <= cursor {
                            continue;
                        }
                        cursor = *version;
                        if filter.wants(entity) {
                            yield Ok(Event::default().id(id).data(json));
                        }
                    }
                    LogEvent::Reset { head, id } => {
                        cursor = *head;
                        yield Ok(reset(id, *head, "log_replaced"));
                    }
                },
                // Fell behind the channel: the log still has everything.
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "slow event stream catches up from the log");
                    catch_up = true;
                }
                Err(RecvError::Closed) => return,
            }
        }
    };
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    // Proxies such as nginx must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `reset` to `head`: the client drops what it holds and pulls from scratch.
fn reset(id: &str, head: i64, reason: &str) -> Event {
    let data = serde_json::json!({ "version": head, "cursor": id, "reason": reason });
    Event::default()
        .event("reset")
        .id(id)
        .data(data.to_string())
}

fn encode(entities: &Entities, filter: &Filter, row: &LogRow, log_id: &str) -> Option<Event> {
    let entity = entities.get(&row.entity)?;
    filter.wants(&entity.name).then(|| {
        Event::default()
            .id(cursor::token_of(log_id, row))
            .data(wire::encode(entity, row, true))
    })
}

async fn read_page(pool: &sqlx::SqlitePool, after: i64) -> Result<Vec<LogRow>> {
    let mut conn = pool.acquire().await?;
    log::read_after(&mut conn, after, CATCH_UP_PAGE).await
}
