//! [`OperatorFigures`]: what the operator view shows, read from the database and the
//! engine's memory at the moment of asking.
//!
//! Every database figure is counted by SQL when asked, all in one read transaction, so
//! they agree with each other and with a `SELECT` made at the same moment: no cached
//! estimates. That costs one pass over the change log (and one over the idempotency
//! table) per call: cheap for an operator's page or a metric every minute, not for
//! every request.

use serde::Serialize;
#[cfg(feature = "sqlite")]
use sqlx::SqliteConnection;

use crate::conflict::Conflict;
use crate::error::Result;
#[cfg(feature = "sqlite")]
use crate::log;
use crate::SyncEngine;

/// How many of the latest conflicts the figures carry.
const RECENT_CONFLICTS: i64 = 20;

/// Everything the operator view shows, as of [`read_at_ms`](Self::read_at_ms).
///
/// Serialized (the JSON of the operator routes) with these field names; times are Unix
/// milliseconds, sizes bytes, versions log versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OperatorFigures {
    /// When the figures were read, Unix milliseconds (the server's clock).
    pub read_at_ms: u64,
    /// The change log, `_rhtmx_sync_log`.
    pub log: LogFigures,
    /// The event streams open now.
    pub streams: StreamFigures,
    /// The idempotency store, `_rhtmx_sync_idempotency`.
    pub idempotency: IdempotencyFigures,
    /// The latest conflicts the log carries, newest first (at most 20).
    pub recent_conflicts: Vec<ConflictFigure>,
    /// The errors the engine's routes answered with lately.
    pub errors: ErrorFigures,
    /// What the latest compaction pass of this engine did (`None` before the first;
    /// another instance's passes are not counted here).
    pub last_compaction: Option<crate::CompactionReport>,
}

/// The change log's size and pace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LogFigures {
    /// Entries in the log: `SELECT count(*) FROM _rhtmx_sync_log`.
    pub rows: u64,
    /// Bytes its entries' values take (every column's text, as UTF-8). SQLite's own
    /// overhead (pages, indexes, the version integer) is not included; see
    /// [`database_bytes`](Self::database_bytes) for the file.
    pub bytes: u64,
    /// The oldest version still in the log (`min(version)`); `None` when it is empty.
    pub oldest_version: Option<i64>,
    /// The highest version ever assigned (0 for a log never written): what
    /// [`SyncEngine::head`] answers. It is `max(version)` unless the newest entries
    /// were deleted by hand; versions are never reused.
    pub head_version: i64,
    /// Versions at or below this may have been compacted away: a client resuming from
    /// there resets. 0 when nothing was.
    pub horizon: i64,
    /// Entries written within the last 60 seconds, by the database's clock.
    pub changes_last_minute: u64,
    /// Entries written within the last 3600 seconds, by the database's clock.
    pub changes_last_hour: u64,
    /// Entries that carry a resolved conflict.
    pub conflicts: u64,
    /// The whole database file (`page_count × page_size`, free pages included), bytes.
    pub database_bytes: u64,
}

/// The event streams open now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamFigures {
    /// How many are open (the length of [`list`](Self::list)).
    pub open: usize,
    /// The most that may be open at once
    /// ([`max_event_streams`](crate::SyncEngineBuilder::max_event_streams)).
    pub limit: usize,
    /// Each open stream, oldest first.
    pub list: Vec<StreamFigure>,
}

/// One open event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamFigure {
    /// A number for this stream, unique within the engine, in the order they opened.
    pub id: u64,
    /// The signed-in user it reads as, if any (see
    /// [`authenticate`](crate::SyncEngineBuilder::authenticate)).
    pub user: Option<String>,
    /// That user's tenant, if any.
    pub tenant: Option<String>,
    /// When it opened, Unix milliseconds.
    pub connected_at_ms: u64,
    /// How long it has been open, whole seconds.
    pub connected_secs: u64,
    /// The last log version the stream has sent its client, or passed over as not
    /// theirs (another entity, outside their scope): the `version` of its last event
    /// id, or further.
    pub cursor: i64,
    /// How many versions it is behind the log's head (0 when caught up).
    pub behind: i64,
}

