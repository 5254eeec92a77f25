//! State digests: what a client holds, checked against what the log says it should hold.
//!
//! A client's mirror of an entity is a set of rows. At any version V the log defines
//! that set exactly for each principal: the latest entry at or below V of every row it
//! may read, unless that entry deleted the row or took it out of its scope. Both sides
//! hash each row the same way ([`row_hash`]), sort rows into [`BUCKETS`] buckets by key
//! ([`bucket`]), and XOR the hashes of a bucket together ([`Digest`]). A client compares
//! the server's digest at its cursor with its own; a bucket that differs is replaced by
//! the server's rows of that bucket at the same version — the damaged range only.
//!
//! Unlike a hash chained over the history, a state digest stays the same when the log
//! is compacted or a row's history erased (the state at a version is unchanged), and a
//! scoped client can check it, since the server computes it over that principal's rows.
//!
//! The encoding is defined byte for byte (docs/ARCHITECTURE.md §13 gives a test vector,
//! checked by a test here and in the browser) so that any implementation can verify;
//! this module is public for clients written in Rust.
//!
//! ```
//! use rhtmx_sync::integrity::{bucket, Digest};
//! use serde_json::json;
//!
//! let mut mine = Digest::default();
//! mine.add("todos", &json!(7), &json!({"id": 7, "title": "x"}));
//! let buckets = mine.hex(); // compare with `GET /api/sync/todos/digest?at=<cursor>`
//! assert_ne!(buckets[bucket(&json!(7))], "0".repeat(32));
//! ```

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Buckets a digest has (each of 16 bytes).
pub const BUCKETS: usize = 64;

/// The SHA-256 of a row: `"rhtmx-sync row v1\n"`, then the entity name (as a
/// string), the id (as on the wire: a number or a string) and the row (the `data`
/// object a change carries), each in the canonical encoding of docs/ARCHITECTURE.md §13.
pub fn row_hash(entity: &str, id: &Value, row: &Value) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"rhtmx-sync row v1\n");
    encode(&mut hash, &Value::String(entity.to_owned()));
    encode(&mut hash, id);
    encode(&mut hash, row);
    hash.finalize().into()
}

/// The bucket of a row, `0..BUCKETS`: the first byte of the SHA-256 of
/// `"rhtmx-sync bucket v1\n"` and the encoded id, modulo [`BUCKETS`].
pub fn bucket(id: &Value) -> usize {
    let mut hash = Sha256::new();
    hash.update(b"rhtmx-sync bucket v1\n");
    encode(&mut hash, id);
    usize::from(hash.finalize()[0]) % BUCKETS
}

/// The canonical encoding of a JSON value:
///
/// - `null` → `n`; `false` → `f`; `true` → `t`;
/// - a number → `d` and its IEEE-754 binary64 value, big-endian (an integer beyond
///   2^53 is rounded to the nearest double, as a browser parses it; −0 is +0);
/// - a string → `s`, its UTF-8 length as a big-endian u32, its UTF-8 bytes;
/// - an array → `a`, its length as a big-endian u32, each element;
/// - an object → `o`, its member count as a big-endian u32, then each member in
///   ascending order of its key's UTF-8 bytes: the key as a string, then the value.
fn encode(hash: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hash.update(b"n"),
        Value::Bool(false) => hash.update(b"f"),
        Value::Bool(true) => hash.update(b"t"),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let f = if f == 0.0 { 0.0 } else { f };
            hash.update(b"d");
            hash.update(f.to_be_bytes());
        }
        Value::String(s) => {
            hash.update(b"s");
            hash.update((s.len() as u32).to_be_bytes());
            hash.update(s.as_bytes());
        }
        Value::Array(items) => {
            hash.update(b"a");
            hash.update((items.len() as u32).to_be_bytes());
            for item in items {
                encode(hash, item);
            }
        }
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            hash.update(b"o");
            hash.update((keys.len() as u32).to_be_bytes());
            for key in keys {
                encode(hash, &Value::String(key.clone()));
                encode(hash, &members[key]);
            }
        }
    }
}

