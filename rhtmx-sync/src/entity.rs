//! What the engine knows about a registered entity: its table, key and columns, read
//! from the schema, and how JSON values from clients become SQL values.
//!
//! Table and column names reach SQL only from here (the registered whitelist), quoted.

use crate::conflict::{Policy, SharedResolver};
use crate::error::{BuildError, Error, Result};
use crate::syncable::SyncStrategy;

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
}

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
    fn from_column(column: &Column, declared: &str) -> KeyKind {
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

/// The largest integer a browser's JSON numbers hold exactly (2^53 − 1).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A registered entity: the wire name is the table name.
#[derive(Debug, Clone)]
pub(crate) struct Entity {
    /// The wire name: the table name, shared cheaply with every event.
    pub name: std::sync::Arc<str>,
    pub table: String,
    pub id: String,
    /// How the key is stored.
    pub key: KeyKind,
    /// The columns of each UNIQUE constraint or index other than the key: a REPLACE
    /// that collides on one deletes a row without firing its delete trigger.
    pub unique: Vec<Vec<String>>,
    /// Synced columns in order, the id included.
    pub columns: Vec<Column>,
    pub strategy: SyncStrategy,
    /// Whether a delete beats a concurrent update.
    pub delete_wins: bool,
    /// The resolver of [`SyncStrategy::Custom`].
    pub resolver: Option<SharedResolver>,
    #[allow(dead_code)] // carried for the client's configuration; not enforced yet
    pub offline_writes: bool,
}

/// What a registration asks for before the schema is read.
#[derive(Debug, Clone)]
pub(crate) struct EntitySpec {
    pub table: String,
    /// `None`: the table's primary key.
    pub id: Option<String>,
    /// `None`: every column of the table.
    pub columns: Option<Vec<String>>,
    pub strategy: SyncStrategy,
    pub delete_wins: bool,
    pub resolver: Option<SharedResolver>,
    pub offline_writes: bool,
}

/// A value ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Double-quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Single-quotes an SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[derive(sqlx::FromRow)]
struct TableInfo {
    name: String,
    #[sqlx(rename = "type")]
    declared: String,
    notnull: i64,
    dflt_value: Option<String>,
    pk: i64,
    /// `pragma_table_xinfo`: 0 an ordinary column, 1 hidden (virtual tables), 2 or 3
    /// generated (virtual or stored).
    hidden: i64,
}

impl Entity {
    /// Reads the table's schema and checks the registration against it.
    pub(crate) async fn resolve(
        conn: &mut sqlx::SqliteConnection,
        spec: EntitySpec,
    ) -> Result<Entity, BuildError> {
        let info: Vec<TableInfo> = sqlx::query_as(
            // `_xinfo`: `pragma_table_info` leaves generated columns out.
            r#"SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?)
               WHERE hidden <> 1 ORDER BY cid"#,
        )
        .bind(&spec.table)
        .fetch_all(&mut *conn)
        .await?;
        let table = &spec.table;
        if info.is_empty() {
            return Err(BuildError::NoSuchTable {
                table: table.clone(),
            });
        }
        let pks: Vec<&TableInfo> = info.iter().filter(|c| c.pk > 0).collect();
        let pk = match pks.as_slice() {
            [one] => one.name.clone(),
            _ => {
                return Err(BuildError::NoSingleColumnKey {
                    table: table.clone(),
                })
            }
        };
        // The log names a row by its key's text, and clients compare keys byte for byte:
        // under another collation `abc` and `ABC` are one row in the table but two in
        // every mirror (a REPLACE or a push by the other spelling leaves a phantom).
        let collation: Option<String> = sqlx::query_scalar(
            "SELECT x.coll FROM pragma_index_list(?1) AS l, pragma_index_xinfo(l.name) AS x \
             WHERE l.origin = 'pk' AND x.key = 1 AND upper(x.coll) != 'BINARY' LIMIT 1",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(collation) = collation {
            return Err(BuildError::KeyCollation {
                table: table.clone(),
                collation,
            });
        }
        let id = spec.id.unwrap_or_else(|| pk.clone());
        if id != pk {
            return Err(BuildError::WrongKey {
                table: table.clone(),
                id,
                key: pk,
            });
        }
        let wanted: Vec<String> = match spec.columns {
            Some(cols) => cols,
            None => info.iter().map(|c| c.name.clone()).collect(),
        };
        if !wanted.contains(&id) {
            return Err(BuildError::KeyNotSynced {
                table: table.clone(),
                id,
            });
        }
        let mut columns = Vec::with_capacity(wanted.len());
        for name in wanted {
            let Some(c) = info.iter().find(|c| c.name == name) else {
                return Err(BuildError::NoSuchColumn {
                    table: table.clone(),
                    column: name,
                });
            };
            columns.push(Column {
                name,
                kind: ColumnKind::from_declared(&c.declared),
                not_null: c.notnull != 0,
                has_default: c.dflt_value.is_some(),
                generated: matches!(c.hidden, 2 | 3),
            });
        }
        let key = {
            let column = columns
                .iter()
                .find(|c| c.name == id)
                .expect("checked above");
            let declared = info
                .iter()
                .find(|c| c.name == id)
                .map(|c| c.declared.as_str());
            KeyKind::from_column(column, declared.unwrap_or_default())
        };
        let unique = unique_constraints(conn, &spec.table).await?;
        Ok(Entity {
            name: spec.table.as_str().into(),
            table: spec.table,
            id,
            key,
            unique,
            columns,
            strategy: spec.strategy,
            delete_wins: spec.delete_wins,
            resolver: spec.resolver,
            offline_writes: spec.offline_writes,
        })
    }

    /// How the entity resolves conflicts.
    pub(crate) fn policy(&self) -> Policy<'_> {
        Policy {
            strategy: self.strategy,
            resolver: self.resolver.as_ref().map(|r| &*r.0),
            delete_wins: self.delete_wins,
        }
    }

    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub(crate) fn id_column(&self) -> &Column {
        self.column(&self.id).expect("id column is always synced")
    }

    /// The id as it travels on the wire: a number for integer keys a browser can hold
    /// exactly, else a string.
    pub(crate) fn wire_id(&self, entity_id: &str) -> serde_json::Value {
        if self.key == KeyKind::Integer {
            if let Ok(n) = entity_id.parse::<i64>() {
                if n.unsigned_abs() <= MAX_SAFE_INTEGER.unsigned_abs() {
                    return n.into();
                }
            }
        }
        entity_id.into()
    }

    /// The id from a client: as the log stores it, and as the key column is matched.
    pub(crate) fn parse_id(&self, id: &serde_json::Value) -> Result<Key> {
        use serde_json::Value as J;
        let invalid = || {
            let expected = match self.key {
                KeyKind::Integer => "an integer",
                KeyKind::Blob => "a UUID or hex string",
                KeyKind::Text => "a string, not empty",
            };
            Error::invalid(format!(
                "`{}` is not a valid id for `{}`, which expects {expected}",
                crate::error::quote(&id.to_string()),
                self.table
            ))
        };
        match (self.key, id) {
            (KeyKind::Integer, J::Number(n)) => {
                let n = n.as_i64().ok_or_else(invalid)?;
                Ok(Key {
                    text: n.to_string(),
                    value: SqlValue::Int(n),
                    alt: None,
                })
            }
            (KeyKind::Integer, J::String(s)) => {
                let n: i64 = s.parse().map_err(|_| invalid())?;
                Ok(Key {
                    text: n.to_string(),
                    value: SqlValue::Int(n),
                    alt: None,
                })
            }
            (KeyKind::Blob, J::String(s)) => {
                let bytes = parse_blob_text(s).ok_or_else(invalid)?;
                let text = blob_text(&bytes);
                Ok(Key {
                    alt: Some(SqlValue::Text(text.clone())),
                    text,
                    value: SqlValue::Blob(bytes),
                })
            }
            (KeyKind::Text, J::String(s)) if !s.is_empty() => Ok(Key {
                text: s.clone(),
                value: SqlValue::Text(s.clone()),
                // An app that binds `uuid::Uuid` stores 16 bytes even in a TEXT column.
                alt: parse_blob_text(s)
                    .filter(|b| b.len() == 16 && s.len() == 36)
                    .map(SqlValue::Blob),
            }),
            (_, J::String(_) | J::Number(_)) => Err(invalid()),
            _ => Err(convert(self.id_column(), id).err().unwrap_or_else(invalid)),
        }
    }
}

/// The column lists of `table`'s UNIQUE constraints and indexes, the primary key aside.
/// An index on an expression cannot be matched by column and is left out (logged): a
/// REPLACE colliding through it removes a row unseen (see docs/ARCHITECTURE.md).
async fn unique_constraints(
    conn: &mut sqlx::SqliteConnection,
    table: &str,
) -> Result<Vec<Vec<String>>> {
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM pragma_index_list(?) WHERE \"unique\" = 1 AND origin != 'pk' ORDER BY name",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let mut unique = Vec::with_capacity(indexes.len());
    for index in indexes {
        let columns: Vec<Option<String>> =
            sqlx::query_scalar("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                .bind(&index)
                .fetch_all(&mut *conn)
                .await?;
        match columns.into_iter().collect::<Option<Vec<String>>>() {
            Some(columns) if !columns.is_empty() => unique.push(columns),
            _ => tracing::warn!(
                table,
                index,
                "a REPLACE colliding on this expression index is not logged"
            ),
        }
    }
    Ok(unique)
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
        (ColumnKind::Numeric | ColumnKind::Any, J::String(s)) => SqlValue::Text(s.clone()),
        (ColumnKind::Numeric | ColumnKind::Any, J::Bool(b)) => SqlValue::Int(*b as i64),
        (ColumnKind::Numeric | ColumnKind::Any, _) => return Err(wrong("a scalar")),
    })
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
        (_, SqlValue::Blob(b)) => J::String(blob_text(b)),
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

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
