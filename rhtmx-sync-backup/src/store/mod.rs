//! Where backups go: one small trait over S3, a local directory and memory.
//!
//! Objects are named by plain relative names (`snapshots/0190…/00000`); a store keeps
//! them under its own root or prefix. Every backend replaces an object whole or not at
//! all, so a reader never sees half of one.

mod dir;
mod memory;
mod s3;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Error, Result};

pub use self::dir::DirStore;
pub use self::memory::MemoryStore;
pub use self::s3::{S3Config, S3Store};

/// Objects by name: what a backup needs of S3 and the like.
///
/// Names are relative, `/`-separated, without empty, `.` or `..` segments
/// ([`Error::InvalidName`] otherwise). Implementations retry transient failures
/// themselves; an error means the operation did not happen (put, delete) or cannot be
/// read now (get, list).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Stores `body` as `name`, replacing any object of that name, whole or not at all.
    async fn put(&self, name: &str, body: Bytes) -> Result<()>;
    /// The object `name`, or `None` if there is none.
    async fn get(&self, name: &str) -> Result<Option<Bytes>>;
    /// The names that start with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes `name`; removing what is not there is not an error.
    async fn delete(&self, name: &str) -> Result<()>;
    /// Whether contents are encrypted by this store ([`crate::Encrypted`]); a plain
    /// store refuses to back up into or restore from a store that holds an encryption
    /// key.
    fn encrypted(&self) -> bool {
        false
    }
}

#[async_trait]
impl<S: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<S> {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        (**self).put(name, body).await
    }
    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        (**self).get(name).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).list(prefix).await
    }
    async fn delete(&self, name: &str) -> Result<()> {
        (**self).delete(name).await
    }
    fn encrypted(&self) -> bool {
        (**self).encrypted()
    }
}

#[async_trait]
impl<S: ObjectStore + ?Sized> ObjectStore for Box<S> {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        (**self).put(name, body).await
    }
    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        (**self).get(name).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).list(prefix).await
    }
    async fn delete(&self, name: &str) -> Result<()> {
        (**self).delete(name).await
    }
    fn encrypted(&self) -> bool {
        (**self).encrypted()
    }
}

/// Checks that `name` is a plain relative object name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'))
        && !name.chars().any(char::is_control);
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_plain_relative_paths() {
        for ok in ["a", "snapshots/x/00001", "key.age"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\\b", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
