//! The [`Syncable`] trait that `#[derive(Syncable)]` implements.

/// How concurrent edits of the same field are resolved.
///
/// Chosen per entity with `#[sync(strategy = ...)]`. Until field-level merging lands, every
/// strategy applies pushed changes in arrival order (last write wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SyncStrategy {
    /// The change whose user action happened last wins (the default).
    #[default]
    LastWriteWins,
    /// The pushing client's value wins.
    ClientWins,
    /// The value already on the server wins.
    ServerWins,
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
    /// out. A field's column is its name, or its `#[sqlx(rename = "...")]`.
    const COLUMNS: &'static [&'static str];
    /// The conflict strategy (`#[sync(strategy = ...)]`).
    const STRATEGY: SyncStrategy;
    /// Whether browsers may queue writes to this entity while offline
    /// (`#[sync(offline_writes = ...)]`, default `true`).
    const OFFLINE_WRITES: bool;
}
