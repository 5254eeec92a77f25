//! `GET {prefix}/events`: the live change stream (Server-Sent Events).
//!
//! Every event's `id:` is its log version. A stream resumes after the id in the
//! `Last-Event-ID` header (sent by the browser when it reconnects by itself) or the
//! `last_event_id` query parameter (for a fresh `EventSource` after a page load); the
//! header wins because a reconnecting browser keeps the old query string. Resuming reads
//! the log, so there is no gap; ids not newer than the cursor are dropped, so there is no
//! duplicate. When the id is older than the log keeps (or newer than it has ever been),
//! the stream sends a `reset` event instead.

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
        Some(s) => Some(s.parse::<i64>().map_err(|_| {
            Error::BadQuery(format!(
                "the last event id `{}` is not a version number",
                quote(s)
            ))
        })?),
    };
    let filter = match query.entities.as_deref() {
        None => Filter(None),
        Some(list) => {
            let mut set = HashSet::new();
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                set.insert(engine.entity(name)?.name.clone());
            }
            Filter(Some(set))
        }
    };

    let inner = engine.inner.clone();
    let mut closing = inner.hub.closing.subscribe();
    if *closing.borrow_and_update() {
        return Err(Error::ShuttingDown);
    }
    // Subscribe before reading the log: whatever commits after the read below is then
    // certain to arrive through the channel.
    let mut rx = inner.hub.tx.subscribe();
    let (head, horizon) = {
        let mut conn = inner.pool.acquire().await?;
        (log::head(&mut conn).await?, log::horizon(&mut conn).await?)
    };
    let retry = inner.options.sse_retry;
    let keep_alive = inner.options.keep_alive;

    let stream = async_stream::stream! {
        yield Ok::<_, Infallible>(Event::default().retry(retry).comment("rhtmx-sync"));
        let mut cursor = match last_id {
            None => head,
            Some(id) if id < horizon || id > head => {
                let reason = if id > head { "ahead_of_log" } else { "behind_horizon" };
                tracing::debug!(id, head, horizon, reason, "event stream reset");
                yield Ok(reset(head, reason));
                head
            }
            Some(id) => id,
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
                        if let Some(event) = encode(&inner.entities.load(), &filter, row) {
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
                Ok(event) => {
                    if event.version <= cursor {
                        continue;
                    }
                    cursor = event.version;
                    if filter.wants(&event.entity) {
                        yield Ok(Event::default().id(event.version.to_string()).data(&event.json));
                    }
                }
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

fn reset(head: i64, reason: &str) -> Event {
    Event::default()
        .event("reset")
        .id(head.to_string())
        .data(serde_json::json!({ "version": head, "reason": reason }).to_string())
}

fn encode(entities: &Entities, filter: &Filter, row: &LogRow) -> Option<Event> {
    let entity = entities.get(&row.entity)?;
    filter.wants(&entity.name).then(|| {
        Event::default()
            .id(row.version.to_string())
            .data(wire::encode(entity, row, true))
    })
}

async fn read_page(pool: &sqlx::SqlitePool, after: i64) -> Result<Vec<LogRow>> {
    let mut conn = pool.acquire().await?;
    log::read_after(&mut conn, after, CATCH_UP_PAGE).await
}
