//! The check a digest request makes: does the log say the tables hold what they hold?
//!
//! A state digest (`crate::integrity`) is of the log's state, so a log entry damaged on
//! the server — edited by hand, half restored, bit-rotted — is mirrored faithfully and
//! the digests agree. So before answering, the digest route compares, in one read
//! snapshot, the rows the log says the asking principal's scope holds now (each row's
//! latest entry, in write order) with the rows the table holds in that scope: first in
//! one SQL statement, by text; where the text differs, both sides are read out and
//! folded into an order-independent sum of their values; when the sums differ, the
//! table is audited
//! ([`SyncEngine::audit`]'s step for one entity), which logs a corrective entry for
//! each row that differs, and clients pull those like any change.
//!
//! It costs one statement per digest request: a scan of the principal's rows in the
//! table and in the log's index, nothing read out. A difference the audit cannot
//! correct (two keys with one text form in an untyped column, say) would make every
//! request audit again: it is remembered (per entity and scope, as its two sums), and
//! the audit runs again only when either side has changed since, and at most every
//! [`AFTER_FUTILE`] — new damage is found, an old difference costs no more audits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::AuditLog;
use crate::entity::Entity;
use crate::error::Result;
use crate::scope::Read;
use crate::SyncEngine;

/// An order-independent sum of rows: the XOR of each row's hash, and the count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sum {
    xor: [u8; 32],
    rows: u64,
}

impl Sum {
    /// Adds the row with key text `key` and JSON `data` (as logged, or as the table's
    /// row would be logged). Members that are `null` do not count: a column added
    /// without a default is in the table's row but not in entries logged before, and
    /// the audit treats the two as equal too. Data that is not a JSON object (a damaged entry) counts as itself, so it differs
    /// from every row.
    pub(crate) fn add(&mut self, table: &str, key: &str, data: Option<&str>) {
        let row = match data.map(serde_json::from_str::<Value>) {
            Some(Ok(Value::Object(mut members))) => {
                members.retain(|_, v| !v.is_null());
                Value::Object(members)
            }
            _ => Value::Array(vec![data.map_or(Value::Null, |d| d.into())]),
        };
        let hash = crate::integrity::row_hash(table, &Value::String(key.to_owned()), &row);
        for (x, h) in self.xor.iter_mut().zip(hash) {
            *x ^= h;
        }
        self.rows += 1;
    }
}

/// The two sides of an entity, read in one snapshot by a backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sides {
    /// The rows the log says exist: each row's latest entry unless it is a delete.
    pub log: Sum,
    /// The rows the table holds.
    pub table: Sum,
}

/// The differences the audit could not correct, by entity and scope keys, and a turn
/// for running the audit (so that many requests that see the same damage at once audit
/// once, and the others find it corrected).
#[derive(Debug, Default)]
pub(crate) struct Checks {
    missed: Mutex<HashMap<Scoped, (Sides, Instant)>>,
    turn: tokio::sync::Mutex<()>,
}

/// An entity's table and the scope keys of a reader (a JSON array; `None`: every row).
type Scoped = (String, Option<String>);

/// After an audit that corrected nothing, the next for the same entity and scope waits
/// at least this long, whatever changed: a scope with a difference the audit cannot
/// correct, written to between requests, would otherwise audit the whole table (the
/// writers held back) at every request.
const AFTER_FUTILE: Duration = Duration::from_secs(30);

/// At most this many remembered differences (one per entity and scope); beyond, they
/// are forgotten and found again.
const MISSED: usize = 10_000;

impl SyncEngine {
    /// Compares `entity`'s log with its table within what `read` covers, and audits
    /// the table when they differ. Returns how many corrective entries were logged
    /// that this reader may read (the audit corrects the whole table; other scopes'
    /// corrections are not its business).
    pub(crate) async fn check_log(&self, entity: &Entity, read: &Read) -> Result<u64> {
        // Nothing to compare for a principal that reads no row of it.
        if matches!(read, Read::Keys(keys) if keys.is_empty()) {
            return Ok(0);
        }
        let keys = read.keys_json();
        let at = (entity.table.clone(), keys.clone());
        let missed = &self.inner.checks.missed;
        // The same difference as the audit could not correct before, or any one
        // shortly after such an audit: nothing to do now.
        let remembered = |sides: &Sides| {
            let missed = missed.lock().expect("never held across a panic");
            missed
                .get(&at)
                .is_some_and(|(old, when)| old == sides || when.elapsed() < AFTER_FUTILE)
        };
        // Compared in SQL first; only a textual difference is read out and hashed.
        if self.in_step(entity, keys.as_deref()).await? {
            return Ok(0);
        }
        let sides = self.sides(entity, keys.as_deref()).await?;
        // A difference the audit could not correct before, unchanged: nothing new.
        if !sides.differ() || remembered(&sides) {
            return Ok(0);
        }
        let _turn = self.inner.checks.turn.lock().await;
        // Another request may have corrected it while this one waited.
        if !self.sides(entity, keys.as_deref()).await?.differ() {
            return Ok(0);
        }
        let (written, seen) = self.audit_entity(entity, keys.as_deref()).await?;
        if written == 0 {
            let sides = self.sides(entity, keys.as_deref()).await?;
            if sides.differ() {
                tracing::warn!(
                    entity = &*entity.name,
                    "the change log and the table differ in a way the audit does not \
                     correct; checked again when either changes"
                );
                let mut missed = missed.lock().expect("never held across a panic");
                if missed.len() >= MISSED {
                    missed.clear();
                }
                missed.insert(at.clone(), (sides, Instant::now()));
            }
        }
        Ok(seen)
    }

    async fn in_step(&self, entity: &Entity, keys: Option<&str>) -> Result<bool> {
        self.inner.pool.acquire().await?.in_step(entity, keys).await
    }

    async fn sides(&self, entity: &Entity, keys: Option<&str>) -> Result<Sides> {
        self.inner.pool.acquire().await?.sides(entity, keys).await
    }
}

impl Sides {
    fn differ(&self) -> bool {
        self.log != self.table
    }
}

#[cfg(test)]
mod tests {
    use super::Sum;

    #[test]
    fn a_sum_is_of_the_rows_not_their_order_nor_their_null_members() {
        let (mut a, mut b) = (Sum::default(), Sum::default());
        a.add("t", "1", Some(r#"{"id":1,"x":"a"}"#));
        a.add("t", "2", Some(r#"{"id":2,"x":null}"#));
        b.add("t", "2", Some(r#"{"id":2}"#));
        b.add("t", "1", Some(r#"{"x":"a","id":1.0}"#));
        assert_eq!(a, b);
        let mut c = b;
        c.add("t", "3", Some("{\"id\":3,"));
        assert_ne!(c, b, "a damaged entry counts");
        let mut d = Sum::default();
        d.add("t", "2", Some(r#"{"id":2}"#));
        d.add("t", "1", Some(r#"{"x":"b","id":1}"#));
        assert_ne!(d, b, "another value");
        let mut e = Sum::default();
        e.add("t", "2", Some(r#"{"id":2}"#));
        e.add("t", "9", Some(r#"{"x":"a","id":1}"#));
        assert_ne!(e, b, "another key");
    }
}
