//! What a backup is made of: its manifest, written after all its parts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One complete backup in a store: a consistent copy of the database, split into parts.
///
/// Stored as `snapshots/{id}/manifest.json`, written after every part
/// (`snapshots/{id}/00000`, `00001`, …): a backup without its manifest is unfinished and
/// no restore picks it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backup {
    /// A UUIDv7 (hyphenated): backups sort by it in the order they were taken.
    pub id: String,
    /// When the copy was taken, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The database file's size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
    /// The parts in order; their bytes concatenated are the file.
    pub parts: Vec<Part>,
    /// The engine's log in the copy: its identity and highest version (`None`, 0 for a
    /// database without the engine's tables).
    pub log_id: Option<String>,
    /// The highest log version in the copy.
    pub head: i64,
}

/// One part of a backup's file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    /// Bytes in the part.
    pub size: u64,
    /// SHA-256 of the part, lowercase hex.
    pub sha256: String,
}

/// The prefix under which backups are stored.
pub(crate) const SNAPSHOTS: &str = "snapshots/";

impl Backup {
    /// When the copy was taken.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }

    pub(crate) fn manifest_name(id: &str) -> String {
        format!("{SNAPSHOTS}{id}/manifest.json")
    }

    pub(crate) fn part_name(id: &str, n: usize) -> String {
        format!("{SNAPSHOTS}{id}/{n:05}")
    }

    /// Reads a manifest, checking that it names the backup it is stored as.
    pub(crate) fn parse(name: &str, body: &[u8]) -> Result<Backup> {
        let backup: Backup = serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(name, format!("not a manifest: {e}")))?;
        if Backup::manifest_name(&backup.id) != name {
            return Err(Error::corrupt(name, "the manifest of another backup"));
        }
        if uuid::Uuid::parse_str(&backup.id).map_or(true, |u| u.get_version_num() != 7) {
            return Err(Error::corrupt(name, "its id is not a UUIDv7"));
        }
        let sum = backup
            .parts
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(p.size));
        if sum != Some(backup.size) {
            return Err(Error::corrupt(name, "its parts do not add up to its size"));
        }
        Ok(backup)
    }
}

/// When the backup with this id was taken (a UUIDv7 holds its time in milliseconds).
pub(crate) fn taken_at(id: &uuid::Uuid) -> SystemTime {
    id.get_timestamp().map_or(UNIX_EPOCH, |t| {
        let (s, ns) = t.to_unix();
        UNIX_EPOCH + Duration::new(s, ns)
    })
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
