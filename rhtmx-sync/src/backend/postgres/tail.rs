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

use super::{own_options, stamp, CHANNEL, LISTENER, TAILER};
use crate::broadcast::{publish, Follow, Hub, Position};
use crate::cursor;

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
                    Ok(fresh) => conn = fresh,
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
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => notified.notify_one(),
                Ok(None) => {
                    // The connection was lost and re-established.
                    notified.notify_one();
                }
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
