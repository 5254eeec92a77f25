//! Broadcast: one task tails the change log and fans each committed change out to every
//! event stream.
//!
//! The log, not an in-memory list of senders, is the source of truth: the tailer reads
//! what was *committed* (by this process or any other writing the same file), so an
//! event is never sent for a rolled-back write and never missed for a foreign one. A
//! stream that falls behind the bounded channel catches up from the log.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{broadcast, watch, Notify};

use crate::capture;
use crate::engine::Registry;
use crate::log;
use crate::wire;

/// A committed change, encoded once for every stream.
#[derive(Debug)]
pub(crate) struct LogEvent {
    pub version: i64,
    pub entity: Arc<str>,
    /// The event's `data:` JSON.
    pub json: String,
}

/// Shared between the tailer, the streams and the push handler.
pub(crate) struct Hub {
    pub tx: broadcast::Sender<Arc<LogEvent>>,
    /// Wakes the tailer at once after this process committed a change.
    pub wake: Notify,
    /// Becomes `true` once, at shutdown: every event stream ends.
    pub closing: watch::Sender<bool>,
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Self {
        Hub {
            tx: broadcast::channel(capacity).0,
            wake: Notify::new(),
            closing: watch::Sender::new(false),
        }
    }
}

/// Tails the log from `cursor` until the task is aborted.
///
/// Each tick costs one `PRAGMA data_version` (answered from shared memory, no disk read);
/// the log is only read when another connection committed something.
pub(crate) async fn tail(
    options: SqliteConnectOptions,
    mut conn: SqliteConnection,
    hub: Arc<Hub>,
    entities: Arc<Registry>,
    generation: i64,
    poll: Duration,
    mut cursor: i64,
) {
    let mut data_version = -1i64;
    let mut schema_version = -1i64;
    loop {
        match tick(
            &mut conn,
            &hub,
            &entities,
            generation,
            &mut cursor,
            &mut data_version,
            &mut schema_version,
        )
        .await
        {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(%error, "change-log tailer failed; retrying");
                data_version = -1;
                if conn.ping().await.is_err() {
                    // Keep the old connection until a new one can be had.
                    match SqliteConnection::connect_with(&options).await {
                        Ok(fresh) => conn = fresh,
                        Err(error) => tracing::warn!(%error, "tailer cannot reconnect"),
                    }
                }
            }
        }
        tokio::select! {
            _ = hub.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn tick(
    conn: &mut SqliteConnection,
    hub: &Hub,
    registry: &Registry,
    generation: i64,
    cursor: &mut i64,
    data_version: &mut i64,
    schema_version: &mut i64,
) -> crate::Result<()> {
    let dv: i64 = sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await?;
    if dv == *data_version {
        return Ok(());
    }
    *data_version = dv;
    let sv: i64 = sqlx::query_scalar("PRAGMA schema_version")
        .fetch_one(&mut *conn)
        .await?;
    if sv != *schema_version {
        // A migration may have added a column (an entity registered by name syncs it)
        // or recreated a table, and dropped its triggers with it.
        let matching = registry.refresh(conn).await?;
        let steps = capture::refresh(conn, &matching, generation).await?;
        if steps > 0 {
            tracing::info!(
                steps,
                "change-capture triggers rewritten after a schema change"
            );
        }
        *schema_version = sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&mut *conn)
            .await?;
    }
    let entities = registry.load();
    const PAGE: i64 = 1000;
    let from = *cursor;
    loop {
        let rows = log::read_after(conn, *cursor, PAGE).await?;
        for row in &rows {
            *cursor = row.version;
            // Nobody listening: skip the encoding. A stream that subscribes later reads
            // the log from its own cursor, so nothing is lost.
            if hub.tx.receiver_count() == 0 {
                continue;
            }
            let Some(entity) = entities.get(&row.entity) else {
                continue;
            };
            let event = LogEvent {
                version: row.version,
                entity: entity.name.clone(),
                json: wire::encode(entity, row, true),
            };
            // Every receiver may have gone since the check: that is fine.
            let _ = hub.tx.send(Arc::new(event));
        }
        if (rows.len() as i64) < PAGE {
            if *cursor > from {
                tracing::debug!(from, to = *cursor, "broadcast committed changes");
            }
            return Ok(());
        }
    }
}
