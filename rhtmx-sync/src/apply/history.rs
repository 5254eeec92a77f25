//! What the merge needs of a row's log, read with indexed queries and kept for the
//! rest of the push: a push of many changes to one row reads that row's log once and
//! appends its own new entries, so its cost grows with the number of changes, not with
//! their square.

use std::collections::HashMap;

use crate::backend::{EntryRow, WriteTx};
use crate::conflict::{Change, Entry, History, Row, Tombstone};
use crate::entity::Entity;
use crate::error::Result;
use crate::hlc::Hlc;
use crate::replication::AuthoredChange;
use crate::syncable::SyncStrategy;
use crate::wire::Action;

/// A row's JSON from the table or the log, without its key. SQLite wrote it, but it
/// can still be beyond serde: a number beyond f64, nesting deeper than 128.
pub(crate) fn parse_row(entity: &Entity, json: &str) -> serde_json::Result<Row> {
    let mut row: Row = serde_json::from_str(json)?;
    row.remove(&entity.id);
    Ok(row)
}

/// A logged row's JSON; one that cannot be read counts as empty (it only feeds a
/// restore's starting point), with a warning.
fn parse_logged(entity: &Entity, json: &str) -> Row {
    parse_row(entity, json).unwrap_or_else(|error| {
        tracing::warn!(%error, "a logged row's JSON could not be read");
        Row::new()
    })
}

fn parse_hlc(s: &str) -> Hlc {
    s.parse().unwrap_or_else(|_| {
        // Only a hand-edited log can hold one; it sorts first rather than failing writes.
        tracing::warn!(hlc = s, "malformed HLC in the change log");
        Hlc::new(0, 0, 0)
    })
}

/// A logged entry as the merge reads it: one entry, preceded by the changes compaction
/// folded into it, if any (see `crate::compaction`).
fn entries(row: EntryRow, entity: &Entity) -> impl Iterator<Item = Entry> {
    let past = row.clocks.as_deref().map_or_else(Vec::new, |c| {
        crate::compaction::expand(&crate::compaction::Clocks::parse(c), row.version)
    });
    let past = past.into_iter().map(|p| Entry {
        version: p.version,
        action: if p.created {
            Action::Create
        } else {
            Action::Update
        },
        changed: Some(p.fields),
        data: None,
        hlc: parse_hlc(&p.hlc),
        origin_hlc: None,
        client_id: p.client_id,
    });
    past.chain(std::iter::once(entry(row, entity)))
}

fn entry(row: EntryRow, entity: &Entity) -> Entry {
    Entry {
        version: row.version,
        action: Action::parse(&row.action).unwrap_or(Action::Update),
        changed: row
            .changed
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok()),
        data: row.data.as_deref().map(|d| parse_logged(entity, d)),
        hlc: parse_hlc(&row.hlc),
        origin_hlc: row.origin_hlc.as_deref().map(parse_hlc),
        client_id: row.client_id,
    }
}

/// The entries of one row after `after`, oldest first.
#[derive(Debug, Default)]
struct Cached {
    after: i64,
    entries: Vec<Entry>,
}

/// Row logs read during one write transaction, by `(entity, key text)`.
#[derive(Debug, Default)]
pub(crate) struct HistoryCache {
    rows: HashMap<(String, String), Cached>,
}

impl HistoryCache {
    /// What [`History::from_log`] would extract from the row's whole log.
    pub(crate) async fn read(
        &mut self,
        conn: &mut impl WriteTx,
        entity: &Entity,
        id: &str,
        change: &Change,
        exists: bool,
        digest: Option<&str>,
    ) -> Result<History> {
        let name = &*entity.name;
        let mut history = History::default();
        if let Some(floor) = History::floor(change) {
            let cached = self
                .rows
                .entry((name.to_owned(), id.to_owned()))
                .or_insert_with(|| Cached {
                    after: i64::MAX,
                    entries: Vec::new(),
                });
            if floor < cached.after {
                // Read what the cache lacks: (floor, cached.after].
                let rows = conn.row_log(name, id, (floor, cached.after)).await?;
                let mut older: Vec<Entry> =
                    rows.into_iter().flat_map(|r| entries(r, entity)).collect();
                older.append(&mut cached.entries);
                cached.entries = older;
                cached.after = floor;
            }
            history.since_base = cached
                .entries
                .iter()
                .filter(|e| e.version > floor)
                .cloned()
                .collect();
        }
        if let (Action::Update, Some(base), SyncStrategy::Custom) =
            (change.action, change.base, entity.strategy)
        {
            let data = conn.data_at(name, id, base).await?;
            history.base_row = data.flatten().map(|d| parse_logged(entity, &d));
        }
        if !exists {
            history.tombstone = tombstone(conn, entity, id).await?;
            if history.tombstone.is_some() {
                history.parked = parked(conn, entity, id).await?;
            }
        }
        if let Some(digest) = digest {
            history.replayed = conn.replayed(digest).await?;
        }
        Ok(history)
    }

    /// Appends the entries logged after `before` to the rows they belong to, if cached.
    pub(crate) async fn extend(
        &mut self,
        conn: &mut impl WriteTx,
        entity: &Entity,
        before: i64,
    ) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = conn.log_after(before).await?;
        for row in rows {
            // Only this entity's rows are ever cached (one push is one entity).
            if row.entity != *entity.name {
                continue;
            }
            let key = (row.entity.clone(), row.entity_id.clone());
            if let Some(cached) = self.rows.get_mut(&key) {
                cached.entries.extend(entries(row, entity));
            }
        }
        Ok(())
    }
}

/// The row's tombstone, when every entry after its last live one is a delete: the
/// first of them removed it, the latest is when it was last deleted.
async fn tombstone(
    conn: &mut impl WriteTx,
    entity: &Entity,
    id: &str,
) -> Result<Option<Tombstone>> {
    let name = &*entity.name;
    let live = conn.last_live(name, id).await?;
    let deletes = conn
        .deletes_after(name, id, live.as_ref().map_or(0, |l| l.0))
        .await?;
    Ok(match deletes {
        (Some(version), Some(hlc)) => Some(Tombstone {
            version,
            hlc: parse_hlc(&hlc),
            last_row: live.and_then(|l| l.1).map(|d| parse_logged(entity, &d)),
        }),
        _ => None,
    })
}

/// The updates of other authors parked for the row (`crate::parked`), as
/// `(HLC, fields)`; one that no longer reads is left out.
async fn parked(conn: &mut impl WriteTx, entity: &Entity, id: &str) -> Result<Vec<(Hlc, Row)>> {
    let stored = conn.parked(&entity.name, id).await?;
    Ok(stored
        .iter()
        .filter_map(|json| serde_json::from_str::<AuthoredChange>(json).ok())
        .filter(|c| c.action == Action::Update)
        .filter_map(|c| Some((c.hlc, c.data?)))
        .collect())
}
