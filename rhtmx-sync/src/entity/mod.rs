//! What the engine knows about a registered entity: its table, key and columns, read
//! from the schema ([`key`] for keys, [`value`] for column values).
//!
//! Table and column names reach SQL only from here (the registered whitelist), quoted.

mod key;
mod value;

pub(crate) use self::key::{blob_text, parse_blob_text, Key, KeyKind};
pub(crate) use self::value::{convert, normalize, Column, ColumnKind, SqlValue};

use self::value::MAX_SAFE_INTEGER;
use crate::conflict::{Policy, SharedResolver};
use crate::error::{BuildError, Error, Result};
use crate::permission::Push;
use crate::scope::Scope;
use crate::syncable::SyncStrategy;

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
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub unique: Vec<Vec<String>>,
    /// Synced columns in order, the id included.
    pub columns: Vec<Column>,
    pub strategy: SyncStrategy,
    /// Whether a delete beats a concurrent update.
    pub delete_wins: bool,
    /// The resolver of [`SyncStrategy::Custom`].
    pub resolver: Option<SharedResolver>,
    /// What the push API may write (see [`crate::permission`]).
    pub push: Push,
    /// Which rows a principal may read (see [`crate::scope`]).
    pub scope: Option<Scope>,
    /// What was registered (key and column list, or "every column"), as a short hash:
    /// two engines with the same registration install the same triggers.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub registration: String,
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
    /// `#[sync(offline_writes = false)]`: never writable through the push API.
    pub offline_writes: bool,
    pub push: Push,
    pub scope: Option<Scope>,
}

impl EntitySpec {
    /// Every column of `table`, keyed by its primary key, with the default policy.
    pub(crate) fn named(table: impl Into<String>) -> EntitySpec {
        EntitySpec {
            table: table.into(),
            id: None,
            columns: None,
            strategy: SyncStrategy::default(),
            delete_wins: true,
            resolver: None,
            offline_writes: true,
            push: Push::Refused,
            scope: None,
        }
    }
}

/// Double-quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Single-quotes an SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One column as the schema describes it (SQLite's `pragma_table_xinfo` shape; the
/// other backends describe theirs the same way).
#[derive(sqlx::FromRow)]
pub(crate) struct TableInfo {
    pub name: String,
    /// The declared type, as SQLite's affinity rules read it.
    #[sqlx(rename = "type")]
    pub declared: String,
    pub notnull: i64,
    pub dflt_value: Option<String>,
    /// The column's position in the primary key (0: not in it).
    pub pk: i64,
    /// `pragma_table_xinfo`: 0 an ordinary column, 1 hidden (virtual tables), 2 or 3
    /// generated (virtual or stored).
    pub hidden: i64,
    /// The type as the database names it, where it differs from `declared` (PostgreSQL).
    #[sqlx(default)]
    pub sql_type: String,
}

