//! Numbering committed entries: the stamper.
//!
//! The capture triggers insert entries with a `seq` (a sequence: unique, but handed out
//! at insert time, so transactions commit out of its order) and no version. The stamper
//! gives every *committed* unnumbered entry the next versions of a counter
//! (`_rhtmx_sync_meta.head`) and moves the counter, all in one transaction under an
//! advisory lock. Entries of one transaction (`xact`) get consecutive versions, in the
//! order they were written; transactions that committed between two stamps follow in
//! the order of their *last* entry. That order agrees with commit order wherever order
//! matters — two transactions that wrote one row: the second writer's entry for it is
//! inserted (AFTER ROW trigger, row lock held) only after the first writer committed,
//! so after all the first writer's entries. Ordering by the first entry would not: a
//! transaction that began writing early and overwrote another's committed row later
//! would be replayed before it, and every client would keep the older value.
//!
//! - Stampers take turns (the lock), and each one's statement snapshot is taken after
//!   the lock is granted, when the previous stamper's commit is visible (PostgreSQL
//!   releases a transaction's locks only after its commit is visible): each reads the
//!   counter the last one left and numbers only entries nobody numbered. No version is
//!   handed out twice.
//! - Versions `head + 1 ..= head + n` and the new counter commit together, so every
//!   reader sees a prefix of the stampers' commits: versions up to the counter it sees
//!   all exist, and no later commit can add a version below them. Nothing is skipped.
//! - An entry whose transaction is still open is invisible, so it is left for a later
//!   stamp; a rolled-back one never becomes visible and is never numbered. A
//!   long-running transaction delays only its own entries: the others are numbered
//!   around it.

use sqlx::PgConnection;

use super::CHANNEL;
use crate::error::Result;

/// The advisory lock stampers take turns under (per database).
pub(super) const STAMP_LOCK: i64 = 0x7268_746d_7873_0002;

/// At most this many entries per stamping transaction: one huge write is numbered in
/// several steps rather than one long update.
pub(super) const BATCH: i64 = 50_000;

const STAMP: &str = "
WITH _head AS (SELECT value::bigint AS v FROM _rhtmx_sync_meta WHERE key = 'head'),
_todo AS (
    SELECT seq, row_number() OVER (ORDER BY last, seq) AS n FROM (
        SELECT seq, max(seq) OVER (PARTITION BY xact) AS last FROM _rhtmx_sync_log
        WHERE version IS NULL) AS _waiting
    ORDER BY last, seq LIMIT $1),
_stamped AS (
    UPDATE _rhtmx_sync_log AS l SET version = (SELECT v FROM _head) + _todo.n
    FROM _todo WHERE l.seq = _todo.seq RETURNING 1),
_moved AS (
    UPDATE _rhtmx_sync_meta
    SET value = ((SELECT v FROM _head) + (SELECT count(*) FROM _todo))::text
    WHERE key = 'head' AND EXISTS (SELECT 1 FROM _todo))
SELECT count(*) FROM _stamped";

/// The counter, and whether any entry waits for a version: one round trip, answered
/// from the meta row and the partial index of unnumbered entries.
pub(crate) async fn probe(conn: &mut PgConnection) -> Result<(i64, bool)> {
    Ok(sqlx::query_as(
        "SELECT COALESCE((SELECT value::bigint FROM _rhtmx_sync_meta WHERE key = 'head'), 0), \
         EXISTS (SELECT 1 FROM _rhtmx_sync_log WHERE version IS NULL)",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Numbers up to one batch of the unnumbered entries visible now, in a transaction that
/// holds [`STAMP_LOCK`], and notifies [`CHANNEL`] (at commit) if there were any.
/// Returns how many were numbered.
pub(super) async fn number(tx: &mut PgConnection) -> Result<i64> {
    let n: i64 = sqlx::query_scalar(STAMP)
        .bind(BATCH)
        .fetch_one(&mut *tx)
        .await?;
    if n > 0 {
        // One empty notification per batch, never per write: a notifying commit takes
        // a lock every other notifying commit waits for. (Identical notifications of
        // one transaction are delivered once.)
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(n)
}

/// Numbers every committed unnumbered entry, waiting for a stamper that holds the lock
/// (whose snapshot may predate a commit the caller saw) instead of leaving it to it.
///
/// A write transaction holds the lock for as long as it runs: after a short wait the
/// caller goes on without (its reader sees those entries at the next poll), rather than
/// holding a pool connection for as long as the writer runs.
pub(crate) async fn stamp_waiting(conn: &mut PgConnection) -> Result<()> {
    stamp_all(conn, true).await.map(drop)
}

/// Numbers every committed unnumbered entry and notifies [`CHANNEL`] once if there
/// were any. Returns how many were numbered; 0 also when another engine is stamping
/// right now (it notifies when done, so nothing waits on this one).
pub(crate) async fn stamp(conn: &mut PgConnection) -> Result<u64> {
    stamp_all(conn, false).await
}

/// Stamps batch after batch; when another holds the lock, waits for it up to 100 ms
/// (`wait`) or not at all, and then stops.
async fn stamp_all(conn: &mut PgConnection, wait: bool) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let mut tx = super::begin_read_committed(conn).await?;
        let locked = if wait {
            sqlx::query("SET LOCAL lock_timeout = '100ms'")
                .execute(&mut *tx)
                .await?;
            match sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(STAMP_LOCK)
                .execute(&mut *tx)
                .await
            {
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => false,
                other => other.map(|_| true)?,
            }
        } else {
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(STAMP_LOCK)
                .fetch_one(&mut *tx)
                .await?
        };
        if !locked {
            return Ok(total);
        }
        let n = number(&mut tx).await?;
        tx.commit().await?;
        total += n as u64;
        if n < BATCH {
            return Ok(total);
        }
    }
}
