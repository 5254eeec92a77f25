//! Auditing the log against the tables: a log entry damaged or removed by hand, or a
//! write no trigger saw, is found and corrected by a new entry, which every client then
//! pulls like any change.

mod check;

pub(crate) use self::check::{Checks, Sides};

use crate::entity::Entity;
use crate::error::Result;
use crate::SyncEngine;

impl SyncEngine {
    /// Compares every synced table with what its change log says it holds, and logs a
    /// corrective entry for each row that differs: the row as it is, where the log's
    /// latest entry for it is missing, a delete, or other data (a damaged entry, say);
    /// a delete, where the log holds a row the table does not. Returns how many entries
    /// it wrote (0 when the log and the tables agree). Clients get the entries as any
    /// change, so each refetches only the rows that were wrong; the browser's own check
    /// ([`crate::integrity`]) finds damage on the client's side.
    ///
    /// It is the comparison the engine makes at every start, with the tables locked
    /// against writes meanwhile (one scan of each table and of the log's index): run it
    /// off-peak, or after restoring or repairing a database by hand.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database); what was corrected before stays.
    pub async fn audit(&self) -> Result<u64> {
        let names: Vec<String> = (self.inner.entities.load().list())
            .map(|e| e.name.to_string())
            .collect();
        let mut written = 0;
        for name in &names {
            let entity = self.entity(name)?;
            let entity = &*entity;
            written += self.audit_entity(entity, None).await?.0;
        }
        Ok(written)
    }

    /// [`SyncEngine::audit`] of one entity: compares the table with the log, writers
    /// held back meanwhile, and logs what differs. Returns how many entries it wrote,
    /// and how many of them a reader of the scope keys `keys` (a JSON array; `None`:
    /// every row) may read.
    pub(crate) async fn audit_entity(
        &self,
        entity: &Entity,
        keys: Option<&str>,
    ) -> Result<(u64, u64)> {
        let (logged, seen) = match &self.inner.pool {
            #[cfg(feature = "sqlite")]
            crate::Pool::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let head = crate::log::head(&mut tx).await?;
                let n = crate::capture::reconcile(&mut tx, entity).await?;
                let seen: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {} WHERE entity = ?1 AND version > ?2 \
                     AND (?3 IS NULL OR scope_before IN (SELECT value FROM json_each(?3)) \
                     OR scope_after IN (SELECT value FROM json_each(?3)))",
                    crate::log::LOG_TABLE
                ))
                .bind(&entity.table)
                .bind(head)
                .bind(keys)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                (n, seen as u64)
            }
            #[cfg(feature = "postgres")]
            crate::Pool::Postgres(pool) => {
                use crate::backend::postgres;
                let mut conn = pool.acquire().await?;
                let mut tx = postgres::begin_read_committed(&mut conn).await?;
                postgres::capture::pin(&mut tx).await?;
                // Writers wait for the comparison: one committing in between could
                // be overtaken by an entry made from the older row.
                sqlx::query(&format!(
                    "LOCK TABLE {} IN SHARE MODE",
                    crate::entity::quote_ident(&entity.table)
                ))
                .execute(&mut *tx)
                .await?;
                let n = postgres::capture::reconcile(&mut tx, entity).await?;
                // This transaction's own entries: the corrections.
                let seen: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM _rhtmx_sync_log WHERE entity = $1 \
                     AND xact = pg_current_xact_id() AND ($2::jsonb IS NULL \
                     OR scope_before IN (SELECT jsonb_array_elements_text($2::jsonb)) \
                     OR scope_after IN (SELECT jsonb_array_elements_text($2::jsonb)))",
                )
                .bind(&entity.table)
                .bind(keys)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                (n, seen as u64)
            }
        };
        if logged > 0 {
            tracing::warn!(
                entity = &*entity.name,
                corrected = logged,
                "the change log disagreed with the table; corrective entries logged"
            );
        }
        Ok((logged, seen))
    }
}
