//! Changes between engines that share no database (another server, a device), passed
//! through something they do share, such as a bucket (`rhtmx-sync-backup`'s bundles).
//!
//! Each engine is an *author*, named by its log's identity. [`SyncEngine::authored_changes`]
//! reads what this engine's own writers logged — the app's SQL, pushes, `engine.write` —
//! and leaves out what it applied from other authors, so nothing echoes back.
//! [`SyncEngine::apply_authored`] applies another author's changes through the
//! field-level merge as if that author's whole history were concurrent with this one's
//! (base version 0): each field takes the write with the greatest HLC, whichever engine
//! sees it first, so authors that exchange all their changes converge. Each applied
//! entry carries `client_id = "author:{id}"`: the change is attributed to its author in
//! the log, in pulls and on the event stream.
//!
//! The app's own SQL writes have an HLC derived from when they were written, with node
//! 0 (see the conflict docs): two engines writing one field in one millisecond would
//! tie. So an author exports them with its own node (its id, 16 hex digits, is a
//! 64-bit number), and compares its own against other authors' the same way: every
//! engine then orders any two writes alike.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apply::{self, Incoming};
use crate::backend::ReadLog;
use crate::conflict::Status;
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::scope::Read;
use crate::wire::Action;
use crate::SyncEngine;

/// The client id prefix of entries applied from another author.
pub const AUTHOR_PREFIX: &str = "author:";

/// Refuses a client id that claims to be another engine (`author:…`): its writes
/// would be merged by the rules between engines and never exported.
pub(crate) fn refuse_author_claim(client_id: Option<&str>) -> Result<()> {
    if client_id.is_some_and(|c| c.starts_with(AUTHOR_PREFIX)) {
        return Err(Error::invalid(format!(
            "client ids starting with `{AUTHOR_PREFIX}` are reserved for other engines"
        )));
    }
    Ok(())
}

/// A change as its author's log recorded it, for another engine to apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuthoredChange {
    /// The entity (table) name.
    pub entity: String,
    /// The row's id as it travels on the wire.
    pub id: Value,
    /// What the author's writer did.
    pub action: Action,
    /// The fields it set: all of them for a create, the changed ones for an update,
    /// none for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, Value>>,
    /// When (the author's HLC, or the one derived from the write's time for the app's
    /// own SQL).
    pub hlc: Hlc,
    /// Its version in the author's log.
    pub version: i64,
}

/// A page of this engine's own changes ([`SyncEngine::authored_changes`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuthoredPage {
    /// The changes, in version order.
    pub changes: Vec<AuthoredChange>,
    /// Where the next page starts (`after` for the next call): past every entry read,
    /// those left out included.
    pub next: i64,
    /// Whether entries after `next` were already committed when the page was read.
    pub more: bool,
}

/// What became of another author's changes ([`SyncEngine::apply_authored`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedAuthored {
    /// Changes applied (some fields may have lost to later writes here).
    pub applied: usize,
    /// Changes already applied before (a bundle read twice).
    pub duplicates: usize,
    /// Changes refused by the merge: a create of a row deleted here later (by HLC).
    pub refused: usize,
    /// Changes kept to be applied later, as they arrive in any order with three or
    /// more authors: updates of a row this database does not have (not created here
    /// yet, or deleted), applied once the row exists here (created by another author's
    /// change, or by this database's own write: [`SyncEngine::apply_parked`]); and
    /// changes a UNIQUE or foreign-key constraint refused here (a child before its
    /// parent), tried again each time other changes of another author were applied.
    pub parked: usize,
    /// Changes this database cannot take, skipped (logged at `warn`): a table or field
    /// it does not sync, a value its column refuses (NOT NULL, CHECK, a type).
    pub skipped: usize,
}

impl AppliedAuthored {
    fn add(&mut self, other: AppliedAuthored) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.refused += other.refused;
        self.parked += other.parked;
        self.skipped += other.skipped;
    }

    fn skip(&mut self, n: usize, why: &Error) {
        self.skipped += n;
        tracing::warn!(changes = n, error = %why, "another engine's changes skipped");
    }
}

/// What one [`SyncEngine::apply_run`] did: its counts, and the rows it wrote, by
/// entity (as key text), whose parked updates are due.
#[derive(Debug, Default)]
struct Run {
    counts: AppliedAuthored,
    written: Vec<(String, Vec<String>)>,
}

