//! A pass over the log, the same on every backend: where the horizon goes, which rows
//! are rewritten together, and how a long run is sliced. The SQL is [`CompactLog`]'s,
//! per backend (`crate::backend::{sqlite, postgres}::compact`).

use std::future::Future;
use std::time::Duration;

use super::{CompactionReport, Cutoffs, Plan, Policy};
use crate::error::Result;

/// Entries a pass rewrites in one transaction, at most: a row with more is rewritten in
/// slices of this many, oldest first.
pub(crate) const BATCH_ENTRIES: i64 = 500;

/// Candidate rows read per query.
const CANDIDATES: i64 = 256;

/// `(entity, entity_id, entries at or below the horizon)` of a row with something to
/// compact.
pub(crate) type Candidate = (String, String, i64);

/// The log as a compaction pass reads and rewrites it.
pub(crate) trait CompactLog: Send {
    /// The newest numbered version below which every entry was written at or before
    /// `ms` (Unix milliseconds): the version before the oldest one written later, or the
    /// head. Not the newest version written by then: on PostgreSQL an entry is written
    /// when its transaction began and numbered when it committed, so a transaction that
    /// ran for days would put that far above entries written a minute ago.
    fn written_by(&mut self, ms: i64) -> impl Future<Output = Result<i64>> + Send;
    /// The horizon recorded so far (0 before the first pass).
    fn horizon(&mut self) -> impl Future<Output = Result<i64>> + Send;
    /// Records `horizon`, unless a higher one is recorded already.
    fn raise_horizon(&mut self, horizon: i64) -> impl Future<Output = Result<()>> + Send;
    /// Up to `limit` rows after `after` (by entity, then key) with something to do at or
    /// below `horizon`: more than one entry, or a delete written at or before
    /// `tombstones` (Unix ms).
    fn candidates(
        &mut self,
        horizon: i64,
        after: &(String, String),
        tombstones: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Candidate>>> + Send;
    /// `rows` of `entity` with their entry counts, sorted by key; rows without entries
    /// are left out.
    fn counts(
        &mut self,
        entity: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Candidate>>> + Send;
    /// The versions of every `every`th entry of a row at or below `horizon`, oldest
    /// first: where its slices end.
    fn cuts(
        &mut self,
        row: &Candidate,
        horizon: i64,
        every: i64,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;
    /// In one write transaction: reads the entries of `rows` at or below `horizon`
    /// (sorted by row, then version), plans them with `policy`, and applies the plan.
    /// Returns the plan and how long the write lock was held.
    fn rewrite(
        &mut self,
        rows: &[Candidate],
        horizon: i64,
        policy: Policy<'_>,
    ) -> impl Future<Output = Result<(Plan, Duration)>> + Send;
    /// Waits after a rewrite that held the write lock for `held`, so the app's writers
    /// get their turn (nothing where writers do not wait for a pass).
    fn pause(&mut self, held: Duration) -> impl Future<Output = ()> + Send;
    /// Removes replay digests written at or before `ms`; how many.
    fn expire_replays(&mut self, ms: i64) -> impl Future<Output = Result<u64>> + Send;
    /// The keys of every row of `entity` the log ever recorded in scope `key`.
    fn ever_in_scope(
        &mut self,
        entity: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
}

/// One compaction pass with the cut-offs `cut`.
pub(crate) async fn compact(
    log: &mut impl CompactLog,
    cut: Cutoffs,
    policy: Policy<'_>,
) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    let old = log.horizon().await?;
    let horizon = log.written_by(cut.history).await?.max(old);
    report.horizon = horizon;
    if horizon > old {
        // Raised before anything below it goes: a reader that reads the horizon after a
        // page knows whether the page could have lost entries.
        log.raise_horizon(horizon).await?;
    }
    let mut after = (String::new(), String::new());
    loop {
        let rows = log
            .candidates(horizon, &after, policy.tombstones, CANDIDATES)
            .await?;
        let Some(last) = rows.last() else { break };
        after = (last.0.clone(), last.1.clone());
        rewrite_all(log, &rows, horizon, policy, &mut report).await?;
        if (rows.len() as i64) < CANDIDATES {
            break;
        }
    }
    report.replays = log.expire_replays(cut.replays).await?;
    Ok(report)
}

/// Erases the history of these rows (see `SyncEngine::erase`).
pub(crate) async fn erase(
    log: &mut impl CompactLog,
    entity: &str,
    ids: Vec<String>,
) -> Result<CompactionReport> {
    let mut report = CompactionReport::default();
    for chunk in ids.chunks(CANDIDATES as usize) {
        let rows = log.counts(entity, chunk).await?;
        rewrite_all(log, &rows, i64::MAX, Policy::ERASE, &mut report).await?;
    }
    Ok(report)
}

/// Rewrites `rows` in transactions of about [`BATCH_ENTRIES`] entries; a row with more
/// is rewritten alone, in slices.
async fn rewrite_all(
    log: &mut impl CompactLog,
    rows: &[Candidate],
    horizon: i64,
    policy: Policy<'_>,
    report: &mut CompactionReport,
) -> Result<()> {
    for batch in batches(rows) {
        match batch {
            [row] if row.2 > BATCH_ENTRIES => {
                // Each slice keeps its last entry, carrying the clocks of the rest, and
                // the next slice takes it in: the row ends as one pass over it would.
                // Only the last slice ends the row's run, so only it may drop a
                // tombstone.
                let middle = Policy {
                    tombstones: i64::MIN,
                    ..policy
                };
                let rows = report.rows;
                for cut in log.cuts(row, horizon, BATCH_ENTRIES).await? {
                    let (plan, held) = log.rewrite(batch, cut, middle).await?;
                    add(report, &plan, held);
                    log.pause(held).await;
                }
                let (plan, held) = log.rewrite(batch, horizon, policy).await?;
                add(report, &plan, held);
                log.pause(held).await;
                // A row counts once, however many slices it took.
                report.rows = report.rows.min(rows + 1);
            }
            _ => {
                let (plan, held) = log.rewrite(batch, horizon, policy).await?;
                add(report, &plan, held);
                log.pause(held).await;
            }
        }
    }
    Ok(())
}

fn add(report: &mut CompactionReport, plan: &Plan, held: Duration) {
    let us = held.as_micros().min(u64::MAX as u128) as u64;
    report.transactions += 1;
    report.longest_transaction_us = report.longest_transaction_us.max(us);
    report.rows += plan.rows;
    report.removed += plan.remove.len() as u64;
    report.tombstones += plan.tombstones;
}

/// Splits candidate rows into transactions of about [`BATCH_ENTRIES`] entries (a row
/// with more goes alone).
pub(crate) fn batches(rows: &[Candidate]) -> impl Iterator<Item = &[Candidate]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut entries = 0;
        let n = rest
            .iter()
            .take_while(|c| {
                let first = entries == 0;
                entries += c.2;
                first || entries <= BATCH_ENTRIES
            })
            .count();
        let (now, later) = rest.split_at(n);
        rest = later;
        Some(now)
    })
}
