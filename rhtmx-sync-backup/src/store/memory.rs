//! A store in memory, for tests and for trying things out.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_name, ObjectStore};
use crate::Result;

/// Objects in a map in memory; gone with the value. Cloning shares nothing: wrap it in
/// an `Arc` to share one store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic elsewhere while holding the lock leaves the map whole: every
        // operation is one insert, get or remove.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        check_name(name)?;
        self.objects().insert(name.to_owned(), body);
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        check_name(name)?;
        Ok(self.objects().get(name).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        self.objects().remove(name);
        Ok(())
    }
}