/// Whether applying a change failed because of the change, not of the database's
/// state now (a lock, a closed pool): it will fail again, so it is skipped.
fn refusal(e: &Error) -> bool {
    match e {
        Error::Invalid(_) | Error::UnknownEntity(_) => true,
        Error::Database(sqlx::Error::Database(db)) => {
            !matches!(db.kind(), sqlx::error::ErrorKind::Other)
                || db.message().contains("constraint")
        }
        _ => false,
    }
}

/// Whether a change failed on a UNIQUE or foreign-key constraint: another change may
/// lift it, so it waits (`crate::parked`) rather than being skipped.
fn waits_for_another(e: &Error) -> bool {
    use sqlx::error::ErrorKind;
    matches!(e, Error::Database(sqlx::Error::Database(db))
        if matches!(db.kind(), ErrorKind::UniqueViolation | ErrorKind::ForeignKeyViolation))
}

/// The HLC node standing for `author`'s own SQL writes.
fn author_node(author: &str) -> u64 {
    u64::from_str_radix(author, 16)
        .ok()
        .filter(|n| *n != 0)
        .unwrap_or(1)
}

/// `hlc` as another author sees it. Node 0 (this engine's SQL writes, whose HLC is the
/// millisecond they were written) becomes this author's node, so that two engines'
/// writes in one millisecond are ordered, the same way on every engine. Two SQL writes
/// of one row in one millisecond here (a delete and an insert in one handler) already
/// differ by their counter: the log moves the later one a tick on (`crate::causal`).
/// (A counter taken from the log version wrapped every 100,000 versions.)
fn as_author(hlc: Hlc, author: &str) -> Hlc {
    if hlc.node() == 0 {
        Hlc::new(hlc.physical_ms(), hlc.counter(), author_node(author))
    } else {
        hlc
    }
}

/// Makes the node-0 HLCs of a row's history (this engine's SQL writes) this author's,
/// before another author's change is merged against it.
pub(crate) fn localize(history: &mut crate::conflict::History, author: &str) {
    for entry in &mut history.since_base {
        entry.hlc = as_author(entry.hlc, author);
    }
    if let Some(t) = &mut history.tombstone {
        t.hlc = as_author(t.hlc, author);
    }
}

/// The field clocks (`crate::compaction`) of the entries after `after`, up to `upto`,
/// by version: those into which compaction folded earlier entries.
async fn folded(
    conn: &mut crate::backend::Conn,
    after: i64,
    upto: i64,
) -> Result<std::collections::HashMap<i64, crate::compaction::Clocks>> {
    use crate::backend::Conn;
    let sql = "SELECT version, clocks FROM _rhtmx_sync_log \
               WHERE version > $1 AND version <= $2 AND clocks IS NOT NULL";
    let rows: Vec<(i64, String)> = match conn {
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(c) => {
            sqlx::query_as(sql)
                .bind(after)
                .bind(upto)
                .fetch_all(&mut **c)
                .await?
        }
        #[cfg(feature = "postgres")]
        Conn::Postgres(c) => {
            sqlx::query_as(sql)
                .bind(after)
                .bind(upto)
                .fetch_all(&mut **c)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(v, c)| (v, crate::compaction::Clocks::parse(&c)))
        .collect())
}

/// The changes a surviving update stands for, for a reader after `after`: compaction
/// folded earlier entries into it, remembering each field's last write in `clocks`.
/// Where none of this author's folded entries is after `after`, the reader had them:
/// the update alone (if `exported`: this author's, and setting something). Otherwise
/// the reader may lack the row: a create of the whole row (`full`) at the oldest HLC
/// the row remembers, then, oldest first, an update per remembered write of this
/// author setting its fields at its own HLC, then the update. Each field so ends at the
/// HLC of its last write, as where the entries were read one by one; another author's
/// writes stay at the create's (older) HLC, below that author's own.
fn unfold(
    update: AuthoredChange,
    exported: bool,
    clocks: &crate::compaction::Clocks,
    full: serde_json::Map<String, Value>,
    after: i64,
    author: &str,
) -> Vec<AuthoredChange> {
    let theirs = |c: &Option<String>| c.as_deref().is_some_and(|c| c.starts_with(AUTHOR_PREFIX));
    let past = crate::compaction::expand(clocks, update.version);
    if !past
        .iter()
        .any(|p| p.version > after && !theirs(&p.client_id))
    {
        return if exported { vec![update] } else { Vec::new() };
    }
    let at = |hlc: &str| hlc.parse::<Hlc>().ok().map(|h| as_author(h, author));
    let oldest = past
        .iter()
        .filter_map(|p| at(&p.hlc))
        .chain([update.hlc])
        .min()
        .unwrap_or(update.hlc);
    let mut changes = vec![AuthoredChange {
        action: Action::Create,
        data: Some(full.clone()),
        hlc: oldest,
        ..update.clone()
    }];
    for p in past {
        let Some(hlc) = at(&p.hlc).filter(|h| *h != oldest && !theirs(&p.client_id)) else {
            continue;
        };
        let version = p.version;
        let mut data = full.clone();
        data.retain(|k, _| p.fields.contains(k));
        if !data.is_empty() {
            changes.push(AuthoredChange {
                action: Action::Update,
                data: Some(data),
                hlc,
                version,
                ..update.clone()
            });
        }
    }
    if exported {
        changes.push(update);
    }
    changes
}

