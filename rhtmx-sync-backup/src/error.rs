//! The one error type of backups and restores.

use std::path::PathBuf;

/// `Result` with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a backup, a restore or a store operation failed. None of them has applied
/// anything partial: a failed backup leaves no backup that a restore would pick, and a
/// failed restore leaves the target path as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be reached or refused a request after its retries (an S3
    /// error, a directory not writable). `name` is the object's name within the store.
    #[error("store: {operation} {name:?}: {reason}")]
    Store {
        /// `put`, `get`, `list` or `delete`.
        operation: &'static str,
        /// The object's name (or the listed prefix).
        name: String,
        /// What the store said.
        reason: String,
    },
    /// An object is truncated, altered or not what its name says (its SHA-256 differs
    /// from the manifest's, or its encryption does not authenticate). It was not applied.
    #[error("object {name:?} is damaged or was tampered with: {reason}")]
    Corrupt {
        /// The object's name within the store.
        name: String,
        /// What did not match.
        reason: String,
    },
    /// The passphrase does not open the store's key (`key.age`).
    #[error("wrong passphrase: it does not open this store's key")]
    WrongPassphrase,
    /// The store is encrypted (it holds `key.age`) and no passphrase or identity was
    /// given, or it is not and one was.
    #[error("{0}")]
    Encryption(String),
    /// No complete backup in the store (at or before the asked time, if one was given).
    #[error("no complete backup in the store{0}")]
    NoBackup(String),
    /// The restore's target exists and `overwrite` was not asked for.
    #[error("{0} exists: restore to a new path, or overwrite it")]
    TargetExists(PathBuf),
    /// A name given to a store is not a plain relative name (`a/b.c`, no `..`, no `//`).
    #[error("not a valid object name: {0:?}")]
    InvalidName(String),
    /// Bundles need an engine on SQLite: they keep their download positions in its
    /// database (PostgreSQL is not supported yet).
    #[error("bundles need an engine on SQLite")]
    NotSqlite,
    /// This machine's clock is behind the time of this author's newest bundle, whose
    /// name a new one must follow; nothing was uploaded. Uploads resume once the clock
    /// has passed it.
    #[error("the clock is behind this author's newest bundle {0}: nothing uploaded")]
    ClockBehind(String),
    /// The restored database would not take the changes made after its backup (its
    /// schema does not fit them); the target is untouched.
    #[error("cannot replay the changes made after the backup: {0}")]
    Replay(String),
    /// The database could not be read (backup) or the restored copy written.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The engine refused the restored copy (see [`rhtmx_sync::begin_new_history`]).
    #[error("engine: {0}")]
    Engine(#[from] rhtmx_sync::Error),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn corrupt(name: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}
