//! Erasure: removing what the change log remembers of rows, for right-to-erasure
//! requests.

use crate::compaction::{self, CompactLog, CompactionReport};
use crate::error::Result;
use crate::SyncEngine;

/// Which rows of an entity to erase.
#[derive(Debug)]
pub(crate) enum Erase {
    /// These keys, as the log stores them.
    Ids(Vec<String>),
    /// Every row that was ever in this scope.
    Scope(String),
}

/// What an erasure did; see [`SyncEngine::erase`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Erased {
    /// Rows whose history was rewritten.
    pub rows: u64,
    /// Log entries removed.
    pub entries: u64,
}

impl SyncEngine {
    /// Erases the history of the rows of `entity` with these ids (as on the wire: a
    /// number or a string), so that no earlier value of theirs is left in the change log.
    ///
    /// Each row keeps only its latest entry: the row as it is now, or — for a row
    /// already deleted — its tombstone, which holds no values, so that a browser that
    /// still has the row learns of the delete. The row's conflict reports go too. An
    /// entry where the row left a scope stays, holding no values (`{}`): a browser of
    /// that scope learns there, and only there, that the row is no longer its to read
    /// (a browser of the scope the row entered there gets its values from the row's
    /// later entries). Replay digests stay for
    /// [`keep_replays`](crate::Compaction::keep_replays): each is a truncated SHA-256 of
    /// a pushed change and its HLC, no value, and without it a browser retrying a push
    /// whose answer it lost would apply the erased value again. To erase a row
    /// entirely, delete it first (with the app's own SQL), then erase it. Merges of
    /// later pushes are unaffected: the kept entry carries each field's clock, as after
    /// a compaction (see [`crate::Compaction`]). A client whose cursor stood on a
    /// removed entry resumes from its version (nothing after it was removed); one below
    /// the compaction horizon resets once.
    ///
    /// Not covered: responses the [idempotency layer](crate::IdempotencyLayer) stored
    /// (they expire with its retention), database backups, and what the database
    /// itself still holds of removed rows. On SQLite, run `VACUUM` and then
    /// `PRAGMA wal_checkpoint(TRUNCATE)`: in WAL mode the old pages also sit in the
    /// `-wal` file until it is truncated (or open the pool with `PRAGMA secure_delete
    /// = ON`, which overwrites them as they are freed). On PostgreSQL, `VACUUM FULL
    /// _rhtmx_sync_log` rewrites the table; its WAL segments, replicas and archives
    /// keep the old values until they are recycled.
    ///
    /// # Errors
    /// [`Error::UnknownEntity`](crate::Error::UnknownEntity) for an entity the engine
    /// does not sync; [`Error::Invalid`](crate::Error::Invalid) for an id its key
    /// cannot hold (nothing is erased then); [`Error::Database`](crate::Error::Database).
    pub async fn erase<I>(&self, entity: &str, ids: I) -> Result<Erased>
    where
        I: IntoIterator,
        I::Item: Into<serde_json::Value>,
    {
        let spec = self.entity(entity)?;
        let mut ids = ids
            .into_iter()
            .map(|id| spec.parse_id(&id.into()).map(|key| key.text))
            .collect::<Result<Vec<_>>>()?;
        // One row named twice is one row: its entries must be read once.
        ids.sort_unstable();
        ids.dedup();
        self.erase_rows(&spec.name, Erase::Ids(ids)).await
    }

    /// Erases, as [`erase`](SyncEngine::erase) does, every row of `entity` that was ever
    /// in the scope `key` (a user's or a tenant's rows, see [`crate::Scope`]): whatever
    /// the log recorded while they were there, including rows that moved elsewhere since.
    ///
    /// # Errors
    /// As [`erase`](SyncEngine::erase).
    pub async fn erase_scope(&self, entity: &str, key: &str) -> Result<Erased> {
        let spec = self.entity(entity)?;
        self.erase_rows(&spec.name, Erase::Scope(key.to_owned()))
            .await
    }

    async fn erase_rows(&self, entity: &str, target: Erase) -> Result<Erased> {
        let report = match &self.inner.pool {
            #[cfg(feature = "sqlite")]
            crate::Pool::Sqlite(pool) => erase(&mut *pool.acquire().await?, entity, target).await?,
            #[cfg(feature = "postgres")]
            crate::Pool::Postgres(pool) => {
                erase(&mut *pool.acquire().await?, entity, target).await?
            }
        };
        tracing::info!(
            entity,
            rows = report.rows,
            entries = report.removed,
            "row history erased"
        );
        Ok(Erased {
            rows: report.rows,
            entries: report.removed,
        })
    }
}

async fn erase(log: &mut impl CompactLog, entity: &str, target: Erase) -> Result<CompactionReport> {
    let ids = match target {
        Erase::Ids(ids) => ids,
        Erase::Scope(key) => log.ever_in_scope(entity, &key).await?,
    };
    compaction::erase(log, entity, ids).await
}