impl SyncEngine {
    /// This engine's identity as an author: its log's identity, 16 hex digits. A
    /// restored database is a new author ([`crate::begin_new_history`]).
    pub fn author_id(&self) -> &str {
        &self.inner.log_id
    }

    /// Up to `limit` of this engine's own changes after log version `after` (0 for
    /// all), in version order, across every registered entity. Entries applied from
    /// other authors, entries that only carry a conflict report, and entries of tables
    /// not registered are left out. Where compaction folded entries after `after`
    /// into a row's latest, that one comes as the changes it stands for (see
    /// `unfold`): the row's whole state, each field at the HLC of its last write.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the log cannot be read.
    pub async fn authored_changes(&self, after: i64, limit: usize) -> Result<AuthoredPage> {
        let limit = limit.clamp(1, 10_000) as i64;
        let mut conn = self.inner.pool.acquire().await?;
        let head = conn.settled_head().await?;
        let rows = conn.read_after(after, limit).await?;
        let mut page = AuthoredPage {
            next: rows.last().map_or(head.max(after), |r| r.version),
            more: rows.len() as i64 == limit,
            changes: Vec::new(),
        };
        let clocks = folded(&mut conn, after, page.next).await?;
        drop(conn);
        let entities = self.inner.entities.load();
        for row in rows {
            let Some(entity) = entities.shared(&row.entity) else {
                continue;
            };
            let Some(action) = Action::parse(&row.action) else {
                continue;
            };
            let Some(hlc) = row.hlc.as_deref().and_then(|h| h.parse::<Hlc>().ok()) else {
                continue;
            };
            let hlc = as_author(hlc, self.author_id());
            // The row after the change, without its key; a generated column is the
            // database's to compute, on every engine.
            let full = match action {
                Action::Delete => None,
                _ => {
                    let Some(mut full) = row.data.as_deref().and_then(|d| {
                        serde_json::from_str::<serde_json::Map<String, Value>>(d).ok()
                    }) else {
                        continue;
                    };
                    full.remove(&entity.id);
                    full.retain(|k, _| entity.column(k).is_some_and(|c| !c.generated));
                    Some(full)
                }
            };
            let mut data = full.clone();
            // An update sets its `changed` fields (all, where the log does not say).
            let changed: Option<Vec<String>> =
                (row.changed.as_deref()).and_then(|c| serde_json::from_str(c).ok());
            if let (Action::Update, Some(data), Some(changed)) = (action, &mut data, &changed) {
                data.retain(|k, _| changed.contains(k));
            }
            // Another author's entry, and one that set nothing (a conflict report), are
            // not this author's changes.
            let theirs = (row.client_id.as_deref()).is_some_and(|c| c.starts_with(AUTHOR_PREFIX));
            let sets_nothing =
                action == Action::Update && data.as_ref().is_some_and(|d| d.is_empty());
            let change = AuthoredChange {
                entity: row.entity.clone(),
                id: entity.wire_id(&row.entity_id),
                action,
                data,
                hlc,
                version: row.version,
            };
            let exported = !theirs && !sets_nothing;
            match (clocks.get(&row.version), action, full) {
                (Some(clocks), Action::Update, Some(full)) => {
                    let author = self.author_id();
                    page.changes
                        .extend(unfold(change, exported, clocks, full, after, author));
                }
                _ if exported => page.changes.push(change),
                _ => {}
            }
        }
        Ok(page)
    }

