//! Reading a registered table from PostgreSQL's catalog, in the shape SQLite describes
//! its columns in, so that one set of checks ([`Entity::from_info`]) serves both.

use sqlx::PgConnection;

use crate::entity::{Entity, EntitySpec, TableInfo};
use crate::error::BuildError;

/// Each column of the table `$1` (resolved on the `search_path`, as the app's own
/// queries would), in order: its type named as SQLite's affinity rules read it, whether
/// it is `NOT NULL`, its default (an identity column's is `identity`), its position in
/// the primary key, and 3 for a generated column.
const COLUMNS: &str = r#"
SELECT a.attname::text AS name,
       -- A domain reads as its base type.
       CASE (SELECT b.typname FROM pg_type b
             WHERE b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)
           WHEN 'bool' THEN 'BOOLEAN'
           WHEN 'int2' THEN 'INTEGER' WHEN 'int4' THEN 'INTEGER' WHEN 'int8' THEN 'INTEGER'
           WHEN 'float4' THEN 'REAL' WHEN 'float8' THEN 'REAL'
           WHEN 'numeric' THEN 'NUMERIC'
           WHEN 'json' THEN 'JSON' WHEN 'jsonb' THEN 'JSON'
           WHEN 'bytea' THEN 'BLOB'
           -- An array travels as a JSON array (see `write`).
           ELSE CASE WHEN t.typcategory = 'A' THEN 'JSON' ELSE 'TEXT' END
       END AS "type",
       a.attnotnull::int::int8 AS "notnull",
       CASE WHEN a.attidentity <> '' THEN 'identity'
            ELSE pg_get_expr(d.adbin, d.adrelid) END AS dflt_value,
       -- `indkey` counts from 0.
       COALESCE(array_position(i.indkey::int2[], a.attnum)
                - array_lower(i.indkey::int2[], 1) + 1, 0)::int8 AS pk,
       CASE WHEN a.attgenerated <> '' THEN 3 ELSE 0 END::int8 AS hidden,
       format_type(a.atttypid, a.atttypmod) AS sql_type
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"#;

impl crate::backend::Schema for PgConnection {
    async fn resolve(&mut self, spec: EntitySpec) -> Result<Entity, BuildError> {
        resolve(self, spec).await
    }
}

/// Reads `spec`'s table and checks the registration against it.
///
/// PostgreSQL has no `REPLACE`: a conflicting insert either fails or, with `ON CONFLICT
/// DO UPDATE`, fires the update trigger, so no UNIQUE constraint hides a delete and
/// none is recorded.
pub(crate) async fn resolve(
    conn: &mut PgConnection,
    spec: EntitySpec,
) -> Result<Entity, BuildError> {
    let info: Vec<TableInfo> = sqlx::query_as(COLUMNS)
        .bind(&spec.table)
        .fetch_all(&mut *conn)
        .await?;
    if info.is_empty() {
        // `to_regclass` reads `other.todos` as a schema and a table.
        let elsewhere: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&spec.table)
            .fetch_one(&mut *conn)
            .await
            .unwrap_or(false);
        let table = spec.table.clone();
        return Err(match elsewhere {
            true => BuildError::OutsideSearchPath { table },
            false => BuildError::NoSuchTable { table },
        });
    }
    // The log names a row by its key's text, and clients compare keys byte for byte:
    // under a nondeterministic collation (or `citext`) `abc` and `ABC` are one row in
    // the table but two in every mirror.
    let collation: Option<String> = sqlx::query_scalar(KEY_COLLATION)
        .bind(&spec.table)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(collation) = collation {
        return Err(BuildError::KeyCollation {
            table: spec.table,
            collation,
        });
    }
    Entity::from_info(spec, &info, Vec::new())
}

/// The collation of the primary key of the table `$1` when it treats different texts as
/// equal: a nondeterministic collation, or the `citext` type. No row otherwise.
const KEY_COLLATION: &str = "
SELECT CASE WHEN t.typname = 'citext' THEN 'citext' ELSE c.collname::text END
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation c ON c.oid = i.indcollation[0]
WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisprimary
  AND (NOT COALESCE(c.collisdeterministic, true) OR t.typname = 'citext')
LIMIT 1";
