//! The [`Syncable`] trait that `#[derive(Syncable)]` implements.

/// How a field changed both by a client and, concurrently, on the server is resolved.
///
/// Chosen per entity with `#[sync(strategy = ...)]` or
/// [`SyncEngineBuilder::strategy`](crate::SyncEngineBuilder::strategy). Only fields
/// changed on both sides since the client's base version conflict; every other field
/// merges without one (see [`conflict`](crate::conflict)). Deletes are governed
/// separately, by [`Syncable::DELETE_WINS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SyncStrategy {
    /// The value whose user action happened last wins, by [`Hlc`](crate::Hlc); ties
    /// (same millisecond and counter) go to the higher node id (the default).
    #[default]
    LastWriteWins,
    /// The pushing client's value wins (the last to arrive).
    ClientWins,
    /// The value already on the server wins (the first to arrive).
    ServerWins,
    /// The entity's [`ConflictResolver`](crate::ConflictResolver), registered with
    /// [`SyncEngineBuilder::resolver`](crate::SyncEngineBuilder::resolver), decides.
    Custom,
}

impl SyncStrategy {
    /// The name used on the wire: `last_write_wins`, `client_wins`, `server_wins`,
    /// `custom`.
    pub fn name(self) -> &'static str {
        match self {
            SyncStrategy::LastWriteWins => "last_write_wins",
            SyncStrategy::ClientWins => "client_wins",
            SyncStrategy::ServerWins => "server_wins",
            SyncStrategy::Custom => "custom",
        }
    }
}

/// A sqlx model whose table the [`SyncEngine`](crate::SyncEngine) tracks.
///
/// Implement it with `#[derive(Syncable)]`; a derive cannot add fields to a struct, so
/// the sync metadata (version, timestamps, client) lives in the change log, not in the
/// model.
///
/// ```
/// use rhtmx_sync::Syncable;
///
/// #[derive(Syncable)]
/// #[sync(table = "todos")]
/// struct Todo {
///     id: String,
///     title: String,
///     completed: bool,
///     #[sync(skip)]
///     draft_note: Option<String>,
/// }
///
/// assert_eq!(Todo::TABLE, "todos");
/// assert_eq!(Todo::ID, "id");
/// assert_eq!(Todo::COLUMNS, &["id", "title", "completed"]);
/// ```
pub trait Syncable {
    /// The SQL table the model is stored in (`#[sync(table = "...")]`; default: the struct
    /// name in snake_case with an `s` appended, as Diesel does: `TodoItem` → `todo_items`).
    const TABLE: &'static str;
    /// The primary-key column (`#[sync(id = "...")]`; default: the field named `id`).
    const ID: &'static str;
    /// The synced columns in field order, the id included and `#[sync(skip)]` fields left
    /// out. A field's column is the one `sqlx::FromRow` reads: its `#[sqlx(rename = "...")]`,
    /// or its name in the struct's `#[sqlx(rename_all = "...")]` case; `#[sqlx(skip)]`
    /// fields are left out too.
    const COLUMNS: &'static [&'static str];
    /// The conflict strategy (`#[sync(strategy = ...)]`).
    const STRATEGY: SyncStrategy;
    /// Whether browsers may queue writes to this entity while offline
    /// (`#[sync(offline_writes = ...)]`, default `true`).
    const OFFLINE_WRITES: bool;
    /// Whether a delete beats an update made concurrently with it
    /// (`#[sync(delete_wins = ...)]`, default `true`). With `false` the later of the two
    /// by [`Hlc`](crate::Hlc) wins, and an update newer than the delete restores the row.
    const DELETE_WINS: bool = true;
}
