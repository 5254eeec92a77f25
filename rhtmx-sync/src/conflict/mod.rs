//! Conflict resolution: field-level three-way merge by hybrid logical clocks, with
//! delete-wins tombstones, and every resolved conflict reported.
//!
//! A client's change carries `hlc` (when its user acted, an [`Hlc`](crate::Hlc)) and
//! `client_version` (the version of the row it last saw, its *base*). The server merges
//! it field by field against what happened to the row since the base, read from the
//! change log's `changed` column:
//!
//! - a field only the client changed is applied; a field only the server changed is
//!   kept; a field both changed is a **conflict**, decided by the entity's
//!   [`SyncStrategy`](crate::SyncStrategy): the later user action by HLC
//!   (`LastWriteWins`, the default), the client, the server, or a
//!   [`ConflictResolver`];
//! - log entries of the same client (same client id) are its own earlier writes, not
//!   conflicts;
//! - a delete beats concurrent updates (configurable with `delete_wins`); a deleted row
//!   leaves its delete in the log as a tombstone until compaction, so a late update or a
//!   late replayed create with an older HLC cannot bring it back;
//! - a change applied before (the same client, HLC, action and fields) is a replay
//!   and does nothing; two different writes with one HLC are both applied, in order;
//! - a change without `client_version` is a plain last-arrival write, as before.
//!
//! Every conflict is reported as a [`Conflict`]: in the push response, to the app
//! through [`WriteOutcome`](crate::WriteOutcome), and to every client as the `conflict`
//! member of the change that carries the resolution (on the event stream and in pulls),
//! so it is resumable like any change.
//!
//! The merge itself is a pure function, [`merge`], over the row and its log; the engine
//! reads both from SQLite and executes the [`Decision`]. Tests and simulations can
//! drive it directly.

mod merge;
mod report;
mod resolver;

pub use self::merge::{
    merge, Change, Decision, Entry, History, Policy, Row, Status, Tombstone, Write,
};
pub use self::report::{Conflict, FieldReport, Outcome, Reason, Rule};
pub use self::resolver::{ConflictResolver, FieldConflict};

pub(crate) use self::resolver::SharedResolver;
