//! Change bundles: engines that share nothing but a store exchange their changes.
//!
//! Each engine is an author ([`rhtmx_sync::SyncEngine::author_id`]). [`Bundles::upload`]
//! writes the engine's own changes since its last bundle as one immutable object,
//! `bundles/{author}/{UUIDv7}`; the newest one says how far the author has uploaded, so
//! nothing is uploaded twice. [`Bundles::download`] reads the other authors' bundles
//! after the last one applied (kept per author in `_rhtmx_sync_bundles`, in the app's
//! database) and applies them through the merge
//! ([`rhtmx_sync::SyncEngine::apply_authored`]), attributed to their author. Applying a
//! bundle twice is harmless: its changes are duplicates. [`Bundles::roll_up`] folds an
//! author's bundles into its newest one, so the store holds about one change per row
//! and field per author, however often rows change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rhtmx_sync::replication::{AppliedAuthored, AuthoredChange};
use rhtmx_sync::{Action, SyncEngine};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use crate::store::ObjectStore;
use crate::{Error, Result};

/// The prefix under which bundles are stored.
const BUNDLES: &str = "bundles/";

/// One bundle object.
#[derive(Debug, Serialize, Deserialize)]
struct Bundle {
    /// Who wrote the changes.
    author: String,
    /// The author's log version the bundle reaches: the next upload starts after it.
    upto: i64,
    changes: Vec<AuthoredChange>,
    /// For a roll-up: the bundles it folds, by name, each with the index in `changes`
    /// where what is left of its changes starts. A reader that applied some of them
    /// applies only what came after (empty: a bundle of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    folds: Vec<(String, usize)>,
}

impl Bundle {
    /// The changes a reader that applied every bundle up to `done` (a name) lacks.
    fn after(&self, done: &str) -> &[AuthoredChange] {
        let start = self
            .folds
            .iter()
            .find(|(name, _)| name.as_str() > done)
            .map_or(
                if self.folds.is_empty() {
                    0
                } else {
                    self.changes.len()
                },
                |f| f.1,
            );
        &self.changes[start.min(self.changes.len())..]
    }
}

/// What one [`Bundles::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Bundles this engine uploaded.
    pub uploaded_bundles: usize,
    /// Changes in them.
    pub uploaded_changes: usize,
    /// Other authors' bundles applied.
    pub applied_bundles: usize,
    /// What became of their changes.
    pub applied: AppliedAuthored,
}

/// Exchanges an engine's changes with other engines through a store.
///
/// ```no_run
/// # async fn f(engine: rhtmx_sync::SyncEngine, store: rhtmx_sync_backup::MemoryStore) -> rhtmx_sync_backup::Result<()> {
/// use rhtmx_sync_backup::Bundles;
/// let bundles = std::sync::Arc::new(Bundles::new(store, engine)?);
/// bundles.spawn(std::time::Duration::from_secs(10));
/// # Ok(()) }
/// ```
pub struct Bundles<S> {
    store: S,
    engine: SyncEngine,
    pool: SqlitePool,
    batch: usize,
    roll_up_after: usize,
    /// How far this author has uploaded, once known; uploads take turns on it.
    uploaded: tokio::sync::Mutex<Option<(i64, String)>>,
    /// Downloads take turns too: two would apply the same bundle at once.
    downloading: tokio::sync::Mutex<()>,
}

impl<S> std::fmt::Debug for Bundles<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundles")
            .field("author", &self.engine.author_id())
            .field("batch", &self.batch)
            .field("roll_up_after", &self.roll_up_after)
            .finish_non_exhaustive()
    }
}

impl<S: ObjectStore> Bundles<S> {
    /// Bundles of `engine`'s changes in `store`: up to 1,000 changes a bundle, rolled up
    /// beyond 64 bundles.
    ///
    /// # Errors
    ///
    /// [`Error::NotSqlite`] for an engine on PostgreSQL.
    pub fn new(store: S, engine: SyncEngine) -> Result<Self> {
        let pool = engine.pool().as_sqlite().cloned().ok_or(Error::NotSqlite)?;
        Ok(Self {
            store,
            engine,
            pool,
            batch: 1000,
            roll_up_after: 64,
            uploaded: tokio::sync::Mutex::new(None),
            downloading: tokio::sync::Mutex::new(()),
        })
    }

