//! Compaction: the log keeps about one entry per live row below a horizon. What a pass
//! keeps and why is on [`Compaction`]; the decision per row is in `plan`, the SQL per
//! backend in `crate::backend::{sqlite, postgres}::compact`.

mod clocks;
mod pass;
mod plan;

pub(crate) use self::clocks::{expand, Clocks};
pub(crate) use self::pass::{erase, Candidate, CompactLog};
pub(crate) use self::plan::{plan, Held, Plan, Policy};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::SyncEngine;

/// How long the change log keeps what, and how often it is compacted
/// ([`SyncEngineBuilder::compaction`](crate::SyncEngineBuilder::compaction)).
///
/// Entries newer than [`keep_history`](Compaction::keep_history) are never touched, so a
/// client offline for less than that resumes where it was. Below the cut (the
/// *horizon*: the newest version at least that old), each row keeps only its latest
/// entry; a row whose latest entry is a delete older than
/// [`keep_tombstones`](Compaction::keep_tombstones) loses it too. A client whose cursor
/// is below the horizon gets exactly one `reset` (reason `behind_horizon`) and pulls
/// from 0, which then reads about one change per live row: the compacted log *is* the
/// snapshot. That read may page through it (cursors below the horizon); it goes on
/// across later passes, and resets once only if a pass removed something it had yet to
/// read and could not do without (an expired tombstone, or where a row left a scope).
///
/// What the removed entries carried that is still needed is kept first:
///
/// - **Field clocks.** The merge asks which fields changed after a push's
///   `client_version`, when and by whom. The surviving entry records, per field, the
///   version, HLC and client of its last change, so a push based below the horizon is
///   merged field by field exactly as before; only a
///   [`ConflictResolver`](crate::ConflictResolver) gets `base: None` for it (the row
///   *at* that version is gone).
/// - **Replays.** The digests of removed pushed changes are kept for
///   [`keep_replays`](Compaction::keep_replays): a replay is still recognised and not
///   applied twice.
/// - **Conflict reports.** An entry that resolved a conflict stays for
///   [`keep_conflicts`](Compaction::keep_conflicts).
///
/// A pass runs in transactions of a few thousand entries, so the write lock is held for
/// milliseconds at a time ([`CompactionReport::longest_transaction_us`]). A pull or
/// event stream that was reading a range a pass changed under it ends with a cursor
/// that resets, never with a silent gap.
///
/// ```
/// use std::time::Duration;
/// use rhtmx_sync::Compaction;
///
/// let compaction = Compaction::new()
///     .keep_history(Duration::from_secs(3 * 24 * 3600))
///     .every(Some(Duration::from_secs(600)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub(crate) history: Duration,
    pub(crate) tombstones: Duration,
    pub(crate) conflicts: Duration,
    pub(crate) replays: Duration,
    pub(crate) every: Option<Duration>,
}

impl Default for Compaction {
    /// Seven days of history and conflict reports, thirty of tombstones and replay
    /// digests, a pass every hour.
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Compaction {
            history: Duration::from_secs(7 * DAY),
            tombstones: Duration::from_secs(30 * DAY),
            conflicts: Duration::from_secs(7 * DAY),
            replays: Duration::from_secs(30 * DAY),
            every: Some(Duration::from_secs(3600)),
        }
    }
}

impl Compaction {
    /// The defaults (see [`Compaction::default`]).
    pub fn new() -> Compaction {
        Compaction::default()
    }

    /// Entries younger than this are kept whole: a client offline for less resumes
    /// normally; one offline for longer gets one reset. Default: 7 days. Keep it well
    /// above the time a first sync takes: a client whose cursor a pass overtook while
    /// a tombstone expired starts over.
    pub fn keep_history(mut self, window: Duration) -> Self {
        self.history = window;
        self
    }

    /// A deleted row's last entry is kept this long after the delete, so that a late
    /// create or update from an offline client is refused instead of bringing the row
    /// back (never less than the history window). Default: 30 days.
    pub fn keep_tombstones(mut self, window: Duration) -> Self {
        self.tombstones = window;
        self
    }

    /// An entry that resolved a conflict is kept this long, for the operator view
    /// (never less than the history window). Default: 7 days.
    pub fn keep_conflicts(mut self, window: Duration) -> Self {
        self.conflicts = window;
        self
    }

    /// A pushed change is recognised as a replay (and not applied twice) for at least
    /// this long (never less than the history window). Default: 30 days.
    pub fn keep_replays(mut self, window: Duration) -> Self {
        self.replays = window;
        self
    }

