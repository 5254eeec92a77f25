//! Taking backups: a consistent copy of the SQLite file, uploaded in parts, its manifest
//! last.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::io::AsyncReadExt;

use crate::manifest::{hex, sha256, taken_at, Backup, Part, SNAPSHOTS};
use crate::store::ObjectStore;
use crate::{Error, Result};

/// Parts uploaded (or fetched, on restore) at once.
pub(crate) const IN_FLIGHT: usize = 4;

/// Default part size: 8 MiB.
pub const PART_SIZE: usize = 8 << 20;

/// An unfinished backup (parts, no manifest) older than this is removed by the next
/// backup: its process died. Younger ones may still be uploading (a large backup over
/// a slow link, or another host whose clock is ahead).
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Backups of one SQLite database in one store: take them, list them, restore one
/// ([`Backups::restore`]).
///
/// ```no_run
/// # async fn f(pool: sqlx::SqlitePool) -> rhtmx_sync_backup::Result<()> {
/// use rhtmx_sync_backup::{Backups, DirStore, Encrypted};
/// let store = Encrypted::with_passphrase(DirStore::new("/mnt/backups/app"), "correct horse").await?;
/// let backups = Backups::new(store).keep(7);
/// let taken = backups.backup(&pool).await?;
/// println!("backup {} of {} bytes", taken.id, taken.size);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Backups<S> {
    pub(crate) store: S,
    part_size: usize,
    keep: Option<usize>,
}

impl<S: ObjectStore> Backups<S> {
    /// Backups in `store`, in parts of [`PART_SIZE`], all kept.
    pub fn new(store: S) -> Self {
        Self {
            store,
            part_size: PART_SIZE,
            keep: None,
        }
    }

