//! The key table: claiming a key, storing the response, releasing, pruning.
//!
//! Each claim of a key gets an `attempt` number, and completing or releasing only
//! touches the row of one's own attempt: a request that outlived its lease and was taken
//! over can neither overwrite nor delete its successor's claim.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "sqlite")]
use sqlx::{Connection, SqliteConnection, SqlitePool};

use super::response::Stored;
#[cfg(feature = "postgres")]
use crate::backend::postgres::idempotency as pg;
use crate::error::Result;
use crate::Pool;

#[cfg(feature = "sqlite")]
/// The key table, its pruning index, and its running totals (kept by triggers, so
/// every writer and every process counts), one statement each.
const DDL: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS _rhtmx_sync_idempotency (
        key          TEXT PRIMARY KEY NOT NULL,
        fingerprint  TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
        attempt      INTEGER NOT NULL DEFAULT 1,
        status       INTEGER,
        headers      TEXT,
        body         BLOB,
        created_at   INTEGER NOT NULL,
        locked_until INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS _rhtmx_sync_idempotency_created
        ON _rhtmx_sync_idempotency (created_at)",
    "CREATE TABLE IF NOT EXISTS _rhtmx_sync_idempotency_usage (
        id    INTEGER PRIMARY KEY CHECK (id = 0),
        keys  INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )",
    // Started from what the table holds when the totals are first created (a table
    // from before they existed). Inside the migration's transaction, so no write
    // falls between this count and the triggers.
    "INSERT OR IGNORE INTO _rhtmx_sync_idempotency_usage (id, keys, bytes)
        SELECT 0, count(*), coalesce(sum(length(key) + length(fingerprint)
            + coalesce(length(headers), 0) + coalesce(length(body), 0)), 0)
        FROM _rhtmx_sync_idempotency",
    "CREATE TRIGGER IF NOT EXISTS _rhtmx_sync_idempotency_usage_insert
        AFTER INSERT ON _rhtmx_sync_idempotency BEGIN
        UPDATE _rhtmx_sync_idempotency_usage SET keys = keys + 1, bytes = bytes
            + length(NEW.key) + length(NEW.fingerprint)
            + coalesce(length(NEW.headers), 0) + coalesce(length(NEW.body), 0);
    END",
    "CREATE TRIGGER IF NOT EXISTS _rhtmx_sync_idempotency_usage_update
        AFTER UPDATE ON _rhtmx_sync_idempotency BEGIN
        UPDATE _rhtmx_sync_idempotency_usage SET bytes = bytes
            + length(NEW.key) + length(NEW.fingerprint)
            + coalesce(length(NEW.headers), 0) + coalesce(length(NEW.body), 0)
            - length(OLD.key) - length(OLD.fingerprint)
            - coalesce(length(OLD.headers), 0) - coalesce(length(OLD.body), 0);
    END",
    "CREATE TRIGGER IF NOT EXISTS _rhtmx_sync_idempotency_usage_delete
        AFTER DELETE ON _rhtmx_sync_idempotency BEGIN
        UPDATE _rhtmx_sync_idempotency_usage SET keys = keys - 1, bytes = bytes
            - length(OLD.key) - length(OLD.fingerprint)
            - coalesce(length(OLD.headers), 0) - coalesce(length(OLD.body), 0);
    END",
];

#[cfg(feature = "sqlite")]
/// Creates the key table and its totals if they are missing; safe to run from several
/// processes.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    for statement in DDL {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(feature = "sqlite")]
/// Inserts a fresh claim, or takes over an abandoned one (same request, lease expired);
/// returns the attempt number only when this request now holds the key.
const CLAIM: &str = "
INSERT INTO _rhtmx_sync_idempotency
    (key, fingerprint, state, attempt, created_at, locked_until)
VALUES (?1, ?2, 'in_flight', 1, ?3, ?4)
ON CONFLICT (key) DO UPDATE SET
    attempt = attempt + 1,
    created_at = excluded.created_at,
    locked_until = excluded.locked_until
WHERE state = 'in_flight'
    AND locked_until <= excluded.created_at
    AND fingerprint = excluded.fingerprint
RETURNING attempt";

/// How often at most a request prunes old keys.
const PRUNE_EVERY: i64 = 60_000;

/// A stored key's `(fingerprint, state, status, headers, body)`.
pub(crate) type KeyRow = (String, String, Option<i64>, Option<String>, Option<Vec<u8>>);

/// What a claim's statement found: the key is now ours, or held as this row.
#[derive(Debug)]
pub(crate) enum Found {
    Won(i64),
    Existing(KeyRow),
}

/// What claiming a key found.
#[derive(Debug)]
pub(super) enum Claim {
    /// This request holds the key now, as this attempt.
    Won(i64),
    /// The same request completed before: replay this.
    Completed(Stored),
    /// The key was used for a different request.
    Mismatch,
    /// The same request is still running elsewhere.
    InFlight,
}