impl Entity {
    #[cfg(feature = "sqlite")]
    /// Reads the table's schema and checks the registration against it.
    pub(crate) async fn resolve(
        conn: &mut sqlx::SqliteConnection,
        spec: EntitySpec,
    ) -> Result<Entity, BuildError> {
        // The `pragma_*` functions answer from the connection's in-memory schema, which
        // is reloaded only when a statement reads a table and finds the schema cookie
        // changed: after another connection's `CREATE INDEX`, say, they could still
        // answer from before it. Reading `sqlite_master` reloads it first.
        sqlx::query("SELECT 1 FROM sqlite_master LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
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
        warn_reused_keys(conn, table, &pk, &info).await?;
        let unique = unique_constraints(conn, &spec.table).await?;
        Entity::from_info(spec, &info, unique)
    }

    /// Checks a registration against its table's columns (`info`, not empty) and
    /// UNIQUE constraints, whichever backend read them.
    pub(crate) fn from_info(
        spec: EntitySpec,
        info: &[TableInfo],
        unique: Vec<Vec<String>>,
    ) -> Result<Entity, BuildError> {
        let table = &spec.table;
        let pks: Vec<&TableInfo> = info.iter().filter(|c| c.pk > 0).collect();
        let pk = match pks.as_slice() {
            [one] => one.name.clone(),
            _ => {
                return Err(BuildError::NoSingleColumnKey {
                    table: table.clone(),
                })
            }
        };
        let registration = {
            use sha2::{Digest, Sha256};
            let mut what = format!("{:?}|{:?}|{:?}", spec.table, spec.id, spec.columns);
            // Only a scoped entity's triggers record scopes: an unscoped one keeps the
            // registration (and the triggers) of versions that had no scopes.
            if let Some(column) = spec.scope.as_ref().and_then(Scope::scope_column) {
                what.push_str(&format!("|scope {column:?}"));
            }
            Sha256::digest(what.as_bytes())[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
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
                bytes: value::holds_bytes(&c.declared) || value::holds_bytes(&c.sql_type),
                sql_type: c.sql_type.clone(),
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
        if let Some(column) = spec.scope.as_ref().and_then(Scope::scope_column) {
            if column == id || !columns.iter().any(|c| c.name == column) {
                return Err(BuildError::ScopeColumn {
                    table: table.clone(),
                    column: column.to_owned(),
                });
            }
        }
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
            push: spec.push,
            scope: spec.scope,
            registration,
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

    /// The scope column, if the entity has one.
    pub(crate) fn scope_column(&self) -> Option<&str> {
        self.scope.as_ref().and_then(Scope::scope_column)
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
        // A PostgreSQL `uuid` key reads any spelling PostgreSQL accepts; the log and the
        // wire know it by its one canonical text, the one the triggers log.
        if self.id_column().sql_type == "uuid" {
            let text = id.as_str().and_then(canonical_uuid).ok_or_else(invalid)?;
            return Ok(Key {
                value: SqlValue::Text(text.clone()),
                text,
                alt: None,
            });
        }
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

/// A UUID in its canonical text (lowercase, 8-4-4-4-12) from any spelling PostgreSQL
/// reads (upper case, braces, hyphens anywhere or none); `None` if it is not one.
fn canonical_uuid(s: &str) -> Option<String> {
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) || s.starts_with('-') {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// Warns when `table`'s key is its rowid without `AUTOINCREMENT`: SQLite then gives a
/// deleted row's number to the next new row, and a write queued offline for the deleted
/// row (`PUT /notes/7`) would apply to whichever row is 7 by the time it is replayed.
/// A warning, not an error: apps that never address rows by number from a page are fine.
#[cfg(feature = "sqlite")]
async fn warn_reused_keys(
    conn: &mut sqlx::SqliteConnection,
    table: &str,
    id: &str,
    info: &[TableInfo],
) -> Result<(), BuildError> {
    // Only a column declared exactly `INTEGER` is the rowid (`INT` is not).
    let rowid = info
        .iter()
        .any(|c| c.name == id && c.declared.eq_ignore_ascii_case("INTEGER"));
    if !rowid {
        return Ok(());
    }
    let sql: Option<String> =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(table)
            .fetch_optional(&mut *conn)
            .await?;
    let sql = sql.unwrap_or_default().to_ascii_uppercase();
    if !sql.contains("AUTOINCREMENT") && !sql.contains("WITHOUT ROWID") {
        tracing::warn!(
            table,
            key = id,
            "`{table}.{id}` is an INTEGER PRIMARY KEY without AUTOINCREMENT: SQLite reuses a \
             deleted row's number, so a write queued offline for a deleted row would apply to \
             the new row that got its number; declare it `INTEGER PRIMARY KEY AUTOINCREMENT`"
        );
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_one_canonical_text() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        for spelling in [
            canonical,
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(
                canonical_uuid(spelling).as_deref(),
                Some(canonical),
                "{spelling}"
            );
        }
        for bad in [
            "zz",
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(canonical_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