    /// At most `n` changes a bundle (at least 1).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Rolls this author's bundles up once there are more than `n` (at least 1).
    pub fn roll_up_after(mut self, n: usize) -> Self {
        self.roll_up_after = n.max(1);
        self
    }

    /// Uploads this engine's new changes, then applies the other authors' new bundles,
    /// then rolls up this author's bundles if there are too many.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store fails after its retries (run it again: nothing is
    /// uploaded or applied twice), [`Error::Corrupt`] for a bundle that is damaged or
    /// not its author's, [`Error::Engine`] for one this engine's schema cannot take.
    pub async fn sync(&self) -> Result<SyncReport> {
        crate::encrypt::refuse_if_encrypted(&self.store).await?;
        let (uploaded_bundles, uploaded_changes) = self.upload().await?;
        let (applied_bundles, applied) = self.download().await?;
        self.roll_up().await?;
        Ok(SyncReport {
            uploaded_bundles,
            uploaded_changes,
            applied_bundles,
            applied,
        })
    }

    /// Runs [`sync`](Self::sync) every `every`, the first at once, until the task is
    /// aborted; failures are logged (`tracing`, at `warn`).
    pub fn spawn(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()>
    where
        S: 'static,
    {
        crate::snapshot::every_period(every, "bundle sync", move || {
            let this = self.clone();
            async move { this.sync().await.map(drop) }
        })
    }

    fn me(&self) -> &str {
        self.engine.author_id()
    }

    /// Uploads this engine's changes since its last bundle; returns how many bundles
    /// and changes.
    pub async fn upload(&self) -> Result<(usize, usize)> {
        let mut uploaded = self.uploaded.lock().await;
        let (mut after, mut last_name) = match uploaded.clone() {
            Some(known) => known,
            None => self.last_own().await?,
        };
        let (mut bundles, mut changes) = (0, 0);
        loop {
            let page = self.engine.authored_changes(after, self.batch).await?;
            if !page.changes.is_empty() {
                let name = format!("{BUNDLES}{}/{}", self.me(), uuid::Uuid::now_v7());
                if name <= last_name {
                    return Err(Error::ClockBehind(last_name));
                }
                let bundle = Bundle {
                    author: self.me().to_owned(),
                    upto: page.next,
                    changes: page.changes,
                    folds: Vec::new(),
                };
                let body = serde_json::to_vec(&bundle).expect("a bundle serializes");
                self.store.put(&name, body.into()).await?;
                bundles += 1;
                changes += bundle.changes.len();
                last_name = name;
            }
            after = page.next;
            *uploaded = Some((after, last_name.clone()));
            if !page.more {
                return Ok((bundles, changes));
            }
        }
    }

    /// This author's newest bundle: how far it reaches, and its name.
    async fn last_own(&self) -> Result<(i64, String)> {
        let names = self.store.list(&format!("{BUNDLES}{}/", self.me())).await?;
        for name in names.iter().rev() {
            if let Some(bundle) = self.read(name, self.me()).await? {
                return Ok((bundle.upto, name.clone()));
            }
        }
        Ok((0, String::new()))
    }

    /// Reads a bundle, checking it is `author`'s; `None` if it was removed meanwhile.
    async fn read(&self, name: &str, author: &str) -> Result<Option<Bundle>> {
        let Some(body) = self.store.get(name).await? else {
            return Ok(None);
        };
        let bundle: Bundle = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(name, format!("not a bundle: {e}")))?;
        if bundle.author != author {
            return Err(Error::corrupt(name, "a bundle of another author"));
        }
        Ok(Some(bundle))
    }

