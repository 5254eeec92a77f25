//! Restoring a backup to a fresh database file: verified part by part, resumable,
//! moved into place only when whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use std::collections::BTreeSet;

use crate::bundles::authored_since;
use crate::manifest::{hex, sha256, taken_at, Backup, SNAPSHOTS};
use crate::snapshot::{Backups, IN_FLIGHT};
use crate::store::ObjectStore;
use crate::{Error, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};

/// How much of a restore is done; the command line draws it as a progress bar.
pub trait Progress: Send + Sync {
    /// The restore will fetch `total` bytes.
    fn start(&self, total: u64);
    /// `bytes` more are fetched and verified (parts already fetched by an interrupted
    /// restore count when they are found).
    fn advance(&self, bytes: u64);
}

/// Which backup to restore, and how.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// The newest backup taken at or before this time (point in time); `None` for the
    /// newest of all.
    pub at: Option<SystemTime>,
    /// This backup ([`Backup::id`]), whatever `at` says.
    pub id: Option<String>,
    /// Replace a database at the target path (its `-wal` and `-shm` files too). The app
    /// must be stopped: a process with the old file open keeps writing to it.
    pub overwrite: bool,
    /// Told how far the restore is.
    pub progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("at", &self.at)
            .field("id", &self.id)
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

impl RestoreOptions {
    /// The newest backup.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest backup taken at or before `at`.
    pub fn at(mut self, at: SystemTime) -> Self {
        self.at = Some(at);
        self
    }

    /// The backup with this id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Replaces a database at the target path.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Reports progress to `progress`.
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// What [`Backups::restore`] restored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restored {
    /// The backup.
    pub backup: Backup,
    /// Changes made after it, replayed from the database's bundles in the store.
    pub replayed: usize,
}