/// The idempotency store (see [`IdempotencyLayer`](crate::IdempotencyLayer)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IdempotencyFigures {
    /// Keys stored, completed or in flight: `SELECT count(*) FROM _rhtmx_sync_idempotency`.
    pub keys: u64,
    /// Of those, keys whose request is still running (or was abandoned and not yet
    /// taken over).
    pub in_flight: u64,
    /// Bytes their data takes, counted as [`IdempotencyUsage::bytes`](crate::IdempotencyUsage).
    pub bytes: u64,
}

/// A conflict the log carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConflictFigure {
    /// The version of the log entry that carries its resolution.
    pub version: i64,
    /// When that entry was written, Unix milliseconds (the database's clock).
    pub at_ms: u64,
    /// The conflict, as the push response and the event stream report it.
    pub conflict: Conflict,
}

/// The errors the engine's routes ([`SyncEngine::routes`]) answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ErrorFigures {
    /// Errors answered since the engine was built.
    pub total: u64,
    /// The latest, newest first (at most 50; kept in memory, so a restart empties it).
    pub recent: Vec<ErrorFigure>,
}

/// One error a route answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ErrorFigure {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The HTTP status answered.
    pub status: u16,
    /// The request's method.
    pub method: String,
    /// The request's path, without its query.
    pub path: String,
    /// The error's full message (at most 300 bytes), internals included: a database
    /// error's text, which the client was not sent.
    pub message: String,
}

/// Reads every figure of `engine` now.
pub(crate) async fn read(engine: &SyncEngine) -> Result<OperatorFigures> {
    let inner = &engine.inner;
    let (log, idempotency, recent_conflicts) = match &inner.pool {
        #[cfg(feature = "sqlite")]
        crate::Pool::Sqlite(pool) => {
            // One deferred transaction: every SELECT below reads the same snapshot.
            let mut tx = pool.begin().await?;
            let log = log_figures(&mut tx).await?;
            let idempotency = idempotency_figures(&mut tx).await?;
            let recent_conflicts = recent_conflicts(&mut tx).await?;
            tx.rollback().await?;
            (log, idempotency, recent_conflicts)
        }
        #[cfg(feature = "postgres")]
        crate::Pool::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            crate::backend::postgres::figures::read(&mut conn, RECENT_CONFLICTS).await?
        }
    };
    let read_at_ms = crate::hlc::system_ms();
    let list: Vec<StreamFigure> = inner
        .open_streams
        .list()
        .into_iter()
        .map(|s| StreamFigure {
            id: s.id,
            user: s.principal.user,
            tenant: s.principal.tenant,
            connected_at_ms: s.since_ms,
            connected_secs: read_at_ms.saturating_sub(s.since_ms) / 1000,
            cursor: s.cursor,
            behind: (log.head_version - s.cursor).max(0),
        })
        .collect();
    let (recent, total) = inner.recent_errors.read();
    Ok(OperatorFigures {
        read_at_ms,
        last_compaction: engine.last_compaction(),
        log,
        streams: StreamFigures {
            open: list.len(),
            limit: inner.options.max_event_streams,
            list,
        },
        idempotency,
        recent_conflicts,
        errors: ErrorFigures { total, recent },
    })
}

