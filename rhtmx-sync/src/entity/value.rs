//! How a column's values travel: its kind from the declared SQL type, and how a
//! client's JSON value becomes an SQL value (and back, as the log encodes it).

use crate::error::{Error, Result};

/// How a column's values travel as JSON, derived from its declared SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    /// `BOOLEAN`: stored 0/1, sent as `true`/`false`.
    Bool,
    /// `JSON`: stored as JSON text, sent as the JSON value.
    Json,
    /// INTEGER affinity.
    Integer,
    /// REAL affinity.
    Real,
    /// TEXT affinity.
    Text,
    /// NUMERIC affinity (`DATETIME`, `DECIMAL`, ...): numbers or strings.
    Numeric,
    /// No declared type or `BLOB`: any scalar.
    Any,
}

impl ColumnKind {
    /// SQLite's affinity rules (section 3.1 of "Datatypes In SQLite"), with `BOOL` and
    /// `JSON` singled out because their JSON form differs from their storage.
    pub(crate) fn from_declared(declared: &str) -> Self {
        let t = declared.to_ascii_uppercase();
        if t.contains("BOOL") {
            ColumnKind::Bool
        } else if t.contains("JSON") {
            ColumnKind::Json
        } else if t.contains("INT") {
            ColumnKind::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            ColumnKind::Text
        } else if t.is_empty() || t.contains("BLOB") {
            ColumnKind::Any
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            ColumnKind::Real
        } else {
            ColumnKind::Numeric
        }
    }
}

/// One synced column.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    pub kind: ColumnKind,
    pub not_null: bool,
    pub has_default: bool,
    /// `GENERATED ALWAYS AS (...)`, virtual or stored: synced read-only.
    pub generated: bool,
    /// Declared for bytes (`BLOB`, PostgreSQL's `bytea`): their text form (a UUID or
    /// hex) is converted back to bytes.
    pub bytes: bool,
    /// The column's type as the database names it (PostgreSQL casts values to it).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub sql_type: String,
}

/// The largest integer a browser's JSON numbers hold exactly (2^53 − 1).
pub(crate) const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A value ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Converts a client's JSON value for `column` into an SQL value, or says why not.
pub(crate) fn convert(column: &Column, value: &serde_json::Value) -> Result<SqlValue> {
    use serde_json::Value as J;
    let name = &column.name;
    let wrong = |expected: &str| {
        Error::invalid(format!(
            "field `{name}` expects {expected}, got {}",
            kind_of(value)
        ))
    };
    Ok(match (column.kind, value) {
        (_, J::Null) if column.not_null => {
            return Err(Error::invalid(format!("field `{name}` cannot be null")))
        }
        (_, J::Null) => SqlValue::Null,
        (ColumnKind::Json, v) => SqlValue::Text(v.to_string()),
        (ColumnKind::Bool, J::Bool(b)) => SqlValue::Int(*b as i64),
        (ColumnKind::Bool, J::Number(n)) => match n.as_i64() {
            Some(i @ (0 | 1)) => SqlValue::Int(i),
            _ => return Err(wrong("a boolean")),
        },
        (ColumnKind::Bool, _) => return Err(wrong("a boolean")),
        (ColumnKind::Integer, J::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Int(i),
            None => return Err(wrong("an integer")),
        },
        // Beyond ±(2^53 − 1) integers travel as strings (see `normalize`).
        (ColumnKind::Integer, J::String(s)) => match s.parse::<i64>() {
            Ok(i) => SqlValue::Int(i),
            Err(_) => return Err(wrong("an integer")),
        },
        (ColumnKind::Integer, _) => return Err(wrong("an integer")),
        (ColumnKind::Real, J::Number(n)) => SqlValue::Real(n.as_f64().unwrap_or_default()),
        (ColumnKind::Real, _) => return Err(wrong("a number")),
        (ColumnKind::Text, J::String(s)) => SqlValue::Text(s.clone()),
        (ColumnKind::Text, _) => return Err(wrong("a string")),
        (ColumnKind::Numeric | ColumnKind::Any, J::Number(n)) => match n.as_i64() {
            Some(i) => SqlValue::Int(i),
            None => SqlValue::Real(n.as_f64().unwrap_or_default()),
        },
        // Bytes travel in their text form (a UUID or hex, as the log encodes them): in a
        // column declared for bytes, that form is bytes again, or a round trip through
        // a client or another engine would turn them into text.
        (ColumnKind::Any, J::String(s)) if column.bytes && s.is_empty() => {
            SqlValue::Blob(Vec::new())
        }
        (ColumnKind::Any, J::String(s)) if column.bytes => {
            super::key::parse_blob_text(s).map_or_else(|| SqlValue::Text(s.clone()), SqlValue::Blob)
        }
        (ColumnKind::Numeric | ColumnKind::Any, J::String(s)) => SqlValue::Text(s.clone()),
        (ColumnKind::Numeric | ColumnKind::Any, J::Bool(b)) => SqlValue::Int(*b as i64),
        (ColumnKind::Numeric | ColumnKind::Any, _) => return Err(wrong("a scalar")),
    })
}

