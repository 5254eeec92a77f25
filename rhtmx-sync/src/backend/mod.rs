//! The database under the engine: SQLite, or PostgreSQL with the `postgres` feature.
//!
//! What differs between them — the log's tables, the capture triggers, how versions are
//! assigned, how the tailer learns of new changes — lives in one module per backend.
//! The rest of the engine (merge, wire format, routes, cursors, scopes) is written once
//! and reads the log through [`ReadLog`].

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
mod write;

pub(crate) use self::write::{Context, Effect, EntryRow, NewEntry, WriteTx};

use std::future::Future;

use sqlx::pool::PoolConnection;
#[cfg(feature = "sqlite")]
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use crate::error::Result;
#[cfg(feature = "sqlite")]
use crate::log;
use crate::log::LogRow;

/// What starting the engine on a backend gives: the entities as the schema defines
/// them, the log's identity, and the task that broadcasts committed changes.
pub(crate) struct Started {
    pub registry: std::sync::Arc<crate::engine::Registry>,
    pub log_id: std::sync::Arc<str>,
    pub tailer: tokio::task::JoinHandle<()>,
}

/// The app's pool, which the engine shares: a `sqlx::SqlitePool`, or with the `postgres`
/// feature a `sqlx::PgPool`.
///
/// [`SyncEngine::builder`](crate::SyncEngine::builder) takes either (`impl Into<Pool>`);
/// [`SyncEngine::pool`](crate::SyncEngine::pool) gives it back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Pool {
    /// One SQLite file: one writer at a time, any number of processes on one machine.
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
    /// One PostgreSQL database: any number of app instances, each with its own engine.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

#[cfg(feature = "sqlite")]
impl From<SqlitePool> for Pool {
    fn from(pool: SqlitePool) -> Pool {
        Pool::Sqlite(pool)
    }
}

#[cfg(feature = "sqlite")]
impl From<&SqlitePool> for Pool {
    fn from(pool: &SqlitePool) -> Pool {
        Pool::Sqlite(pool.clone())
    }
}

#[cfg(feature = "postgres")]
impl From<&sqlx::PgPool> for Pool {
    fn from(pool: &sqlx::PgPool) -> Pool {
        Pool::Postgres(pool.clone())
    }
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for Pool {
    fn from(pool: sqlx::PgPool) -> Pool {
        Pool::Postgres(pool)
    }
}

impl Pool {
    /// The SQLite pool, if that is the backend.
    #[cfg(feature = "sqlite")]
    pub fn as_sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Pool::Sqlite(pool) => Some(pool),
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, if that is the backend.
    #[cfg(feature = "postgres")]
    pub fn as_postgres(&self) -> Option<&sqlx::PgPool> {
        match self {
            Pool::Postgres(pool) => Some(pool),
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => None,
        }
    }

    /// A pooled connection to read the log with.
    pub(crate) async fn acquire(&self) -> Result<Conn> {
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => Conn::Sqlite(pool.acquire().await?),
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => Conn::Postgres(pool.acquire().await?),
        })
    }
}

/// A pooled connection of either backend.
pub(crate) enum Conn {
    #[cfg(feature = "sqlite")]
    Sqlite(PoolConnection<Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(PoolConnection<sqlx::Postgres>),
}

/// Reading a registered table's schema, on every backend.
pub(crate) trait Schema: Send {
    /// Reads `spec`'s table and checks the registration against it.
    fn resolve(
        &mut self,
        spec: crate::entity::EntitySpec,
    ) -> impl Future<Output = std::result::Result<crate::entity::Entity, crate::BuildError>> + Send;
}

#[cfg(feature = "sqlite")]
impl Schema for SqliteConnection {
    async fn resolve(
        &mut self,
        spec: crate::entity::EntitySpec,
    ) -> std::result::Result<crate::entity::Entity, crate::BuildError> {
        crate::entity::Entity::resolve(self, spec).await
    }
}

/// Which entries of a range [`ReadLog::read_entity`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    /// Every entry.
    Every,
    /// Each row's latest; `fresh`: for a reader that started from 0.
    Latest { fresh: bool },
}

