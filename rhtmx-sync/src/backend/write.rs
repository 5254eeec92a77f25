//! Writing inside the engine's write transaction (`crate::apply`), the same on every
//! backend: reading a row and what the merge needs of its log, leaving the change's
//! context for the capture triggers, writing through the table, and recording a
//! decision that leaves the table as it is.
//!
//! Once prepared ([`WriteTx::prepare`]), the transaction is the log's only numbering
//! writer: on SQLite it holds the write lock, on PostgreSQL the stamper's lock, and
//! numbers its own entries as it writes them ([`WriteTx::settle`]), so a write's entry
//! has its version at once.

use std::future::Future;

use super::ReadLog;
use crate::entity::{Entity, Key, SqlValue};
use crate::error::Result;

/// One log entry as the merge reads it (`hlc`: the effective HLC, see `crate::log`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EntryRow {
    pub version: i64,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    pub data: Option<String>,
    pub changed: Option<String>,
    pub client_id: Option<String>,
    pub hlc: String,
    /// The HLC its writer gave it, where causal stamping moved it (`crate::causal`).
    pub origin_hlc: Option<String>,
    /// What compaction folded into this entry (see `crate::compaction`).
    pub clocks: Option<String>,
}

/// What the capture triggers record with the next entry of one row (the context row).
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub entity: &'a str,
    pub id: &'a str,
    pub hlc: String,
    pub client_id: Option<&'a str>,
    /// A JSON array of the fields the change touched.
    pub changed: Option<&'a str>,
    /// The conflict's JSON, without its version.
    pub conflict: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// An entry recorded by the engine itself, for a decision no trigger sees.
#[derive(Debug)]
pub(crate) struct NewEntry<'a> {
    pub context: Context<'a>,
    pub action: &'static str,
    pub data: Option<&'a str>,
    /// The row's scope, before and after alike (the row stays where it is).
    pub scope: Option<String>,
}

/// `(entity_id, action, scope_before, scope_after)` of an entry.
pub(crate) type Effect = (String, String, Option<String>, Option<String>);

/// The engine's write transaction on one backend.
pub(crate) trait WriteTx: ReadLog {
    /// Readies the transaction to write the rows of `entity` with `keys`, before it
    /// reads anything: on PostgreSQL, locks those rows (in key order, so two writers
    /// never deadlock) and only then takes the numbering lock, so a write that waits
    /// for a row the app holds locked never holds back every other writer's numbering.
    fn prepare(
        &mut self,
        entity: &Entity,
        keys: &[&Key],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Numbers what this transaction logged so far (nothing to do on SQLite, where
    /// entries are numbered as they are inserted).
    fn settle(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// The row as the log encodes it, if it exists; locked until the transaction ends
    /// where the backend lets writers run side by side.
    fn read_row(
        &mut self,
        entity: &Entity,
        key: &Key,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// The row's scope as the triggers record it: `None` if the row does not exist or
    /// the entity has no scope column, `Some(None)` for a null scope.
    fn read_scope(
        &mut self,
        entity: &Entity,
        key: &Key,
    ) -> impl Future<Output = Result<Option<Option<String>>>> + Send;

    /// Leaves `context` for the triggers, replacing any left for the row before.
    fn set_context(&mut self, context: &Context<'_>) -> impl Future<Output = Result<()>> + Send;

    /// Removes the context of one row.
    fn clear_context(&mut self, entity: &str, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Inserts a row of `columns` (its key among them), through the table.
    fn insert(
        &mut self,
        entity: &Entity,
        columns: Vec<(String, SqlValue)>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Sets `columns` of the row with `key`, through the table.
    fn update(
        &mut self,
        entity: &Entity,
        key: &Key,
        columns: Vec<(String, SqlValue)>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the row with `key`, through the table.
    fn delete(&mut self, entity: &Entity, key: &Key) -> impl Future<Output = Result<()>> + Send;

    /// The version of the row's latest entry after `after`, if any.
    fn latest_after(
        &mut self,
        entity: &str,
        id: &str,
        after: i64,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Appends `entry` and returns its version.
    fn append(&mut self, entry: &NewEntry<'_>) -> impl Future<Output = Result<i64>> + Send;

    /// The row's entries in `(after, upto]`, oldest first.
    fn row_log(
        &mut self,
        entity: &str,
        id: &str,
        range: (i64, i64),
    ) -> impl Future<Output = Result<Vec<EntryRow>>> + Send;

    /// Every entry after `after`, oldest first.
    fn log_after(&mut self, after: i64) -> impl Future<Output = Result<Vec<EntryRow>>> + Send;

    /// The data of the row's latest entry at or below `version` (`None`: no entry).
    fn data_at(
        &mut self,
        entity: &str,
        id: &str,
        version: i64,
    ) -> impl Future<Output = Result<Option<Option<String>>>> + Send;

    /// The version and data of the row's latest entry that is not a delete.
    fn last_live(
        &mut self,
        entity: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<(i64, Option<String>)>>> + Send;

    /// The first version and the greatest effective HLC of the row's entries after
    /// `after` (both `None` when there are none).
    fn deletes_after(
        &mut self,
        entity: &str,
        id: &str,
        after: i64,
    ) -> impl Future<Output = Result<(Option<i64>, Option<String>)>> + Send;

    /// Whether any entry carries `digest`, or compaction kept it (the change was
    /// applied before).
    fn replayed(&mut self, digest: &str) -> impl Future<Output = Result<bool>> + Send;

    /// The changes of other authors parked for the row (`crate::parked`), as stored.
    fn parked(
        &mut self,
        entity: &str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// What the entries of `entity` after `after` did to scopes.
    fn effects(
        &mut self,
        entity: &str,
        after: i64,
    ) -> impl Future<Output = Result<Vec<Effect>>> + Send;
}