/// Whether a column whose declared type (or PostgreSQL's name for it) is `declared`
/// holds bytes: `BLOB`, `bytea`.
pub(crate) fn holds_bytes(declared: &str) -> bool {
    let t = declared.to_ascii_uppercase();
    t.contains("BLOB") || t.contains("BYTEA")
}

/// The JSON a value gets in the change log (as the capture triggers encode it), so that
/// a client's value compares equal to the same value read back from the table.
pub(crate) fn normalize(column: &Column, value: &SqlValue) -> serde_json::Value {
    use serde_json::Value as J;
    match (column.kind, value) {
        (_, SqlValue::Null) => J::Null,
        (ColumnKind::Bool, SqlValue::Int(i)) => J::Bool(*i != 0),
        (ColumnKind::Json, SqlValue::Text(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone()))
        }
        (_, SqlValue::Int(i)) if i.unsigned_abs() > MAX_SAFE_INTEGER.unsigned_abs() => {
            J::String(i.to_string())
        }
        (_, SqlValue::Int(i)) => (*i).into(),
        (_, SqlValue::Real(f)) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        (_, SqlValue::Text(s)) => J::String(s.clone()),
        (_, SqlValue::Blob(b)) => J::String(super::key::blob_text(b)),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(kind: ColumnKind, not_null: bool) -> Column {
        Column {
            name: "c".into(),
            kind,
            not_null,
            has_default: false,
            generated: false,
            bytes: false,
            sql_type: String::new(),
        }
    }

    #[test]
    fn affinity_follows_sqlite_rules() {
        assert_eq!(ColumnKind::from_declared("BOOLEAN"), ColumnKind::Bool);
        assert_eq!(ColumnKind::from_declared("bigint"), ColumnKind::Integer);
        assert_eq!(ColumnKind::from_declared("VARCHAR(20)"), ColumnKind::Text);
        assert_eq!(ColumnKind::from_declared(""), ColumnKind::Any);
        assert_eq!(ColumnKind::from_declared("DOUBLE"), ColumnKind::Real);
        assert_eq!(ColumnKind::from_declared("DATETIME"), ColumnKind::Numeric);
        assert_eq!(ColumnKind::from_declared("jsonb"), ColumnKind::Json);
    }

    #[test]
    fn conversion_checks_types_and_nullability() {
        let t = col(ColumnKind::Text, true);
        assert_eq!(
            convert(&t, &json!("x")).unwrap(),
            SqlValue::Text("x".into())
        );
        assert!(convert(&t, &json!(1)).is_err());
        assert!(convert(&t, &json!(null)).is_err());
        let b = col(ColumnKind::Bool, false);
        assert_eq!(convert(&b, &json!(true)).unwrap(), SqlValue::Int(1));
        assert_eq!(convert(&b, &json!(null)).unwrap(), SqlValue::Null);
        assert!(convert(&b, &json!(2)).is_err());
        let i = col(ColumnKind::Integer, false);
        assert!(convert(&i, &json!(1.5)).is_err());
        let j = col(ColumnKind::Json, false);
        assert_eq!(
            convert(&j, &json!({"a": 1})).unwrap(),
            SqlValue::Text("{\"a\":1}".into())
        );
    }

    #[test]
    fn bytes_in_their_text_form_are_bytes_again_in_a_column_for_bytes() {
        let blob = Column {
            bytes: holds_bytes("BLOB"),
            ..col(ColumnKind::Any, false)
        };
        let bytes = vec![0xc8; 8];
        let sent = normalize(&blob, &SqlValue::Blob(bytes.clone()));
        assert_eq!(sent, json!("c8c8c8c8c8c8c8c8"));
        assert_eq!(convert(&blob, &sent).unwrap(), SqlValue::Blob(bytes));
        let uuid = json!("d0d0d0d0-d0d0-d0d0-d0d0-d0d0d0d0d0d0");
        assert_eq!(
            convert(&blob, &uuid).unwrap(),
            SqlValue::Blob(vec![0xd0; 16])
        );
        // Text that is not a blob's form stays text; untyped columns keep strings.
        assert_eq!(
            convert(&blob, &json!("note")).unwrap(),
            SqlValue::Text("note".into())
        );
        let untyped = col(ColumnKind::Any, false);
        assert_eq!(
            convert(&untyped, &json!("c8c8")).unwrap(),
            SqlValue::Text("c8c8".into())
        );
    }

    #[test]
    fn normalized_values_match_the_logs_encoding() {
        let b = col(ColumnKind::Bool, false);
        assert_eq!(normalize(&b, &convert(&b, &json!(1)).unwrap()), json!(true));
        let j = col(ColumnKind::Json, false);
        let v = json!({"a": [1, 2]});
        assert_eq!(normalize(&j, &convert(&j, &v).unwrap()), v);
        let r = col(ColumnKind::Real, false);
        assert_eq!(normalize(&r, &convert(&r, &json!(2)).unwrap()), json!(2.0));
        let t = col(ColumnKind::Text, false);
        assert_eq!(normalize(&t, &SqlValue::Null), json!(null));
    }
}
