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
//!
//! A stream carries only what its principal may read ([`crate::scope`]): each change is
//! judged by its scopes against the keys looked up when the stream opened, never by a
//! query per change. At [`SyncEngine::access_changed`](crate::SyncEngine::access_changed),
//! and every `access_recheck` (60 s) by itself, the stream asks again (running the
//! app's extractor on the request it was opened with: a signed-out session is
//! anonymous); when the answer differs its client gets a `reset`.
//!
//! While it is open, each stream is listed with its cursor in the operator view
//! ([`crate::operator`]): an atomic store per event, removed when the stream is dropped.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::backend::{Pool, ReadLog};
use crate::broadcast::LogEvent;
use crate::cursor::{self, Cursor, Reset};
use crate::engine::Entities;
use crate::error::{quote, Error, Result};
use crate::log::LogRow;
use crate::principal::principal_of;
use crate::scope::{Access, Read, View};
use crate::wire;
use crate::SyncEngine;

// An unknown parameter is a mistake (`?sinse=5` would pull from 0): 400, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
    mut parts: Parts,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::BadQuery(e.body_text()))?;
    let headers = parts.headers.clone();
    let mut access = engine
        .access(principal_of(&engine, &mut parts).await)
        .await?;
    let mut access_seen = engine.inner.hub.access.subscribe();
    access_seen.mark_unchanged();
    let mut revoked = engine.inner.hub.revoked.subscribe();
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
    // A place in the budget (in total and of this principal), held by the stream until
    // its client goes.
    let place = inner.streams.take(&access.principal)?;
    // Subscribe before reading the log: whatever commits after the read below is then
    // certain to arrive through the channel.
    let mut rx = inner.hub.tx.subscribe();
    let (head, head_id, verdict, mut purges) = {
        let mut conn = inner.pool.acquire().await?;
        let purges = conn.purges().await?;
        let head = conn.settled_head().await?;
        let head_id = cursor::token(&mut conn, &inner.log_id, head).await? + access.suffix();
        let fingerprint = access.fingerprint.as_deref();
        let verdict = match &last_id {
            Some(last) => cursor::check(&mut conn, &inner.log_id, last, head, fingerprint).await?,
            None => None,
        };
        (head, head_id, verdict, purges)
    };
    let retry = inner.options.sse_retry;
    let scoped = inner.scoped;
    let period = inner.options.access_recheck;
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        // Listed in the operator view until the stream is dropped.
        let tracked = inner.open_streams.open(&access.principal, cursor);
        // The position the client was last given. Changes it may not read, or of
        // entities it did not ask for, move the stream on without an event; now and
        // then a `cursor` event says so, or the client's cursors would stay where they
        // were, fall behind the compaction horizon and reset its mirror on the next load.
        let mut told = cursor;
        let mut tell = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        tell.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut catch_up = last_id.is_some();
        loop {
            if catch_up {
                catch_up = false;
                loop {
                    if *closing.borrow() {
                        return;
                    }
                    let (rows, horizon) = match read_page(&inner.pool, cursor).await {
                        // Compaction removed a deleted row's entries meanwhile: an
                        // earlier event may have sent a row whose delete is gone. Below
                        // the horizon, the client must resync.
                        Ok((_, now, horizon)) if now != purges && cursor < horizon => {
                            // From the head as it is now, and the purges as they are: a
                            // later catch-up of this stream resets only for a later pass.
                            let Ok((head, id)) = head_token(&inner.pool, &inner.log_id).await else { return };
                            yield Ok(reset(&(id + access.suffix()), head, Reset::BehindHorizon.reason()));
                            purges = now;
                            cursor = head;
                            told = head;
                            tracked.at(cursor);
                            break;
                        }
                        Ok((rows, _, horizon)) => (rows, horizon),
                        Err(error) => {
                            // The browser reconnects with its last id: nothing is lost.
                            tracing::warn!(%error, "event stream catch-up failed; closing");
                            return;
                        }
                    };
                    let entities = inner.entities.load();
                    for row in &rows {
                        cursor = row.version;
                        tracked.at(cursor);
                        // Below the horizon, an id that resumes while nothing is purged.
                        let id = cursor::token_below(&inner.log_id, row, horizon, purges);
                        if let Some(event) = encode(&entities, &filter, &access, row, id) {
                            told = cursor;
                            yield Ok(event);
                        }
                    }
                    if (rows.len() as i64) < CATCH_UP_PAGE {
                        break;
                    }
                }
            }
            let woke = tokio::select! {
                biased;
                // Shutdown: end the response, so the server's graceful shutdown can
                // finish; the browser reconnects, to another instance or after restart.
                _ = closing.wait_for(|closing| *closing) => return,
                changed = access_seen.changed() => match changed {
                    Ok(()) => Woke::Recheck,
                    Err(_) => return,
                },
                // And now and then by itself: a session ended or a membership changed
                // without `access_changed()` still ends what the stream sends.
                _ = recheck.tick(), if scoped => Woke::Recheck,
                // Its principal signed out (or missed revocations): end; the browser
                // reconnects and is asked afresh who it is.
                who = revoked.recv() => match who {
                    Ok(who) if who != access.principal => continue,
                    Err(broadcast::error::RecvError::Closed) => continue,
                    _ => return,
                },
                _ = tell.tick(), if cursor > told => Woke::Tell,
                received = rx.recv() => Woke::Received(received),
            };
            let received = match woke {
                Woke::Received(received) => received,
                Woke::Tell => {
                    let Ok(id) = token(&inner.pool, &inner.log_id, cursor).await else { return };
                    let data = serde_json::json!({ "version": cursor });
                    told = cursor;
                    yield Ok(Event::default().event("cursor").id(id + access.suffix()).data(data.to_string()));
                    continue;
                }
                Woke::Recheck => {
                access_seen.mark_unchanged();
                // Who is this, and what may they read, now? A failure closes the
                // stream: the browser reconnects and asks afresh.
                let principal = principal_of(&engine, &mut parts.clone()).await;
                let Ok(now) = engine.access(principal).await else { return };
                if now.fingerprint != access.fingerprint {
                    access = now;
                    tracked.reads_as(&access.principal);
                    let Ok(id) = token(&inner.pool, &inner.log_id, cursor).await else { return };
                    told = cursor;
                    yield Ok(reset(&(id + access.suffix()), cursor, "access_changed"));
                }
                continue;
                }
            };
            match received {
                Ok(event) => match &*event {
                    LogEvent::Change { version, id, entity, json, scoped } => {
                        if *version <= cursor {
                            continue;
                        }
                        cursor = *version;
                        tracked.at(cursor);
                        if !filter.wants(entity) {
                            continue;
                        }
                        let read = access.read(entity);
                        let data = match scoped {
                            Some(scoped) => scoped.data(read, json),
                            None => (*read != Read::Nothing).then_some(json.as_str()),
                        };
                        if let Some(data) = data {
                            told = cursor;
                            yield Ok(Event::default().id(with_suffix(id, access.suffix())).data(data));
                        }
                    }
                    LogEvent::Reset { head, id } => {
                        cursor = *head;
                        told = cursor;
                        tracked.at(cursor);
                        yield Ok(reset(&with_suffix(id, access.suffix()), *head, "log_replaced"));
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

/// What woke an open stream.
enum Woke {
    /// Ask again what its principal may read.
    Recheck,
    /// Tell the client where the stream is.
    Tell,
    Received(Result<Arc<LogEvent>, RecvError>),
}

/// An event's id with the stream's access fingerprint; no copy for an unscoped engine
/// (this runs per event per stream).
fn with_suffix<'a>(id: &'a str, suffix: &str) -> std::borrow::Cow<'a, str> {
    if suffix.is_empty() {
        id.into()
    } else {
        format!("{id}{suffix}").into()
    }
}

/// `reset` to `head`: the client drops what it holds and pulls from scratch.
fn reset(id: &str, head: i64, reason: &str) -> Event {
    let data = serde_json::json!({ "version": head, "cursor": id, "reason": reason });
    Event::default()
        .event("reset")
        .id(id)
        .data(data.to_string())
}

fn encode(
    entities: &Entities,
    filter: &Filter,
    access: &Access,
    row: &LogRow,
    id: String,
) -> Option<Event> {
    let entity = entities.get(&row.entity)?;
    if !filter.wants(&entity.name) {
        return None;
    }
    let view = access.read(&entity.name).view_row(row);
    (view != View::Hidden).then(|| {
        Event::default()
            .id(id + access.suffix())
            .data(wire::encode_as(entity, row, true, view))
    })
}

/// A page of catch-up, then the purge count and horizon (read after it, see
/// `ReadLog::purges`).
async fn read_page(pool: &Pool, after: i64) -> Result<(Vec<LogRow>, i64, i64)> {
    let mut conn = pool.acquire().await?;
    let rows = conn.read_after(after, CATCH_UP_PAGE).await?;
    Ok((rows, conn.purges().await?, conn.horizon().await?))
}

/// The settled head and its token.
async fn head_token(pool: &Pool, log_id: &str) -> Result<(i64, String)> {
    let mut conn = pool.acquire().await?;
    let head = conn.settled_head().await?;
    Ok((head, cursor::token(&mut conn, log_id, head).await?))
}

async fn token(pool: &Pool, log_id: &str, version: i64) -> Result<String> {
    let mut conn = pool.acquire().await?;
    cursor::token(&mut conn, log_id, version).await
}