#[cfg(feature = "sqlite")]
/// The log's figures, in one pass over it. `created_at` is ISO 8601 in UTC to the
/// millisecond (`log::DDL`), so it compares as text with the same shape made by
/// `strftime`.
const LOG_FIGURES: &str = concat!(
    "SELECT count(*), coalesce(sum(",
    "coalesce(length(CAST(entity AS BLOB)), 0) + coalesce(length(CAST(entity_id AS BLOB)), 0)",
    " + coalesce(length(CAST(action AS BLOB)), 0) + coalesce(length(CAST(data AS BLOB)), 0)",
    " + coalesce(length(CAST(changed AS BLOB)), 0) + coalesce(length(CAST(client_id AS BLOB)), 0)",
    " + coalesce(length(CAST(hlc AS BLOB)), 0) + coalesce(length(CAST(created_at AS BLOB)), 0)",
    " + coalesce(length(CAST(conflict AS BLOB)), 0) + coalesce(length(CAST(digest AS BLOB)), 0)",
    " + coalesce(length(CAST(scope_before AS BLOB)), 0)",
    " + coalesce(length(CAST(scope_after AS BLOB)), 0)), 0), ",
    "min(version), ",
    "coalesce(sum(created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-60 seconds')), 0), ",
    "coalesce(sum(created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3600 seconds')), 0), ",
    "coalesce(sum(conflict IS NOT NULL), 0) ",
    "FROM _rhtmx_sync_log"
);

#[cfg(feature = "sqlite")]
async fn log_figures(conn: &mut SqliteConnection) -> Result<LogFigures> {
    let (rows, bytes, oldest_version, minute, hour, conflicts): (
        i64,
        i64,
        Option<i64>,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(LOG_FIGURES).fetch_one(&mut *conn).await?;
    let database_bytes: i64 = sqlx::query_scalar(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(LogFigures {
        rows: count(rows),
        bytes: count(bytes),
        oldest_version,
        head_version: log::head(conn).await?,
        horizon: log::horizon(conn).await?,
        changes_last_minute: count(minute),
        changes_last_hour: count(hour),
        conflicts: count(conflicts),
        database_bytes: count(database_bytes),
    })
}

#[cfg(feature = "sqlite")]
async fn idempotency_figures(conn: &mut SqliteConnection) -> Result<IdempotencyFigures> {
    // The same sum as the running totals' triggers (`idempotency::store`).
    let (keys, in_flight, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(state = 'in_flight'), 0), \
         coalesce(sum(length(key) + length(fingerprint) \
             + coalesce(length(headers), 0) + coalesce(length(body), 0)), 0) \
         FROM _rhtmx_sync_idempotency",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(IdempotencyFigures {
        keys: count(keys),
        in_flight: count(in_flight),
        bytes: count(bytes),
    })
}

#[cfg(feature = "sqlite")]
async fn recent_conflicts(conn: &mut SqliteConnection) -> Result<Vec<ConflictFigure>> {
    // A conflict is stored without the version of the entry carrying it (`log.rs`).
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, \
         CAST(strftime('%s', created_at) AS INTEGER) * 1000 \
             + CAST(substr(created_at, 21, 3) AS INTEGER), \
         CAST(json_set(conflict, '$.version', version) AS BLOB) \
         FROM _rhtmx_sync_log WHERE conflict IS NOT NULL ORDER BY version DESC LIMIT ?",
    )
    .bind(RECENT_CONFLICTS)
    .fetch_all(&mut *conn)
    .await?;
    Ok(conflict_figures(rows))
}

/// The latest conflicts from `(version, at Unix ms, conflict JSON)` rows, on any backend.
pub(crate) fn conflict_figures(
    rows: impl IntoIterator<Item = (i64, i64, impl AsRef<[u8]>)>,
) -> Vec<ConflictFigure> {
    let mut out = Vec::new();
    for (version, at_ms, json) in rows {
        match serde_json::from_slice::<Conflict>(json.as_ref()) {
            Ok(conflict) => out.push(ConflictFigure {
                version,
                at_ms: u64::try_from(at_ms).unwrap_or(0),
                conflict,
            }),
            // Written by this crate, so only a hand-edited entry gets here: leave it
            // out of the list rather than fail the whole view.
            Err(error) => tracing::warn!(version, %error, "a logged conflict is unreadable"),
        }
    }
    out
}

/// A SQL count as `u64` (never negative).
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