    /// Applies another author's changes, in order, through the field-level merge, one
    /// write transaction per run of changes to one entity. Every field takes the write
    /// with the greatest HLC, here or there; a delete beats concurrent updates unless
    /// the entity says otherwise (`delete_wins`); a change applied before is a
    /// duplicate. An update of a row missing here (not created yet, or deleted) is
    /// parked ([`AppliedAuthored::parked`]) and applied, through the same merge, once
    /// the row exists here (see [`SyncEngine::apply_parked`], which this runs after the
    /// changes): the order in which changes from several authors arrive does not matter. Entities need not be
    /// [`writable`](crate::SyncEngineBuilder::writable): that guards the push API, and
    /// this is the app's own call.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an `author` that is not 1 to 64 of `[A-Za-z0-9_.-]` or
    /// this engine's own id; [`Error::Database`] when the database fails (the changes
    /// before the failing run stay applied; applying them again is harmless). A change
    /// this database cannot take is skipped, not an error (see
    /// [`AppliedAuthored::skipped`]): one bad change must not stop replication.
    pub async fn apply_authored(
        &self,
        author: &str,
        changes: &[AuthoredChange],
    ) -> Result<AppliedAuthored> {
        let plain = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if author.is_empty() || author.len() > 64 || !author.chars().all(plain) {
            return Err(Error::invalid("an author id is 1 to 64 of [A-Za-z0-9_.-]"));
        }
        if author == self.author_id() {
            return Err(Error::invalid("these changes are this engine's own"));
        }
        let mut report = self.apply_run(author, changes).await?;
        let mut conn = self.inner.pool.acquire().await?;
        report.written.extend(crate::parked::due(&mut conn).await?);
        if report.counts.applied > 0 {
            report
                .written
                .extend(crate::parked::refused(&mut conn).await?);
        }
        drop(conn);
        self.apply_due(report).await
    }

    /// Applies the parked changes (see [`AppliedAuthored::parked`]) whose row exists
    /// here again, created since by this database's own write — the app's SQL, a push,
    /// [`SyncEngine::write`]. [`SyncEngine::apply_authored`] does it each time; call it
    /// where no other author's change may arrive for a while (a replication loop does
    /// it on each round), so that a parked change is not held back.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the database fails; what was not applied stays parked
    /// (applying a change twice is harmless: the second is a duplicate).
    pub async fn apply_parked(&self) -> Result<AppliedAuthored> {
        let mut conn = self.inner.pool.acquire().await?;
        let written = crate::parked::due(&mut conn).await?;
        drop(conn);
        self.apply_due(Run {
            counts: AppliedAuthored::default(),
            written,
        })
        .await
    }

    /// Applies the changes parked for the rows `report` wrote, and for the rows those
    /// wrote in turn, in HLC order, each by its author; what is still refused stays
    /// parked.
    async fn apply_due(&self, mut report: Run) -> Result<AppliedAuthored> {
        while !report.written.is_empty() {
            // One read per entity and round, whatever the number of runs that wrote.
            let mut written: std::collections::BTreeMap<
                String,
                std::collections::BTreeSet<String>,
            > = std::collections::BTreeMap::new();
            for (entity, keys) in std::mem::take(&mut report.written) {
                written.entry(entity).or_default().extend(keys);
            }
            let mut conn = self.inner.pool.acquire().await?;
            let mut waiting = Vec::new();
            for (entity, keys) in written {
                let keys: Vec<String> = keys.into_iter().collect();
                waiting.extend(crate::parked::take(&mut conn, &entity, &keys).await?);
            }
            drop(conn);
            let mut applied = 0;
            for (author, key, change) in &waiting {
                let mut again = self.apply_run(author, std::slice::from_ref(change)).await?;
                applied += again.counts.applied;
                if again.counts.parked == 0 {
                    // Applied (or refused for good): it waits no more. Removed only now,
                    // so a change is never lost between being read and being applied.
                    let mut conn = self.inner.pool.acquire().await?;
                    crate::parked::remove(&mut conn, author, key, change).await?;
                }
                // Counted when it was parked first.
                again.counts.parked = 0;
                report.counts.add(again.counts);
                report.written.extend(again.written);
            }
            if applied > 0 {
                // What a constraint refused may pass now (a parent just came).
                let mut conn = self.inner.pool.acquire().await?;
                report
                    .written
                    .extend(crate::parked::refused(&mut conn).await?);
            }
        }
        Ok(report.counts)
    }

