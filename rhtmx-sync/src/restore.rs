//! What a database restored from a copy needs before an engine opens it.
//!
//! A cursor names a point in one history of the log (see the cursor docs in
//! `docs/ARCHITECTURE.md`, §4). A restored copy holds the log as it was when the copy was
//! taken, and would resume cursors that were handed out before the copy and still match
//! its entries: a browser could keep rows deleted since the copy and never be told.
//! [`begin_new_history`] gives the log a new identity, so every cursor handed out before
//! gets exactly one reset.

use crate::backend::Pool;
use crate::Result;

/// Gives the log of a restored database a new identity (its `log_id`): every cursor a
/// browser holds from before is then from another history and gets exactly one reset
/// (HTTP 409 on pull, a `reset` event on the stream), after which it resyncs from a
/// snapshot. Rows, the log's entries and versions are unchanged.
///
/// Call it on the restored database before any engine opens it (an engine reads the
/// identity once, when it is built). A database without the engine's tables is left
/// alone: the engine makes a fresh identity with them.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the database cannot be written.
pub async fn begin_new_history(pool: impl Into<Pool>) -> Result<()> {
    match pool.into() {
        #[cfg(feature = "sqlite")]
        Pool::Sqlite(pool) => {
            let has: bool = sqlx::query_scalar(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = '_rhtmx_sync_meta'",
            )
            .fetch_one(&pool)
            .await?;
            if has {
                sqlx::query(
                    "UPDATE _rhtmx_sync_meta SET value = lower(hex(randomblob(8))) \
                     WHERE key = 'log_id'",
                )
                .execute(&pool)
                .await?;
            }
        }
        #[cfg(feature = "postgres")]
        Pool::Postgres(pool) => {
            let has: bool =
                sqlx::query_scalar("SELECT to_regclass('_rhtmx_sync_meta') IS NOT NULL")
                    .fetch_one(&pool)
                    .await?;
            if has {
                sqlx::query(
                    "UPDATE _rhtmx_sync_meta \
                     SET value = substr(md5(random()::text || clock_timestamp()::text), 1, 16) \
                     WHERE key = 'log_id'",
                )
                .execute(&pool)
                .await?;
            }
        }
    }
    Ok(())
}