    /// How often a pass runs in the background; `None`: only when
    /// [`SyncEngine::compact`] is called. Default: every hour; less than 100 ms is
    /// raised to 100 ms.
    pub fn every(mut self, period: Option<Duration>) -> Self {
        self.every = period.map(|p| p.max(Duration::from_millis(100)));
        self
    }

    /// The cut-offs of a pass starting at `now_ms` (Unix milliseconds): entries written
    /// at or before each are past their window. Each window is at least the history
    /// window, and no cut-off is before 1970 (a window of `Duration::MAX` keeps all).
    pub(crate) fn cutoffs(&self, now_ms: i64) -> Cutoffs {
        let before = |d: Duration| {
            let d = d.max(self.history).as_millis().min(i64::MAX as u128) as i64;
            now_ms.saturating_sub(d).max(0)
        };
        Cutoffs {
            history: before(self.history),
            tombstones: before(self.tombstones),
            conflicts: before(self.conflicts),
            replays: before(self.replays),
        }
    }
}

/// Unix-millisecond cut-offs of one pass (see [`Compaction::cutoffs`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cutoffs {
    pub history: i64,
    pub tombstones: i64,
    pub conflicts: i64,
    pub replays: i64,
}

/// What one compaction pass did; [`SyncEngine::compact`] returns it, and the latest is
/// in [`OperatorFigures`](crate::OperatorFigures).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CompactionReport {
    /// The horizon after the pass: cursors below it reset.
    pub horizon: i64,
    /// Rows whose entries were collapsed or dropped.
    pub rows: u64,
    /// Log entries removed.
    pub removed: u64,
    /// Of those rows, deleted rows whose tombstone expired (no entry left).
    pub tombstones: u64,
    /// Replay digests past their window, removed.
    pub replays: u64,
    /// Write transactions the pass took.
    pub transactions: u64,
    /// The longest of them, in microseconds: how long the pass held the write lock at
    /// most (on SQLite, every writer waits that long at worst).
    pub longest_transaction_us: u64,
    /// The whole pass, in milliseconds.
    pub took_ms: u64,
    /// When the pass ended (Unix milliseconds).
    pub finished_at_ms: i64,
}

/// The latest pass's report, shared by the engine and its background task.
pub(crate) type LastReport = Arc<Mutex<Option<CompactionReport>>>;

impl SyncEngine {
    /// Runs one compaction pass now (see [`Compaction`]) and returns what it did.
    ///
    /// Safe at any time, from any number of engines or processes on one database: it
    /// only touches entries below the horizon, which no writer changes, and a second
    /// pass over the same rows finds nothing to do. Its progress is committed batch by
    /// batch; an interrupted pass leaves a consistent log and the next one goes on.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) if the database fails; what the pass
    /// committed before stays.
    pub async fn compact(&self) -> Result<CompactionReport> {
        let started = Instant::now();
        let options = &self.inner.compaction;
        let cut = options.cutoffs(crate::hlc::system_ms() as i64);
        let restoring: Vec<Arc<str>> = (self.inner.entities.load().list())
            .filter(|e| !e.delete_wins)
            .map(|e| e.name.clone())
            .collect();
        let policy = Policy {
            tombstones: cut.tombstones,
            conflicts: cut.conflicts,
            erase: false,
            restoring: &restoring,
        };
        let mut report = match &self.inner.pool {
            #[cfg(feature = "sqlite")]
            crate::Pool::Sqlite(pool) => {
                pass::compact(&mut *pool.acquire().await?, cut, policy).await?
            }
            #[cfg(feature = "postgres")]
            crate::Pool::Postgres(pool) => {
                pass::compact(&mut *pool.acquire().await?, cut, policy).await?
            }
        };
        report.took_ms = started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        report.finished_at_ms = crate::hlc::system_ms() as i64;
        tracing::info!(
            horizon = report.horizon,
            rows = report.rows,
            removed = report.removed,
            tombstones = report.tombstones,
            replays = report.replays,
            transactions = report.transactions,
            longest_transaction_us = report.longest_transaction_us,
            took_ms = report.took_ms,
            "change log compacted"
        );
        *self.inner.last_compaction.lock().expect("never poisoned") = Some(report.clone());
        Ok(report)
    }

    /// The report of the latest compaction pass this engine ran, if any.
    pub fn last_compaction(&self) -> Option<CompactionReport> {
        self.inner
            .last_compaction
            .lock()
            .expect("never poisoned")
            .clone()
    }
}

/// Runs a pass every `period` while the engine lives.
pub(crate) fn run_every(engine: &SyncEngine, period: Duration) {
    let span = tracing::info_span!("rhtmx_sync_compaction");
    crate::engine::every(engine, period, span, |engine| async move {
        if let Err(error) = engine.compact().await {
            tracing::warn!(%error, "compacting the change log failed; the next pass retries");
        }
    });
}
