//! The open event streams, as the operator view lists them: who, since when, and how
//! far each has got.
//!
//! The event stream handler registers itself when it opens and holds a [`Tracked`]
//! guard that removes it when the stream is dropped (its client went, or the server
//! ended it). On the hot path a stream only stores its cursor in an atomic: no lock, no
//! allocation per event. The lock is taken once when a stream opens, once when it
//! closes, and when the operator view reads the list.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::principal::Principal;

/// Every open event stream of one engine.
#[derive(Debug, Default)]
pub(crate) struct OpenStreams {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

/// One stream as last recorded.
#[derive(Debug)]
struct Entry {
    /// Who the stream reads as; changes only when a recheck finds new access.
    principal: Mutex<Principal>,
    /// When it opened, Unix milliseconds.
    since_ms: u64,
    /// The last log version it has sent its client or passed over as not theirs.
    cursor: AtomicI64,
}

/// A stream's place in [`OpenStreams`]; dropping it removes the stream from the list.
#[derive(Debug)]
pub(crate) struct Tracked {
    streams: Arc<OpenStreams>,
    id: u64,
    entry: Arc<Entry>,
}

/// A copy of one entry, for the figures.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub id: u64,
    pub principal: Principal,
    pub since_ms: u64,
    pub cursor: i64,
}

impl OpenStreams {
    /// Records a stream of `principal` opening at `cursor`.
    pub(crate) fn open(self: &Arc<Self>, principal: &Principal, cursor: i64) -> Tracked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            principal: Mutex::new(principal.clone()),
            since_ms: crate::hlc::system_ms(),
            cursor: AtomicI64::new(cursor),
        });
        self.lock().insert(id, entry.clone());
        Tracked {
            streams: self.clone(),
            id,
            entry,
        }
    }

    /// The streams open now, oldest first.
    pub(crate) fn list(&self) -> Vec<Seen> {
        self.lock()
            .iter()
            .map(|(&id, entry)| Seen {
                id,
                principal: entry
                    .principal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                since_ms: entry.since_ms,
                cursor: entry.cursor.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Tracked {
    /// The stream has got to `version` (sent it, or passed over it).
    pub(crate) fn at(&self, version: i64) {
        self.entry.cursor.store(version, Ordering::Relaxed);
    }

    /// The stream now reads as `principal` (a recheck found new access).
    pub(crate) fn reads_as(&self, principal: &Principal) {
        *self
            .entry
            .principal
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = principal.clone();
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_listed_with_its_cursor_until_its_guard_drops() {
        let streams = Arc::new(OpenStreams::default());
        let alice = streams.open(&Principal::user("alice"), 3);
        let anonymous = streams.open(&Principal::anonymous(), 0);
        alice.at(7);
        let list = streams.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].principal, Principal::user("alice"));
        assert_eq!(list[0].cursor, 7);
        assert_eq!(list[1].cursor, 0);
        assert!(list[0].id < list[1].id);
        anonymous.reads_as(&Principal::user("bob"));
        assert_eq!(streams.list()[1].principal, Principal::user("bob"));
        drop(alice);
        let list = streams.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].principal, Principal::user("bob"));
        drop(anonymous);
        assert!(streams.list().is_empty());
    }
}