impl<S: ObjectStore> Backups<S> {
    /// Restores a backup into a new database file at `to`, and returns which.
    ///
    /// The parts are fetched into `{to}.restore-{id}/` beside the target, each checked
    /// against its SHA-256 in the manifest; an interrupted restore, run again, keeps the
    /// parts it has. The file is then checked whole (SHA-256, `PRAGMA integrity_check`),
    /// its log given a new identity ([`rhtmx_sync::begin_new_history`]: every browser
    /// gets exactly one reset, never a silent resume). If the backed-up database
    /// uploaded its changes as bundles ([`crate::Bundles`]) to the same store, those made
    /// after the backup (up to [`RestoreOptions::at`]) are applied on top, attributed
    /// to it. Only then is the file renamed to `to`; until that rename, `to` is
    /// untouched.
    ///
    /// # Errors
    ///
    /// [`Error::NoBackup`] if no complete backup matches; [`Error::TargetExists`] if `to`
    /// exists without [`RestoreOptions::overwrite`]; [`Error::Corrupt`] if a part or the
    /// file does not match its manifest (nothing is applied); [`Error::WrongPassphrase`]
    /// or [`Error::Encryption`] from an encrypted store; [`Error::Store`] when the store
    /// fails after its retries (run it again to resume).
    pub async fn restore(&self, to: &Path, options: RestoreOptions) -> Result<Restored> {
        check_target(to, options.overwrite).await?;
        let backup = self.pick(&options).await?;
        let staging = staging_dir(to, &backup.id);
        make_private_dir(&staging).await?;
        // One restore per target and backup at a time: they would share the parts.
        let lock_path = staging.join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(Error::io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(Error::io(&staging)(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another restore to this target is running",
            )));
        }
        let done = self.restore_in(&backup, &staging, to, &options).await;
        match &done {
            // Interrupted: the parts fetched so far stay for the next run.
            Err(Error::Store { .. } | Error::Io { .. }) => {}
            // Done, or nothing a new run could resume: no decrypted copy stays behind.
            _ => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
            }
        }
        drop(lock);
        let replayed = done?;
        tracing::info!(id = %backup.id, to = %to.display(), replayed, "backup restored");
        Ok(Restored { backup, replayed })
    }

    async fn restore_in(
        &self,
        backup: &Backup,
        staging: &Path,
        to: &Path,
        options: &RestoreOptions,
    ) -> Result<usize> {
        if let Some(p) = &options.progress {
            p.start(backup.size);
        }
        // A few parts at once; each is checked before it is kept. After a failure the
        // fetches under way still finish and keep their parts, for the next run.
        let mut fetches = FuturesUnordered::new();
        let mut failed = None;
        let mut parts = backup.parts.iter().enumerate();
        loop {
            while failed.is_none() && fetches.len() < IN_FLIGHT {
                let Some((n, part)) = parts.next() else { break };
                fetches.push(async move {
                    self.fetch_part(backup, n, part, staging).await?;
                    Ok::<_, Error>(part.size)
                });
            }
            match fetches.next().await {
                None => break,
                Some(Ok(bytes)) => {
                    if let Some(p) = &options.progress {
                        p.advance(bytes);
                    }
                }
                Some(Err(e)) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let file = staging.join("restored.db");
        assemble(backup, staging, &file).await?;
        check_and_rename_history(&file).await?;
        let replayed = self.replay(backup, &file, options.at).await?;
        check_target(to, options.overwrite).await?;
        if options.overwrite {
            // A -wal or -shm left by the old database would be read into the restored
            // one: they go first, then the file is renamed over the old one.
            for suffix in ["-wal", "-shm", "-journal"] {
                let old = sibling(to, suffix);
                match tokio::fs::remove_file(&old).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(old)(e))
                    }
                    _ => {}
                }
            }
        }
        tokio::fs::rename(&file, to).await.map_err(Error::io(to))?;
        Ok(replayed)
    }

    /// Applies the changes the backed-up database made after the backup, as its
    /// bundles in the store hold them (none if it did not upload bundles), up to `at`.
    async fn replay(&self, backup: &Backup, file: &Path, at: Option<SystemTime>) -> Result<usize> {
        let Some(author) = &backup.log_id else {
            return Ok(0);
        };
        let until = at.map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64
        });
        let changes = authored_since(&self.store, author, backup.head, until).await?;
        if changes.is_empty() {
            return Ok(0);
        }
        let options = SqliteConnectOptions::new()
            .filename(file)
            .journal_mode(SqliteJournalMode::Delete);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await?;
        let entities: BTreeSet<&str> = changes.iter().map(|c| c.entity.as_str()).collect();
        let mut builder = rhtmx_sync::SyncEngine::builder(pool.clone());
        for entity in entities {
            builder = builder.entity_named(entity);
        }
        let engine = builder
            .build()
            .await
            .map_err(|e| Error::Replay(e.to_string()))?;
        let applied = async {
            for chunk in changes.chunks(1000) {
                engine.apply_authored(author, chunk).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        engine.shutdown();
        drop(engine);
        pool.close().await;
        applied.map(|()| changes.len())
    }

    /// The backup to restore. Only its manifest is read: a damaged manifest of another
    /// backup does not stand in the way, but the one picked must be sound — a restore
    /// never falls back to an older backup because the newer one is damaged.
    async fn pick(&self, options: &RestoreOptions) -> Result<Backup> {
        self.check_encryption().await?;
        // Backups by id (UUIDv7: in the order they were taken), complete ones only.
        let mut ids: Vec<uuid::Uuid> = self
            .store
            .list(SNAPSHOTS)
            .await?
            .iter()
            .filter_map(|n| n.strip_prefix(SNAPSHOTS)?.strip_suffix("/manifest.json"))
            .filter_map(|id| uuid::Uuid::parse_str(id).ok())
            .filter(|id| id.get_version_num() == 7)
            .collect();
        ids.sort();
        let found = match (&options.id, options.at) {
            (Some(id), _) => ids.into_iter().find(|u| u.hyphenated().to_string() == *id),
            (None, Some(at)) => ids.into_iter().rev().find(|u| taken_at(u) <= at),
            (None, None) => ids.into_iter().next_back(),
        };
        let Some(id) = found else {
            return Err(Error::NoBackup(match (&options.id, options.at) {
                (Some(id), _) => format!(" with id {id}"),
                (None, Some(at)) => format!(
                    " taken at or before {}",
                    humantime::format_rfc3339_seconds(at)
                ),
                (None, None) => String::new(),
            }));
        };
        let name = Backup::manifest_name(&id.hyphenated().to_string());
        let body = self
            .store
            .get(&name)
            .await?
            .ok_or_else(|| Error::NoBackup(" (it was removed while being restored)".into()))?;
        Backup::parse(&name, &body)
    }

    /// Fetches part `n` into `staging`, unless an earlier run left it there whole.
    async fn fetch_part(
        &self,
        backup: &Backup,
        n: usize,
        part: &crate::manifest::Part,
        staging: &Path,
    ) -> Result<()> {
        let path = staging.join(format!("{n:05}"));
        if let Ok(held) = tokio::fs::read(&path).await {
            if sha256(&held) == part.sha256 {
                return Ok(());
            }
        }
        let name = Backup::part_name(&backup.id, n);
        let body = self
            .store
            .get(&name)
            .await?
            .ok_or_else(|| Error::corrupt(&name, "missing"))?;
        if body.len() as u64 != part.size || sha256(&body) != part.sha256 {
            return Err(Error::corrupt(
                &name,
                "its SHA-256 differs from the manifest's",
            ));
        }
        let partial = path.with_extension("partial");
        tokio::fs::write(&partial, &body)
            .await
            .map_err(Error::io(&partial))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(Error::io(&path))
    }
}