    /// Applies the other authors' bundles after the last applied of each; returns how
    /// many bundles and what became of their changes.
    pub async fn download(&self) -> Result<(usize, AppliedAuthored)> {
        let _turn = self.downloading.lock().await;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS _rhtmx_sync_bundles \
             (author TEXT PRIMARY KEY, last TEXT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let applied_to: BTreeMap<String, String> =
            sqlx::query_as("SELECT author, last FROM _rhtmx_sync_bundles")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let mut by_author: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.store.list(BUNDLES).await? {
            let Some((author, _)) = name[BUNDLES.len()..].split_once('/') else {
                continue;
            };
            if author == self.me() {
                continue;
            }
            let done = applied_to.get(author).map(String::as_str).unwrap_or("");
            if name.as_str() > done {
                by_author.entry(author.to_owned()).or_default().push(name);
            }
        }
        let (mut bundles, mut total) = (0, AppliedAuthored::default());
        for (author, names) in by_author {
            let mut done_to = applied_to.get(&author).cloned().unwrap_or_default();
            for name in names {
                // Gone since the listing (a roll-up removed it): not recorded as
                // applied, so that the roll-up holding its changes applies them here.
                let Some(bundle) = self.read(&name, &author).await? else {
                    continue;
                };
                let changes = bundle.after(&done_to);
                let done = self.engine.apply_authored(&author, changes).await?;
                total.applied += done.applied;
                total.duplicates += done.duplicates;
                total.refused += done.refused;
                total.parked += done.parked;
                total.skipped += done.skipped;
                bundles += 1;
                sqlx::query(
                    "INSERT INTO _rhtmx_sync_bundles (author, last) VALUES (?, ?) \
                     ON CONFLICT (author) DO UPDATE SET last = excluded.last",
                )
                .bind(&author)
                .bind(&name)
                .execute(&self.pool)
                .await?;
                done_to = name;
            }
        }
        // A row this database re-created itself may have another author's update
        // waiting, and no other change may come for a while.
        let due = self.engine.apply_parked().await?;
        total.applied += due.applied;
        total.duplicates += due.duplicates;
        total.refused += due.refused;
        total.skipped += due.skipped;
        Ok((bundles, total))
    }

    /// Folds this author's bundles into its newest once there are more than
    /// [`roll_up_after`](Self::roll_up_after): a change is dropped when a later one of
    /// the same row sets all its fields (or creates or deletes the row). The newest
    /// bundle is replaced first, then the older ones removed, so a reader in the middle
    /// of them applies the whole roll-up (its changes it had are duplicates). Returns
    /// how many bundles were removed.
    pub async fn roll_up(&self) -> Result<usize> {
        let _uploads_wait = self.uploaded.lock().await;
        let names = self.store.list(&format!("{BUNDLES}{}/", self.me())).await?;
        if names.len() <= self.roll_up_after {
            return Ok(0);
        }
        // Each change with the bundle it came from (a roll-up's, its own record).
        let mut all = Vec::new();
        let mut upto = 0;
        for name in &names {
            if let Some(bundle) = self.read(name, self.me()).await? {
                upto = upto.max(bundle.upto);
                let mut from = vec![name.clone(); bundle.changes.len()];
                for (i, (folded, start)) in bundle.folds.iter().enumerate() {
                    let end = bundle.folds.get(i + 1).map_or(from.len(), |f| f.1);
                    for slot in from.iter_mut().take(end).skip(*start) {
                        slot.clone_from(folded);
                    }
                }
                all.extend(from.into_iter().zip(bundle.changes));
            }
        }
        let (from, changes): (Vec<String>, Vec<AuthoredChange>) =
            superseded_dropped(all).into_iter().unzip();
        let mut folds: Vec<(String, usize)> = Vec::new();
        for (i, name) in from.into_iter().enumerate() {
            if folds.last().is_none_or(|(last, _)| *last != name) {
                folds.push((name, i));
            }
        }
        let rolled = Bundle {
            author: self.me().to_owned(),
            upto,
            changes,
            folds,
        };
        let newest = names.last().expect("more than one");
        let body = serde_json::to_vec(&rolled).expect("a bundle serializes");
        self.store.put(newest, body.into()).await?;
        for name in &names[..names.len() - 1] {
            self.store.delete(name).await?;
        }
        tracing::info!(
            author = self.me(),
            bundles = names.len(),
            changes = rolled.changes.len(),
            "bundles rolled up"
        );
        Ok(names.len() - 1)
    }
}

/// `author`'s changes in its bundles after log version `head`, in version order, those
/// made after `until` (ms since the Unix epoch, by HLC) left out: what a restore replays
/// on top of a backup of that author's database. A change a roll-up folded away is
/// gone: a point in time among rolled-up changes gets each row's later state.
pub(crate) async fn authored_since<S: ObjectStore>(
    store: &S,
    author: &str,
    head: i64,
    until: Option<u64>,
) -> Result<Vec<AuthoredChange>> {
    // A roll-up repeats changes of the bundles it folds (until they are removed); a
    // version is not a change's key (a compacted row unfolds into several).
    let mut changes: Vec<AuthoredChange> = Vec::new();
    let mut seen = BTreeSet::new();
    for name in store.list(&format!("{BUNDLES}{author}/")).await? {
        let Some(body) = store.get(&name).await? else {
            continue;
        };
        let bundle: Bundle = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(&name, format!("not a bundle: {e}")))?;
        if bundle.author != author {
            return Err(Error::corrupt(&name, "a bundle of another author"));
        }
        for c in bundle.changes {
            let key = (c.version, c.hlc, format!("{:?}", c.action));
            if c.version > head
                && until.is_none_or(|t| c.hlc.physical_ms() <= t)
                && seen.insert(key)
            {
                changes.push(c);
            }
        }
    }
    // Stable: a row's unfolded create stays before the updates of its version.
    changes.sort_by_key(|c| c.version);
    Ok(changes)
}