    /// Applies `changes` of `author` as [`SyncEngine::apply_authored`] does, parking the
    /// updates of rows missing here; returns the counts and the rows it wrote.
    async fn apply_run(&self, author: &str, changes: &[AuthoredChange]) -> Result<Run> {
        let client = format!("{AUTHOR_PREFIX}{author}");
        let mut report = Run::default();
        for run in changes.chunk_by(|a, b| a.entity == b.entity) {
            let entity = match self.entity(&run[0].entity) {
                Ok(entity) => entity,
                // Schema skew: a table this engine does not sync.
                Err(e) => {
                    report.counts.skip(run.len(), &e);
                    continue;
                }
            };
            let mut validated = Vec::with_capacity(run.len());
            let mut sources = Vec::with_capacity(run.len());
            let mut seen = std::collections::HashMap::new();
            for c in run {
                // Nothing real is a day ahead of this server: such an HLC would win
                // every field for good (and run past what the log can stamp after it).
                let limit = crate::hlc::system_ms()
                    .saturating_add(crate::hlc::DEFAULT_MAX_DRIFT.as_millis() as u64);
                if c.hlc.physical_ms() > limit {
                    let why = Error::invalid(format!(
                        "the HLC {} is more than a day ahead of this server's clock",
                        c.hlc
                    ));
                    report.counts.skip(1, &why);
                    continue;
                }
                let incoming = Incoming {
                    id: &c.id,
                    action: c.action,
                    data: c.data.as_ref(),
                    hlc: Some(c.hlc),
                    base: Some(0),
                };
                let mut v = match apply::validate(&entity, incoming) {
                    Ok(v) => v,
                    Err(e) => {
                        report.counts.skip(1, &e);
                        continue;
                    }
                };
                let count = seen.entry(v.identity()).or_insert(0u32);
                v.occurrence = *count;
                *count += 1;
                v.authored = true;
                validated.push(v);
                sources.push(c);
            }
            let all =
                apply::transaction(&self.inner, &entity, &validated, Some(&client), &Read::All);
            let done = match all.await {
                Ok((done, _)) => done.into_iter().map(Some).collect(),
                // One change this database refuses (a UNIQUE or foreign key constraint,
                // a value out of its column's range) must not hold back the rest: each
                // is applied alone, and the refused ones are skipped.
                Err(failed) if refusal(&failed.error) => {
                    let mut done = Vec::with_capacity(validated.len());
                    for (v, source) in validated.iter().zip(&sources) {
                        let one = std::slice::from_ref(v);
                        let read = &Read::All;
                        match apply::transaction(&self.inner, &entity, one, Some(&client), read)
                            .await
                        {
                            Ok((mut one, _)) => done.push(one.pop()),
                            // Another change may lift it (a parent that comes later, a
                            // value a later change frees): it waits.
                            Err(failed) if waits_for_another(&failed.error) => {
                                let mut conn = self.inner.pool.acquire().await?;
                                let waits = crate::parked::Waits::Constraint;
                                let key = v.key_text();
                                crate::parked::park(&mut conn, author, key, source, waits).await?;
                                report.counts.parked += 1;
                                done.push(None);
                            }
                            Err(failed) if refusal(&failed.error) => {
                                report.counts.skip(1, &failed.error);
                                done.push(None);
                            }
                            Err(failed) => return Err(failed.error),
                        }
                    }
                    done
                }
                Err(failed) => return Err(failed.error),
            };
            let mut written = Vec::new();
            let mut conn = None;
            for ((v, source), d) in validated.iter().zip(&sources).zip(done) {
                let Some(d) = d else { continue };
                match (d.status, v.action) {
                    // Any applied change may have brought the row back (a create, or an
                    // update restoring a deleted row): its parked changes are due.
                    (Status::Applied, _) => {
                        report.counts.applied += 1;
                        written.push(v.key_text().to_owned());
                    }
                    (Status::Duplicate, _) => report.counts.duplicates += 1,
                    (Status::NotFound | Status::Deleted, Action::Update) => {
                        if conn.is_none() {
                            conn = Some(self.inner.pool.acquire().await?);
                        }
                        let conn = conn.as_mut().expect("just acquired");
                        let waits = crate::parked::Waits::Row;
                        crate::parked::park(conn, author, v.key_text(), source, waits).await?;
                        report.counts.parked += 1;
                    }
                    (Status::NotFound | Status::Deleted, _) => report.counts.refused += 1,
                }
            }
            if !written.is_empty() {
                report.written.push((entity.name.to_string(), written));
            }
        }
        Ok(report)
    }
}
