//! Keys: how the key column stores its values, the one text form of a blob key, and a
//! client's id ready to bind.

use super::value::{Column, ColumnKind, SqlValue};

/// How the key column stores its values, from its declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// INTEGER affinity: numbers on the wire (strings beyond ±(2^53 − 1)).
    Integer,
    /// Declared `BLOB` or `UUID`: bytes, in their text form on the wire
    /// ([`parse_blob_text`]).
    Blob,
    /// Anything else: text.
    Text,
}

impl KeyKind {
    pub(crate) fn from_column(column: &Column, declared: &str) -> KeyKind {
        let t = declared.to_ascii_uppercase();
        if column.kind == ColumnKind::Integer {
            KeyKind::Integer
        } else if t.contains("BLOB") || t.contains("UUID") {
            KeyKind::Blob
        } else {
            KeyKind::Text
        }
    }
}

/// A client's id, ready to use: its text as the log stores it, the value to insert, and
/// another representation the same row may be stored under (a UUID kept as a 16-byte
/// blob in a TEXT column, or as text in a BLOB one), which lookups also match.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub text: String,
    pub value: SqlValue,
    pub alt: Option<SqlValue>,
}

impl Key {
    /// The two values a lookup binds for `column IN (?, ?)`.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn lookup(&self) -> [SqlValue; 2] {
        [
            self.value.clone(),
            self.alt.clone().unwrap_or_else(|| self.value.clone()),
        ]
    }
}

/// Bytes from the text form of a blob: a hyphenated UUID or hex, in either case.
pub(crate) fn parse_blob_text(s: &str) -> Option<Vec<u8>> {
    let hex: String = if s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-') {
        s.chars().filter(|c| *c != '-').collect()
    } else {
        s.to_owned()
    };
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// The text form of a blob, as the capture triggers write it: 16 bytes as a lowercase
/// hyphenated UUID, any other length as lowercase hex.
pub(crate) fn blob_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if bytes.len() == 16 {
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    } else {
        hex
    }
}