/// `to` with `suffix` appended to its name (`app.db-wal`).
fn sibling(to: &Path, suffix: &str) -> PathBuf {
    let mut name = to.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// A restore may write `to`: its directory exists, and neither it nor the files SQLite
/// keeps beside it (`-wal`, `-shm`, `-journal`: a stale `-wal` would be read into the
/// restored database) exist, unless `overwrite`.
async fn check_target(to: &Path, overwrite: bool) -> Result<()> {
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
        return Err(Error::io(&dir)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such directory",
        )));
    }
    if to.file_name().is_none() || tokio::fs::metadata(to).await.is_ok_and(|m| m.is_dir()) {
        return Err(Error::io(to)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory: name the database file",
        )));
    }
    if !overwrite {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let path = sibling(to, suffix);
            if tokio::fs::try_exists(&path).await.unwrap_or(true) {
                return Err(Error::TargetExists(path));
            }
        }
    }
    Ok(())
}

/// Makes `dir` readable by its owner only: it holds decrypted parts.
async fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
    })
    .await
    .expect("does not panic")
    .map_err(Error::io(dir))
}

/// `{to}.restore-{id}`, beside the target so the final rename stays on one filesystem.
fn staging_dir(to: &Path, id: &str) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".restore-{id}"));
    to.with_file_name(name)
}

/// Concatenates the parts into `file` and checks the whole.
async fn assemble(backup: &Backup, staging: &Path, file: &Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(Error::io(file))?;
    let mut whole = Sha256::new();
    for n in 0..backup.parts.len() {
        let path = staging.join(format!("{n:05}"));
        let part = tokio::fs::read(&path).await.map_err(Error::io(&path))?;
        whole.update(&part);
        out.write_all(&part).await.map_err(Error::io(file))?;
    }
    out.sync_all().await.map_err(Error::io(file))?;
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(Error::io(file))?;
    }
    if hex(&whole.finalize()) != backup.sha256 {
        return Err(Error::corrupt(
            &Backup::manifest_name(&backup.id),
            "the parts together differ from the file's SHA-256",
        ));
    }
    Ok(())
}

/// Checks the restored file is a sound database and begins its log's new history.
async fn check_and_rename_history(file: &Path) -> Result<()> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .journal_mode(SqliteJournalMode::Delete);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await?;
    if verdict != "ok" {
        pool.close().await;
        return Err(Error::corrupt(file.display().to_string().as_str(), verdict));
    }
    rhtmx_sync::begin_new_history(pool.clone()).await?;
    pool.close().await;
    Ok(())
}
