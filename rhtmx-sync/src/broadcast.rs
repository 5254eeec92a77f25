//! Broadcast: one task tails the change log and fans each committed change out to every
//! event stream.
//!
//! The log, not an in-memory list of senders, is the source of truth: the tailer reads
//! what was *committed* (by this process or any other writing the same file), so an
//! event is never sent for a rolled-back write and never missed for a foreign one. A
//! stream that falls behind the bounded channel catches up from the log.

use std::sync::Arc;
#[cfg(feature = "sqlite")]
use std::time::Duration;

#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqliteConnectOptions;
#[cfg(feature = "sqlite")]
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{broadcast, watch, Notify};

use crate::backend::ReadLog;
#[cfg(feature = "sqlite")]
use crate::capture;
use crate::cursor;
use crate::engine::Registry;
use crate::scope::{Read, View};
use crate::wire;

/// What the tailer sends every stream.
#[derive(Debug)]
pub(crate) enum LogEvent {
    /// A committed change, encoded once for every stream.
    Change {
        version: i64,
        /// The event's `id:`, a cursor (`"{version}.{tag}"`).
        id: String,
        entity: Arc<str>,
        /// The event's `data:` JSON.
        json: String,
        /// Who may see it, for a scoped entity's entry (see [`crate::scope`]).
        scoped: Option<Box<Scoped>>,
    },
    /// The log is no longer the history the streams follow (its head went back, or the
    /// entry at the tailer's cursor changed: the database was restored or replaced).
    /// Every stream sends its client a reset to `head`.
    Reset { head: i64, id: String },
}

/// A scoped entity's change: its scopes, and how it reads to those it moved away
/// from or towards, encoded once for every stream.
#[derive(Debug)]
pub(crate) struct Scoped {
    pub action: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// `(removal, entering)` JSON, when the change moved the row to another scope.
    pub moved: Option<(String, String)>,
}

impl Scoped {
    fn of(entity: &crate::entity::Entity, row: &crate::log::LogRow) -> Option<Box<Scoped>> {
        entity.scope_column()?;
        let moved = (row.action == "update" && row.scope_before != row.scope_after).then(|| {
            (
                wire::encode_as(entity, row, true, View::Removal),
                wire::encode_as(entity, row, true, View::Entering),
            )
        });
        Some(Box::new(Scoped {
            action: row.action.clone(),
            before: row.scope_before.clone(),
            after: row.scope_after.clone(),
            moved,
        }))
    }

    /// The `data:` a reader with `read` gets (`None`: nothing).
    pub(crate) fn data<'a>(&'a self, read: &Read, json: &'a str) -> Option<&'a str> {
        match read.view(&self.action, self.before.as_deref(), self.after.as_deref()) {
            View::Hidden => None,
            View::AsIs => Some(json),
            View::Removal => self.moved.as_ref().map(|m| m.0.as_str()),
            View::Entering => self.moved.as_ref().map(|m| m.1.as_str()),
        }
    }
}

/// Shared between the tailer, the streams and the push handler.
pub(crate) struct Hub {
    pub tx: broadcast::Sender<Arc<LogEvent>>,
    /// Wakes the tailer at once after this process committed a change.
    pub wake: Notify,
    /// Becomes `true` once, at shutdown: every event stream ends.
    pub closing: watch::Sender<bool>,
    /// Counts [`SyncEngine::access_changed`](crate::SyncEngine::access_changed) calls:
    /// every stream asks again what its client may read.
    pub access: watch::Sender<u64>,
    /// Principals whose streams end at once ([`SyncEngine::revoke`](crate::SyncEngine::revoke)).
    pub revoked: broadcast::Sender<crate::Principal>,
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Self {
        Hub {
            tx: broadcast::channel(capacity).0,
            wake: Notify::new(),
            closing: watch::Sender::new(false),
            access: watch::Sender::new(0),
            revoked: broadcast::channel(64).0,
        }
    }
}

/// Where the tailer stands: the last version it read, and that entry's tag.
pub(crate) struct Position {
    pub version: i64,
    pub token: String,
}

/// What the tailer follows: the entities (and the trigger generation it installed them
/// with) and the log's identity its cursors are tagged with.
pub(crate) struct Follow {
    pub registry: Arc<Registry>,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub generation: i64,
    pub log_id: Arc<str>,
}

#[cfg(feature = "sqlite")]
/// The last `PRAGMA data_version` and `schema_version` a tick saw (-1: none yet).
struct Seen {
    data_version: i64,
    schema_version: i64,
    /// When the triggers were last checked against the claims.
    checked: std::time::Instant,
    /// Failed checks in a row: the next one comes after a backoff, not at the next poll.
    failures: u32,
}

#[cfg(feature = "sqlite")]
impl Seen {
    /// Nothing seen yet: the first tick checks everything.
    fn new() -> Seen {
        Seen {
            data_version: -1,
            schema_version: -1,
            checked: std::time::Instant::now(),
            failures: 0,
        }
    }
}