    /// Splits files into parts of `bytes` (at least 1): a restore resumes part by part,
    /// and each part is held in memory once while it is uploaded.
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    /// After each backup, removes all but the newest `n` (at least 1).
    pub fn keep(mut self, n: usize) -> Self {
        self.keep = Some(n.max(1));
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Takes a backup of the database behind `pool`: `VACUUM INTO` a temporary file (a
    /// consistent copy, taken in one read transaction; writers go on meanwhile), then
    /// uploads its parts and, last, its manifest. Returns the backup's manifest.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the copy cannot be taken, [`Error::Store`] if the store
    /// fails after its retries (the unfinished backup is invisible to restores and
    /// removed by a later backup), [`Error::Encryption`] if the store is encrypted and
    /// this one is not opened with its key.
    pub async fn backup(&self, pool: &SqlitePool) -> Result<Backup> {
        self.check_encryption().await?;
        // The copy is the database in plain: readable by its owner only.
        let dir = {
            use std::os::unix::fs::PermissionsExt;
            tempfile::Builder::new()
                .prefix("rhtmx-sync-backup-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir()
                .map_err(Error::io(std::env::temp_dir()))?
        };
        let copy = dir.path().join("copy.db");
        let id = uuid::Uuid::now_v7();
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        sqlx::query("VACUUM INTO ?")
            .bind(copy.display().to_string())
            .execute(pool)
            .await?;
        let (log_id, head) = log_of(&copy).await?;
        let id = id.hyphenated().to_string();

        let mut file = tokio::fs::File::open(&copy)
            .await
            .map_err(Error::io(&copy))?;
        let (mut parts, mut whole, mut size) = (Vec::new(), Sha256::new(), 0u64);
        // Parts upload while the next ones are read and hashed, a few at once.
        let mut uploads = FuturesUnordered::new();
        loop {
            let mut part = Vec::with_capacity(self.part_size);
            (&mut file)
                .take(self.part_size as u64)
                .read_to_end(&mut part)
                .await
                .map_err(Error::io(&copy))?;
            if part.is_empty() && !parts.is_empty() {
                break;
            }
            whole.update(&part);
            size += part.len() as u64;
            parts.push(Part {
                size: part.len() as u64,
                sha256: sha256(&part),
            });
            let last = part.len() < self.part_size;
            let name = Backup::part_name(&id, parts.len() - 1);
            uploads.push(async move { self.store.put(&name, part.into()).await });
            if uploads.len() >= IN_FLIGHT {
                uploads.next().await.expect("one is in flight")?;
            }
            if last {
                break;
            }
        }
        while let Some(done) = uploads.next().await {
            done?;
        }
        let backup = Backup {
            id,
            created_ms,
            size,
            sha256: hex(&whole.finalize()),
            parts,
            log_id,
            head,
        };
        // Every part must be there before the manifest says so (another process's
        // tidying could have removed them).
        let held = self
            .store
            .list(&format!("{SNAPSHOTS}{}/", backup.id))
            .await?;
        for n in 0..backup.parts.len() {
            let name = Backup::part_name(&backup.id, n);
            if !held.contains(&name) {
                return Err(Error::Store {
                    operation: "put",
                    name,
                    reason: "the part vanished before the manifest was written".into(),
                });
            }
        }
        let manifest = serde_json::to_vec(&backup).expect("a manifest serializes");
        self.store
            .put(&Backup::manifest_name(&backup.id), manifest.into())
            .await?;
        tracing::info!(id = %backup.id, bytes = backup.size, head = backup.head, "backup taken");
        self.tidy().await?;
        Ok(backup)
    }

    /// The complete backups in the store, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if a manifest is damaged or tampered with (a restore must not
    /// quietly pick an older backup instead), [`Error::Store`] if the store fails.
    pub async fn list(&self) -> Result<Vec<Backup>> {
        self.check_encryption().await?;
        let mut backups = Vec::new();
        for name in self.store.list(SNAPSHOTS).await? {
            if !name.ends_with("/manifest.json") {
                continue;
            }
            let Some(body) = self.store.get(&name).await? else {
                continue;
            };
            backups.push(Backup::parse(&name, &body)?);
        }
        backups.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(backups)
    }

    /// Takes a backup every `every`, the first at once, until the task is aborted.
    /// Failures are logged (`tracing`, at `warn`) and the next backup comes on time.
    pub fn spawn(self: Arc<Self>, pool: SqlitePool, every: Duration) -> tokio::task::JoinHandle<()>
    where
        S: 'static,
    {
        every_period(every, "backup", move || {
            let (this, pool) = (self.clone(), pool.clone());
            async move { this.backup(&pool).await.map(drop) }
        })
    }

    /// A plain store must not write into, or read from, an encrypted one.
    pub(crate) async fn check_encryption(&self) -> Result<()> {
        crate::encrypt::refuse_if_encrypted(&self.store).await
    }

    /// Removes unfinished backups whose process died, and backups beyond `keep`.
    async fn tidy(&self) -> Result<()> {
        let names = self.store.list(SNAPSHOTS).await?;
        let mut ids: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix(SNAPSHOTS)?.split('/').next())
            .collect();
        ids.dedup();
        let complete: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| names.contains(&Backup::manifest_name(id)))
            .collect();
        let now = SystemTime::now();
        let mut doomed: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !complete.contains(id))
            .filter(|id| {
                uuid::Uuid::parse_str(id).is_ok_and(|u| {
                    now.duration_since(taken_at(&u)).unwrap_or_default() > ABANDONED_AFTER
                })
            })
            .collect();
        if let Some(keep) = self.keep {
            doomed.extend(complete.iter().rev().skip(keep));
        }
        for id in doomed {
            // The manifest first: a backup half removed is an unfinished one.
            self.store.delete(&Backup::manifest_name(id)).await?;
            let prefix = format!("{SNAPSHOTS}{id}/");
            for name in names.iter().filter(|n| n.starts_with(&prefix)) {
                self.store.delete(name).await?;
            }
        }
        Ok(())
    }
}

/// Runs `task` every `every`, the first at once, until the returned task is aborted;
/// a failure is logged (`tracing`, at `warn`) and the next run comes on time.
pub(crate) fn every_period<F, Fut>(
    every: Duration,
    what: &'static str,
    mut task: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = task().await {
                tracing::warn!(error = %e, "{what} failed");
            }
        }
    })
}

/// The log identity and head in a copy (`None`, 0 without the engine's tables).
async fn log_of(copy: &Path) -> Result<(Option<String>, i64)> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(copy)
        .read_only(true);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let log_id: Option<String> =
        match sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'log_id'")
            .fetch_optional(&mut conn)
            .await
        {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => None,
            Err(e) => return Err(e.into()),
        };
    let head: Option<i64> =
        match sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = '_rhtmx_sync_log'")
            .fetch_optional(&mut conn)
            .await
        {
            Ok(head) => head,
            Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => None,
            Err(e) => return Err(e.into()),
        };
    conn.close().await?;
    Ok((log_id, head.unwrap_or(0)))
}