/// Drops each change a later change of the same row makes moot: a create or delete
/// (the whole row), or an update setting every field it set. Order is kept.
fn superseded_dropped<T>(changes: Vec<(T, AuthoredChange)>) -> Vec<(T, AuthoredChange)> {
    let mut covered: BTreeMap<(String, String), (bool, BTreeSet<String>)> = BTreeMap::new();
    let mut kept = Vec::with_capacity(changes.len());
    for (tag, c) in changes.into_iter().rev() {
        let (whole, fields) = covered
            .entry((c.entity.clone(), c.id.to_string()))
            .or_default();
        let set: Vec<String> = c.data.iter().flat_map(|d| d.keys().cloned()).collect();
        let moot = *whole || (c.action == Action::Update && set.iter().all(|f| fields.contains(f)));
        match c.action {
            Action::Update => fields.extend(set),
            _ => *whole = true,
        }
        if !moot {
            kept.push((tag, c));
        }
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_create_and_an_update_of_one_version_are_both_replayed_in_order() {
        let store = crate::MemoryStore::new();
        let change = |action: &str, data: serde_json::Value| -> AuthoredChange {
            serde_json::from_value(serde_json::json!({
                "entity": "todos", "id": "x", "action": action, "data": data,
                "hlc": "001750000000000-00001-00000000000000aa", "version": 5,
            }))
            .unwrap()
        };
        let bundle = Bundle {
            author: "00000000000000aa".into(),
            upto: 5,
            changes: vec![
                change(
                    "create",
                    serde_json::json!({"title": "t", "completed": true}),
                ),
                change("update", serde_json::json!({"title": "t"})),
            ],
            folds: Vec::new(),
        };
        let body = serde_json::to_vec(&bundle).unwrap();
        // A roll-up holds the same changes again.
        for _ in 0..2 {
            let name = format!("{BUNDLES}00000000000000aa/{}", uuid::Uuid::now_v7());
            store.put(&name, body.clone().into()).await.unwrap();
        }
        let got = authored_since(&store, "00000000000000aa", 0, None)
            .await
            .unwrap();
        let actions: Vec<Action> = got.iter().map(|c| c.action).collect();
        assert_eq!(actions, [Action::Create, Action::Update]);
    }
}