#[cfg(feature = "sqlite")]
/// How often the triggers are checked even without a schema change: a pause left by
/// `drop_triggers` ends without one (the migration that should follow it failed).
const RECHECK: Duration = Duration::from_secs(30);

#[cfg(feature = "sqlite")]
/// How soon after a schema change the triggers are checked a second time.
const SECOND_LOOK: Duration = Duration::from_millis(250);

#[cfg(feature = "sqlite")]
/// Tails the log from `cursor` until the task is aborted.
///
/// Each tick costs one `PRAGMA data_version` (answered from shared memory, no disk read);
/// the log is only read when another connection committed something.
pub(crate) async fn tail(
    options: SqliteConnectOptions,
    mut conn: SqliteConnection,
    hub: Arc<Hub>,
    follow: Follow,
    poll: Duration,
    cursor: i64,
) {
    let log_id = follow.log_id.clone();
    let mut seen = Seen::new();
    let mut at = Position {
        version: cursor,
        token: String::new(),
    };
    loop {
        if at.token.is_empty() {
            match cursor::token(&mut conn, &log_id, at.version).await {
                Ok(token) => at.token = token,
                Err(error) => tracing::warn!(%error, "change-log tailer cannot read its cursor"),
            }
        }
        match tick(&mut conn, &hub, &follow, &mut at, &mut seen).await {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(%error, "change-log tailer failed; retrying");
                seen.data_version = -1;
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

#[cfg(feature = "sqlite")]
async fn tick(
    conn: &mut SqliteConnection,
    hub: &Hub,
    follow: &Follow,
    at: &mut Position,
    seen: &mut Seen,
) -> crate::Result<()> {
    let (registry, generation) = (&follow.registry, follow.generation);
    let dv: i64 = sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await?;
    let due = seen.checked.elapsed() >= RECHECK;
    if dv == seen.data_version && !due {
        return Ok(());
    }
    seen.data_version = dv;
    let sv: i64 = sqlx::query_scalar("PRAGMA schema_version")
        .fetch_one(&mut *conn)
        .await?;
    if sv != seen.schema_version || due {
        seen.checked = std::time::Instant::now();
        // A migration may have added a column (an entity registered by name syncs it)
        // or recreated a table, and dropped its triggers with it. A failure here must
        // not stop the events of every entity: it is logged and tried again at the next
        // check.
        let refreshed = async {
            let refreshed = registry.refresh(conn).await?;
            let steps = capture::refresh(conn, &refreshed.matching, generation).await?;
            registry.publish(refreshed);
            Ok::<_, crate::Error>(steps)
        };
        match refreshed.await {
            Ok(steps) => {
                seen.failures = 0;
                if sv != seen.schema_version {
                    // Check once more shortly after a schema change: a connection can
                    // still read part of the schema from before it for a moment.
                    let now = std::time::Instant::now();
                    seen.checked = now.checked_sub(RECHECK - SECOND_LOOK).unwrap_or(now);
                }
                if steps > 0 {
                    tracing::info!(
                        steps,
                        "change-capture triggers rewritten after a schema change"
                    );
                }
            }
            Err(error) => {
                // Often transient (the lock was busy); retried soon, then less often.
                let wait = Duration::from_millis(250u64 << seen.failures.min(7)).min(RECHECK);
                seen.failures += 1;
                let now = std::time::Instant::now();
                seen.checked = now.checked_sub(RECHECK - wait).unwrap_or(now);
                tracing::warn!(
                    %error,
                    retry_ms = wait.as_millis() as u64,
                    "change-capture triggers could not be checked; trying again"
                );
            }
        }
        seen.schema_version = sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&mut *conn)
            .await?;
    }
    publish(conn, hub, follow, at).await
}

/// Sends every stream what was committed after `at`, or one reset if the log is no
/// longer the history `at` stands on. The same on every backend: only what wakes the
/// caller differs.
pub(crate) async fn publish(
    conn: &mut impl ReadLog,
    hub: &Hub,
    follow: &Follow,
    at: &mut Position,
) -> crate::Result<()> {
    let (registry, log_id) = (&follow.registry, &*follow.log_id);
    // Is the log still the history we follow? Its head must not be behind us, and the
    // entry we stand on must be the one we read (a restored copy may have reused it).
    // An entry gone altogether was compacted or erased under us: a restored copy holds
    // its own entry at every version up to its head.
    let head = conn.head().await?;
    let entry = conn.entry_at(at.version).await?;
    let gone = at.version > 0 && entry.is_none();
    let token = format!(
        "{}.{}",
        at.version,
        cursor::tag(log_id, at.version, entry.as_ref())
    );
    if head < at.version || (!gone && token != at.token) {
        let id = cursor::token(conn, log_id, head).await?;
        tracing::warn!(
            from = at.version,
            head,
            "the change log is not the history it was (the database was restored or \
             replaced): every event stream resets"
        );
        *at = Position {
            version: head,
            token: id.clone(),
        };
        let _ = hub.tx.send(Arc::new(LogEvent::Reset { head, id }));
        return Ok(());
    }
    let entities = registry.load();
    const PAGE: i64 = 1000;
    let from = at.version;
    loop {
        let rows = conn.read_after(at.version, PAGE).await?;
        for row in &rows {
            at.version = row.version;
            // Nobody listening: skip the encoding. A stream that subscribes later reads
            // the log from its own cursor, so nothing is lost.
            if hub.tx.receiver_count() == 0 {
                at.token.clear();
                continue;
            }
            let id = cursor::token_of(log_id, row);
            at.token = id.clone();
            let Some(entity) = entities.get(&row.entity) else {
                continue;
            };
            let event = LogEvent::Change {
                version: row.version,
                id,
                entity: entity.name.clone(),
                json: wire::encode(entity, row, true),
                scoped: Scoped::of(entity, row),
            };
            // Every receiver may have gone since the check: that is fine.
            let _ = hub.tx.send(Arc::new(event));
        }
        if at.token.is_empty() {
            if let Some(last) = rows.last() {
                at.token = cursor::token_of(log_id, last);
            }
        }
        if (rows.len() as i64) < PAGE {
            if at.version > from {
                tracing::debug!(from, to = at.version, "broadcast committed changes");
            }
            return Ok(());
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::engine::Registry;
    use crate::entity::{Entity, EntitySpec};
    use crate::log;

    async fn setup() -> (SqliteConnection, Hub, Follow) {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        log::migrate(&mut conn).await.unwrap();
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        let spec = EntitySpec::named("t");
        let entity = Arc::new(Entity::resolve(&mut conn, spec.clone()).await.unwrap());
        let generation = capture::claim(&mut conn, std::slice::from_ref(&entity))
            .await
            .unwrap();
        let log_id = log::log_id(&mut conn).await.unwrap();
        let follow = Follow {
            registry: Arc::new(Registry::new(vec![spec], vec![entity])),
            generation,
            log_id: log_id.into(),
        };
        (conn, Hub::new(16), follow)
    }

    #[tokio::test]
    async fn a_tick_sends_each_committed_change_once_with_its_cursor() {
        let (mut conn, hub, follow) = setup().await;
        let log_id = follow.log_id.clone();
        let mut seen = Seen::new();
        let mut rx = hub.tx.subscribe();
        let mut at = Position {
            version: 0,
            token: cursor::token(&mut conn, &log_id, 0).await.unwrap(),
        };
        sqlx::query("INSERT INTO t VALUES ('a', '1'), ('b', '2')")
            .execute(&mut conn)
            .await
            .unwrap();
        tick(&mut conn, &hub, &follow, &mut at, &mut seen)
            .await
            .unwrap();
        for expected in [1, 2] {
            match &*rx.try_recv().unwrap() {
                LogEvent::Change { version, id, .. } => {
                    assert_eq!(*version, expected);
                    assert_eq!(
                        *id,
                        cursor::token(&mut conn, &log_id, expected).await.unwrap()
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(rx.try_recv().is_err(), "nothing twice");
        assert_eq!(at.version, 2);
    }

    #[tokio::test]
    async fn a_log_cut_back_and_reused_sends_one_reset() {
        let (mut conn, hub, follow) = setup().await;
        let log_id = follow.log_id.clone();
        let mut seen = Seen::new();
        sqlx::query("INSERT INTO t VALUES ('a', '1'), ('b', '2'), ('c', '3')")
            .execute(&mut conn)
            .await
            .unwrap();
        let mut at = Position {
            version: 3,
            token: cursor::token(&mut conn, &log_id, 3).await.unwrap(),
        };
        let mut rx = hub.tx.subscribe();
        // What a restore does: versions 2 and 3 now name other changes (x and y, then
        // the deletes of b and c at 4 and 5). Other rows, so the tags differ even within
        // the millisecond this test runs in (a row's entries of one millisecond share
        // their effective HLC; a restore is never that quick).
        sqlx::raw_sql(
            "DELETE FROM _rhtmx_sync_log WHERE version > 1;
             UPDATE sqlite_sequence SET seq = 1 WHERE name = '_rhtmx_sync_log';
             INSERT INTO t VALUES ('x', '9'), ('y', '9');
             DELETE FROM t WHERE id IN ('b', 'c');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        tick(&mut conn, &hub, &follow, &mut at, &mut seen)
            .await
            .unwrap();
        match &*rx.try_recv().unwrap() {
            LogEvent::Reset { head, .. } => assert_eq!(*head, 5),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "exactly one reset");
        // It follows the new history from there.
        sqlx::query("INSERT INTO t VALUES ('z', '0')")
            .execute(&mut conn)
            .await
            .unwrap();
        seen.data_version = -1;
        tick(&mut conn, &hub, &follow, &mut at, &mut seen)
            .await
            .unwrap();
        assert!(matches!(
            &*rx.try_recv().unwrap(),
            LogEvent::Change { version: 6, .. }
        ));
    }
}