/// The key table, over the engine's pool.
#[derive(Debug, Clone)]
pub(super) struct Store {
    pool: crate::Pool,
    /// Unix ms of the last prune, shared by every clone of one layer.
    last_prune: Arc<AtomicI64>,
}

impl Store {
    pub(super) fn new(pool: crate::Pool) -> Store {
        Store {
            pool,
            last_prune: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The running totals of the table.
    pub(super) async fn usage(&self) -> Result<super::IdempotencyUsage> {
        match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => super::budget::usage(pool).await,
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => pg::usage(&mut *pool.acquire().await?).await,
        }
    }

    /// Brings the table back within `budget` if it is over.
    pub(super) async fn keep_within(&self, budget: super::budget::Budget) {
        super::budget::keep_within(&self.pool, budget).await;
    }

    /// Claims `key` for a request with `fingerprint`, or reports why not.
    pub(super) async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Claim> {
        let until = now.saturating_add(millis(lease));
        let found = match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => claim_sqlite(pool, key, fingerprint, now, until).await?,
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => pg::claim(pool, key, fingerprint, now, until).await?,
        };
        Ok(match found {
            Found::Won(attempt) => Claim::Won(attempt),
            Found::Existing((stored_fingerprint, state, status, headers, body)) => {
                if stored_fingerprint != fingerprint {
                    Claim::Mismatch
                } else if state == "completed" {
                    Claim::Completed(Stored::decode(
                        status.unwrap_or_default(),
                        headers.as_deref().unwrap_or("[]"),
                        body,
                    )?)
                } else {
                    Claim::InFlight
                }
            }
        })
    }

    /// Stores the response of `attempt`; false if the key was taken over meanwhile.
    pub(super) async fn complete(&self, key: &str, attempt: i64, stored: &Stored) -> Result<bool> {
        let response = (
            i64::from(stored.status.as_u16()),
            stored.headers_json(),
            stored.body.as_deref(),
        );
        match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => complete_sqlite(pool, key, attempt, response).await,
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => pg::complete(pool, key, attempt, response).await,
        }
    }

    /// Frees the key of `attempt`, so the next retry runs the request again.
    pub(super) async fn release(&self, key: &str, attempt: i64) -> Result<()> {
        match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => {
                sqlx::query(
                    "DELETE FROM _rhtmx_sync_idempotency
                     WHERE key = ? AND attempt = ? AND state = 'in_flight'",
                )
                .bind(key)
                .bind(attempt)
                .execute(pool)
                .await?;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => pg::release(pool, key, attempt).await,
        }
    }

    /// Deletes keys created more than `retention` ago, unless they are still held by a
    /// live lease; does nothing if this layer pruned within the last minute. Failure is
    /// logged only: pruning is housekeeping, not part of the request.
    pub(super) async fn prune_if_due(&self, now: i64, retention: Duration) {
        let last = self.last_prune.load(Ordering::Relaxed);
        // One request per minute wins the exchange; the others skip at once.
        if now.saturating_sub(last) < PRUNE_EVERY
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let before = now.saturating_sub(millis(retention));
        let pruned = match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => sqlx::query(
                "DELETE FROM _rhtmx_sync_idempotency
                 WHERE created_at < ? AND (state = 'completed' OR locked_until <= ?)",
            )
            .bind(before)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(crate::Error::from),
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => pg::prune(pool, before, now).await,
        };
        match pruned {
            Ok(keys) => tracing::debug!(keys, "pruned idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "pruning idempotency keys failed"),
        }
    }
}

/// Stores a response on SQLite.
#[cfg(feature = "sqlite")]
async fn complete_sqlite(
    pool: &SqlitePool,
    key: &str,
    attempt: i64,
    (status, headers, body): (i64, String, Option<&[u8]>),
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE _rhtmx_sync_idempotency
         SET state = 'completed', status = ?, headers = ?, body = ?
         WHERE key = ? AND attempt = ? AND state = 'in_flight'",
    )
    .bind(status)
    .bind(headers)
    .bind(body)
    .bind(key)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims `key` on SQLite, or reads the row it collided with.
#[cfg(feature = "sqlite")]
async fn claim_sqlite(
    pool: &SqlitePool,
    key: &str,
    fingerprint: &str,
    now: i64,
    until: i64,
) -> Result<Found> {
    let mut tx = pool.begin().await?;
    let won: Option<i64> = sqlx::query_scalar(CLAIM)
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .bind(until)
        .fetch_optional(&mut *tx)
        .await?;
    let found = match won {
        Some(attempt) => Found::Won(attempt),
        // The insert took the write lock even though it changed nothing, so the row it
        // collided with is still there, unchanged, until we commit.
        None => Found::Existing(
            sqlx::query_as(
                "SELECT fingerprint, state, status, headers, body
                 FROM _rhtmx_sync_idempotency WHERE key = ?",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await?,
        ),
    };
    tx.commit().await?;
    Ok(found)
}

/// Unix time in milliseconds.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