/// Reading the log, the same on every backend: what pulls, event streams, cursors and
/// the broadcaster need.
pub(crate) trait ReadLog: Send {
    /// The highest version committed so far (0 for an empty log); never goes back
    /// unless the database is replaced.
    fn head(&mut self) -> impl Future<Output = Result<i64>> + Send;
    /// The head for a reader that must see every write committed before it asked (a
    /// pull, a stream's resume point): on PostgreSQL, committed entries that wait for
    /// a version are numbered first, so the app's own write is in the page its
    /// response's next request pulls.
    fn settled_head(&mut self) -> impl Future<Output = Result<i64>> + Send {
        self.head()
    }
    /// Versions at or below the horizon may have been compacted away.
    fn horizon(&mut self) -> impl Future<Output = Result<i64>> + Send;
    /// How many compaction transactions have removed an entry a reader behind it could
    /// not do without (a deleted row's last entries, or where a row left a scope): a
    /// reader that sees it change while it reads may have sent a row whose delete it
    /// can no longer send (see `crate::compaction`, `crate::cursor`).
    fn purges(&mut self) -> impl Future<Output = Result<i64>> + Send;
    /// The entry at `version`, if the log holds it.
    fn entry_at(&mut self, version: i64) -> impl Future<Output = Result<Option<LogRow>>> + Send;
    /// Up to `limit` entries after `after`, in version order, of every entity.
    fn read_after(
        &mut self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<LogRow>>> + Send;
    /// Up to `limit` entries of `entity` in `(after, upto]`, in version order; with
    /// `keys` (a JSON array of scope keys), only those whose scope before or after is
    /// one of them.
    ///
    ///
    /// With [`Select::Latest`], an entry whose row has a later entry at or below `upto`
    /// is left out: the reader gets that one in the same read (a page cut short goes on
    /// to a head at least `upto`), and the entry holds the whole row. So a client reads
    /// each changed row once, however often it changed — a first sync about one change
    /// per live row, history or not. Kept: an entry where the row left a scope (a
    /// reader of that scope does not see what came after). For a read from 0 (`fresh`),
    /// deletes are left out too: its reader holds nothing to delete.
    fn read_entity(
        &mut self,
        entity: &str,
        range: (i64, i64),
        keys: Option<&str>,
        limit: i64,
        select: Select,
    ) -> impl Future<Output = Result<Vec<LogRow>>> + Send;
}

#[cfg(feature = "sqlite")]
impl ReadLog for SqliteConnection {
    async fn head(&mut self) -> Result<i64> {
        log::head(self).await
    }
    async fn horizon(&mut self) -> Result<i64> {
        log::horizon(self).await
    }
    async fn purges(&mut self) -> Result<i64> {
        log::meta_int(self, "purges").await
    }
    async fn entry_at(&mut self, version: i64) -> Result<Option<LogRow>> {
        log::entry_at(self, version).await
    }
    async fn read_after(&mut self, after: i64, limit: i64) -> Result<Vec<LogRow>> {
        log::read_after(self, after, limit).await
    }
    async fn read_entity(
        &mut self,
        entity: &str,
        range: (i64, i64),
        keys: Option<&str>,
        limit: i64,
        select: Select,
    ) -> Result<Vec<LogRow>> {
        log::read_entity(self, entity, range, keys, limit, select).await
    }
}

/// Runs `$body` with `$c` bound to the connection of whichever backend `$conn` holds.
macro_rules! each {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite($c) => {
                let $c: &mut SqliteConnection = &mut *$c;
                $body
            }
            #[cfg(feature = "postgres")]
            Conn::Postgres($c) => {
                let $c: &mut sqlx::PgConnection = &mut *$c;
                $body
            }
        }
    };
}

impl ReadLog for Conn {
    async fn head(&mut self) -> Result<i64> {
        each!(self, c => c.head().await)
    }
    async fn settled_head(&mut self) -> Result<i64> {
        each!(self, c => c.settled_head().await)
    }
    async fn horizon(&mut self) -> Result<i64> {
        each!(self, c => c.horizon().await)
    }
    async fn purges(&mut self) -> Result<i64> {
        each!(self, c => c.purges().await)
    }
    async fn entry_at(&mut self, version: i64) -> Result<Option<LogRow>> {
        each!(self, c => c.entry_at(version).await)
    }
    async fn read_after(&mut self, after: i64, limit: i64) -> Result<Vec<LogRow>> {
        each!(self, c => c.read_after(after, limit).await)
    }
    async fn read_entity(
        &mut self,
        entity: &str,
        range: (i64, i64),
        keys: Option<&str>,
        limit: i64,
        select: Select,
    ) -> Result<Vec<LogRow>> {
        each!(self, c => c.read_entity(entity, range, keys, limit, select).await)
    }
}

/// Comparing the log with a table, the same on every backend (`crate::audit`).
pub(crate) trait AuditLog: Send {
    /// Whether the log and the table agree exactly, by text, within the scope keys
    /// `keys` (a JSON array; `None`: every row): one statement, nothing read out.
    fn in_step(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Both sides within `keys`, read out and summed, in one snapshot.
    fn sides(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> impl Future<Output = Result<crate::audit::Sides>> + Send;
}

#[cfg(feature = "sqlite")]
impl AuditLog for SqliteConnection {
    async fn in_step(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> Result<bool> {
        sqlite::audit::in_step(self, entity, keys).await
    }
    async fn sides(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> Result<crate::audit::Sides> {
        sqlite::audit::sides(self, entity, keys).await
    }
}

#[cfg(feature = "postgres")]
impl AuditLog for sqlx::PgConnection {
    async fn in_step(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> Result<bool> {
        postgres::audit::in_step(self, entity, keys).await
    }
    async fn sides(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> Result<crate::audit::Sides> {
        postgres::audit::sides(self, entity, keys).await
    }
}

impl AuditLog for Conn {
    async fn in_step(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> Result<bool> {
        each!(self, c => c.in_step(entity, keys).await)
    }
    async fn sides(
        &mut self,
        entity: &crate::entity::Entity,
        keys: Option<&str>,
    ) -> Result<crate::audit::Sides> {
        each!(self, c => c.sides(entity, keys).await)
    }
}
