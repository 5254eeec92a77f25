//! Following the log on PostgreSQL: each engine numbers committed entries (see
//! [`super::stamp`]) and sends its streams what is new, from its own high-water mark.
//!
//! What wakes the tailer — a notification on [`CHANNEL`] (some engine numbered a
//! batch), a write through this engine, or the poll timer — only says "look again": the
//! log is the source of truth, so a notification lost with a dropped listener
//! connection costs at most one poll interval, never a change. `LISTEN` needs a session
//! of its own on the server: behind a transaction-mode pooler (PgBouncer's `pool_mode =
//! transaction`) notifications are not delivered and only the timer wakes the tailer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;

use super::{capture, own_options, stamp, CHANNEL, LISTENER, TAILER};
use crate::broadcast::{publish, Follow, Hub, Position};
use crate::cursor;
use crate::error::Result;

/// How often the log is read even when the counter has not moved.
const RECHECK: Duration = Duration::from_secs(1);

/// Tails the log from `cursor` until the task is aborted.
pub(crate) async fn tail(
    pool: PgPool,
    mut conn: PgConnection,
    hub: Arc<Hub>,
    follow: Follow,
    poll: Duration,
    cursor: i64,
    schema: String,
) {
    let notified = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(pool.clone(), notified.clone(), poll));
    // The listener ends with the tailer (the task is aborted, this guard dropped).
    let _listener = AbortOnDrop(listener);
    let mut at = Position {
        version: cursor,
        token: String::new(),
    };
    let mut checked = Instant::now();
    let mut schema = schema;
    loop {
        let ticked = async {
            if at.token.is_empty() {
                at.token = cursor::token(&mut conn, &follow.log_id, at.version).await?;
            }
            let (head, pending) = stamp::probe(&mut conn).await?;
            if pending {
                stamp::stamp(&mut conn).await?;
            }
            // An idle tick costs the probe alone; now and then the log is read anyway,
            // to notice a restored database whose head is where ours was.
            if checked.elapsed() >= RECHECK {
                // A failure here must not stop the events of every entity: it is logged
                // and tried again at the next check.
                if let Err(error) = follow_schema(&mut conn, &follow, &mut schema).await {
                    tracing::warn!(%error, "a schema change could not be followed; trying again");
                }
            }
            if pending || head != at.version || checked.elapsed() >= RECHECK {
                checked = Instant::now();
                publish(&mut conn, &hub, &follow, &mut at).await?;
            }
            Ok::<(), crate::Error>(())
        };
        if let Err(error) = ticked.await {
            tracing::warn!(%error, "change-log tailer failed; retrying");
            if conn.ping().await.is_err() {
                // Keep the old connection until a new one can be had.
                match PgConnection::connect_with(&own_options(&pool, TAILER)).await {
                    Ok(fresh) => {
                        conn = fresh;
                        // What woke this tick is still to be read: read again now
                        // rather than at the next wake-up, which may be a poll away.
                        continue;
                    }
                    Err(error) => tracing::warn!(%error, "tailer cannot reconnect"),
                }
            }
        }
        tokio::select! {
            _ = notified.notified() => {}
            _ = hub.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// What a schema change would alter for the registered tables: each column (by table
/// oid, so a recreated table differs), how many capture triggers they have, and their
/// partitions (one attached or detached adds or removes rows no trigger saw).
const SCHEMA: &str = "
WITH _rels AS (SELECT to_regclass(quote_ident(t)) AS oid FROM unnest($1::text[]) AS t)
SELECT coalesce((SELECT string_agg(format('%s/%s/%s/%s', a.attrelid::int8, a.attnum, a.attname,
                                          a.atttypid::int8), ',' ORDER BY a.attrelid, a.attnum)
                 FROM pg_attribute a WHERE a.attrelid IN (SELECT oid FROM _rels)
                 AND a.attnum > 0 AND NOT a.attisdropped), '')
    || '|' || (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM _rels)
               AND t.tgname IN ('_rhtmx_sync_capture', '_rhtmx_sync_truncate'))
    || '|' || coalesce((SELECT string_agg(p.relid::int8::text, ',' ORDER BY p.relid)
                        FROM _rels, pg_partition_tree(_rels.oid) AS p
                        WHERE p.relid <> _rels.oid), '')";

/// Where the schema of `tables` stands now (see [`SCHEMA`]).
pub(super) async fn schema_of(conn: &mut PgConnection, tables: &[String]) -> Result<String> {
    Ok(sqlx::query_scalar(SCHEMA)
        .bind(tables)
        .fetch_one(&mut *conn)
        .await?)
}

/// Follows a migration made while the app runs: when a registered table's columns or
/// capture triggers changed since `seen` (a column added, a table recreated), reads the
/// entities again and installs their capture anew (which logs what the triggers
/// missed).
async fn follow_schema(conn: &mut PgConnection, follow: &Follow, seen: &mut String) -> Result<()> {
    let tables: Vec<String> = follow
        .registry
        .load()
        .list()
        .map(|e| e.table.clone())
        .collect();
    if *seen == schema_of(conn, &tables).await? {
        return Ok(());
    }
    let refreshed = follow.registry.refresh(conn).await?;
    capture::install(conn, &refreshed.matching).await?;
    follow.registry.publish(refreshed);
    tracing::info!("a registered table changed: its capture follows it");
    // Read again: the installation itself may have added triggers.
    *seen = schema_of(conn, &tables).await?;
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens on [`CHANNEL`] on a connection of its own (not one of the app's), waking
/// the tailer on each notification and after each loss of the connection (what was
/// notified meanwhile is gone: the tailer reads the log again).
async fn listen(pool: PgPool, notified: Arc<Notify>, poll: Duration) {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(own_options(&pool, LISTENER));
    let mut failures = 0u32;
    loop {
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "cannot connect to listen for changes; polling meanwhile");
                tokio::time::sleep(poll.max(Duration::from_millis(100)) * failures.min(50)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            failures += 1;
            tracing::warn!(%error, "cannot listen for changes; polling meanwhile");
            tokio::time::sleep(poll.max(Duration::from_millis(100)) * failures.min(50)).await;
            continue;
        }
        failures = 0;
        // Notifications sent before LISTEN took effect were missed: look again.
        notified.notify_one();
        // On a lost connection, listen again from the top rather than through
        // `PgListener`'s own reconnection: the tailer's re-read must come after the new
        // `LISTEN` took effect, or a notification sent in between would be missed until
        // the next poll.
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => notified.notify_one(),
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "the change listener's connection failed; reconnecting");
                    notified.notify_one();
                    tokio::time::sleep(poll.max(Duration::from_millis(100))).await;
                    break;
                }
            }
        }
    }
}