/// The digest of a set of rows: per bucket, the XOR of the first 16 bytes of each
/// row's [`row_hash`]. Empty buckets are zero. Adding a row twice removes it again
/// (XOR), so a client can keep a digest up to date as rows change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest([[u8; 16]; BUCKETS]);

impl Default for Digest {
    fn default() -> Self {
        Digest([[0; 16]; BUCKETS])
    }
}

impl Digest {
    /// Adds one row: `id` as on the wire, `row` its `data` object as a change carries it.
    pub fn add(&mut self, entity: &str, id: &Value, row: &Value) {
        let hash = row_hash(entity, id, row);
        let bucket = &mut self.0[bucket(id)];
        for (b, h) in bucket.iter_mut().zip(&hash[..16]) {
            *b ^= h;
        }
    }

    /// Each of the [`BUCKETS`] buckets as 32 lowercase hex digits, as the digest
    /// route answers them.
    pub fn hex(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The test vector of docs/ARCHITECTURE.md §13 (the browser suite checks the same).
    #[test]
    fn the_documented_test_vector_holds() {
        let row =
            json!({"title": "Milk ü", "completed": false, "n": 12, "x": 0.5, "tags": ["a", null]});
        let id = json!("0192f0a0-0000-7000-8000-000000000001");
        let docs = include_str!("../../docs/ARCHITECTURE.md");
        let expect = |name: &str| -> String {
            let line = docs
                .lines()
                .find(|l| l.starts_with(&format!("    {name} ")))
                .unwrap_or_else(|| panic!("{name} is in docs/ARCHITECTURE.md"));
            line.split_whitespace().last().unwrap().to_owned()
        };
        assert_eq!(hex(&row_hash("todos", &id, &row)), expect("row_hash"));
        assert_eq!(bucket(&id).to_string(), expect("bucket"));
        let mut digest = Digest::default();
        digest.add("todos", &id, &row);
        digest.add("todos", &json!(7), &json!({"title": "x"}));
        let buckets = digest.hex();
        let nonzero: Vec<String> = buckets
            .iter()
            .enumerate()
            .filter(|(_, h)| *h != &"0".repeat(32))
            .map(|(i, h)| format!("{i}:{h}"))
            .collect();
        assert_eq!(nonzero.join(","), expect("digest"));
    }

    #[test]
    fn the_encoding_is_canonical_and_distinguishes_types() {
        let a = json!({"b": 1, "a": [true, "x"]});
        let b: Value = serde_json::from_str(r#"{"a":[true,"x"],"b":1.0}"#).unwrap();
        assert_eq!(row_hash("t", &json!(1), &a), row_hash("t", &json!(1), &b));
        assert_eq!(
            row_hash("t", &json!(1), &json!({"z": 0})),
            row_hash("t", &json!(1), &json!({"z": -0.0}))
        );
        for other in [
            json!({"b": "1", "a": [true, "x"]}),
            json!({"b": 1, "a": [1, "x"]}),
        ] {
            assert_ne!(
                row_hash("t", &json!(1), &a),
                row_hash("t", &json!(1), &other)
            );
        }
        assert_ne!(row_hash("t", &json!(1), &a), row_hash("t", &json!("1"), &a));
        assert_ne!(row_hash("t", &json!(1), &a), row_hash("u", &json!(1), &a));
        // A digest is order-free, and a row added twice cancels out.
        let (mut x, mut y) = (Digest::default(), Digest::default());
        x.add("t", &json!(1), &a);
        x.add("t", &json!(2), &a);
        y.add("t", &json!(2), &a);
        y.add("t", &json!(1), &a);
        assert_eq!(x, y);
        y.add("t", &json!(1), &a);
        assert_ne!(x, y);
    }
}
