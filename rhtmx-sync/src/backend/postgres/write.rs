//! The write transaction on PostgreSQL (see [`WriteTx`]).
//!
//! It first locks the rows it will write (`FOR UPDATE`, in key order), then takes the
//! stamper's lock and holds it to the end, so while it writes it is the only one
//! numbering entries: it numbers what it logs as it goes ([`WriteTx::settle`]), which
//! gives a write's entry (and a conflict's) its version before the transaction answers,
//! exactly as on SQLite, and keeps two pushes from merging against each other's
//! uncommitted rows. Locking the rows before the stamper's lock means a push that waits
//! for a row the app holds in a long transaction holds back nobody else's numbering.
//! The app's own writes to the locked rows wait until the push commits; everything that
//! touched them before is numbered first, so the merge reads their whole history.
//! Other writes — the app's, other rows — go on beside it and are numbered after it.
//!
//! Values are bound as text and cast to each column's own type (`$1::uuid`,
//! `$2::timestamptz`), so any type PostgreSQL can read from text can be written.

use sqlx::postgres::{PgArguments, PgConnection, PgPool};
use sqlx::{Postgres, Transaction};

use super::capture::{key_text, kind_of, row_json};
use super::stamp::{number, BATCH, STAMP_LOCK};
use super::EFFECTIVE_HLC;
use crate::backend::{Context, Effect, EntryRow, NewEntry, WriteTx};
use crate::entity::{quote_ident, Entity, Key, SqlValue};
use crate::error::Result;

/// How long a write holding the numbering lock may wait for another transaction's lock.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Begins the engine's write transaction ([`WriteTx::prepare`] takes its locks).
pub(crate) async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *tx)
        .await?;
    // The rows' JSON the merge reads is the text the triggers log.
    super::capture::pin(&mut tx).await?;
    Ok(tx)
}

/// A value in the text form PostgreSQL reads for every type (`\x..` for bytes).
fn text(value: SqlValue) -> Option<String> {
    match value {
        SqlValue::Null => None,
        SqlValue::Int(n) => Some(n.to_string()),
        SqlValue::Real(f) => Some(f.to_string()),
        SqlValue::Text(s) => Some(s),
        SqlValue::Blob(b) => Some(b.iter().fold(String::from("\\x"), |mut s, byte| {
            s.push_str(&format!("{byte:02x}"));
            s
        })),
    }
}

/// A value for `column`: a `bytea` column takes the blob text form a pull shows (hex,
/// or a UUID) and nothing else — other text would be stored as other bytes than the
/// client meant, and read back differently (422).
fn value_for(entity: &Entity, column: &str, value: SqlValue) -> Result<SqlValue> {
    match value {
        SqlValue::Text(s) if sql_type(entity, column) == "bytea" => {
            match crate::entity::parse_blob_text(&s) {
                Some(bytes) => Ok(SqlValue::Blob(bytes)),
                None => Err(crate::Error::invalid(format!(
                    "field `{}` holds bytes: send them as hexadecimal digits",
                    crate::error::quote(column)
                ))),
            }
        }
        other => Ok(other),
    }
}

/// The type to cast a column's values to (text where it is unknown).
fn sql_type<'a>(entity: &'a Entity, column: &str) -> &'a str {
    entity
        .column(column)
        .map(|c| c.sql_type.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or("text")
}

/// `$n` read as `column`'s type: text cast to it, or for an array the elements of the
/// JSON array a pull shows (`["a","b"]`), as PostgreSQL's array literal would not be.
fn cast(entity: &Entity, column: &str, n: usize) -> String {
    let ty = sql_type(entity, column);
    if ty.ends_with("[]") {
        format!(
            "CASE WHEN ${n} IS NULL THEN NULL ELSE (SELECT coalesce(array_agg(_e), '{{}}') \
             FROM jsonb_array_elements_text(${n}::jsonb) AS _e) END::{ty}"
        )
    } else {
        format!("${n}::{ty}")
    }
}

/// `$n::type` for the key column.
fn key_match(entity: &Entity, n: usize) -> String {
    format!(
        "{} = ${n}::{}",
        quote_ident(&entity.id),
        sql_type(entity, &entity.id)
    )
}

async fn run(conn: &mut PgConnection, sql: &str, binds: Vec<SqlValue>) -> Result<()> {
    let mut query: Query<'_> = sqlx::query(sql);
    for value in binds {
        query = query.bind(text(value));
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// The columns of [`EntryRow`].
fn entry_columns() -> String {
    format!("version, entity, entity_id, action, data, changed, client_id, {EFFECTIVE_HLC} AS hlc, origin_hlc, clocks")
}

/// The one row with the key bound as `$1`, as `_o` (its `to_jsonb`), locked by `lock`.
fn one_row(entity: &Entity, lock: &str) -> String {
    format!(
        "(SELECT to_jsonb(_t) AS _o FROM {} AS _t WHERE _t.{}{lock}) AS _rows",
        quote_ident(&entity.table),
        key_match(entity, 1),
    )
}

impl WriteTx for PgConnection {
    /// Locks the rows first (waiting, if the app holds one, without holding anything
    /// others need), then the stamper's lock, then numbers every entry committed so
    /// far: the rows' whole history is numbered before the merge reads it, and the
    /// transaction's own entries come after everything committed before it.
    async fn prepare(&mut self, entity: &Entity, keys: &[&Key]) -> Result<()> {
        // Pushes take turns per key first, rows that do not exist yet included, always
        // in one order: a row another push creates meanwhile is then never locked by two
        // of them in opposite orders.
        let mut names: Vec<&str> = keys.iter().map(|k| k.text.as_str()).collect();
        names.sort();
        names.dedup();
        sqlx::query(
            "SELECT count(pg_advisory_xact_lock(hashtext($1), h)) FROM \
             (SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k ORDER BY 1) AS _keys",
        )
        .bind(&*entity.name)
        .bind(&names)
        .execute(&mut *self)
        .await?;
        let mut texts: Vec<String> = keys.iter().filter_map(|k| text(k.value.clone())).collect();
        texts.sort();
        texts.dedup();
        let id = quote_ident(&entity.id);
        sqlx::query(&format!(
            "SELECT 1 FROM {} AS _t WHERE _t.{id} = ANY($1::text[]::{}[]) \
             ORDER BY _t.{id} FOR UPDATE",
            quote_ident(&entity.table),
            sql_type(entity, &entity.id)
        ))
        .bind(texts)
        .execute(&mut *self)
        .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(STAMP_LOCK)
            .execute(&mut *self)
            .await?;
        // From here every other engine's numbering waits for this transaction: a write
        // that must wait for another transaction (a key it inserts, a cascade, a foreign
        // key) waits at most this long, then the push is answered "busy, retry" (429).
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            LOCK_WAIT.as_millis()
        ))
        .execute(&mut *self)
        .await?;
        self.settle().await
    }

    async fn settle(&mut self) -> Result<()> {
        while number(self).await? == BATCH {}
        Ok(())
    }

    async fn read_row(&mut self, entity: &Entity, key: &Key) -> Result<Option<String>> {
        let row: Option<String> = sqlx::query_scalar(&format!(
            "SELECT {} FROM {}",
            row_json(entity, "_o"),
            one_row(entity, " FOR UPDATE")
        ))
        .bind(text(key.value.clone()))
        .fetch_optional(&mut *self)
        .await?;
        Ok(row)
    }

    async fn read_scope(&mut self, entity: &Entity, key: &Key) -> Result<Option<Option<String>>> {
        let Some(column) = entity.scope_column() else {
            return Ok(None);
        };
        Ok(sqlx::query_scalar(&format!(
            "SELECT {} FROM {}",
            key_text("_o", column, kind_of(entity, column)),
            one_row(entity, "")
        ))
        .bind(text(key.value.clone()))
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn set_context(&mut self, c: &Context<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO _rhtmx_sync_context \
             (entity, entity_id, hlc, client_id, changed, conflict, digest) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (entity, entity_id) DO UPDATE SET hlc = excluded.hlc, \
             client_id = excluded.client_id, changed = excluded.changed, \
             conflict = excluded.conflict, digest = excluded.digest",
        )
        .bind(c.entity)
        .bind(c.id)
        .bind(&c.hlc)
        .bind(c.client_id)
        .bind(c.changed)
        .bind(c.conflict)
        .bind(c.digest)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn clear_context(&mut self, entity: &str, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM _rhtmx_sync_context WHERE entity = $1 AND entity_id = $2")
            .bind(entity)
            .bind(id)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn insert(&mut self, entity: &Entity, columns: Vec<(String, SqlValue)>) -> Result<()> {
        let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
        let values: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| cast(entity, n, i + 1))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(&entity.table),
            names.join(", "),
            values.join(", ")
        );
        let binds = columns
            .into_iter()
            .map(|(n, v)| value_for(entity, &n, v))
            .collect::<Result<_>>()?;
        run(self, &sql, binds).await
    }

    async fn update(
        &mut self,
        entity: &Entity,
        key: &Key,
        columns: Vec<(String, SqlValue)>,
    ) -> Result<()> {
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (n, _))| format!("{} = {}", quote_ident(n), cast(entity, n, i + 1)))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            quote_ident(&entity.table),
            sets.join(", "),
            key_match(entity, columns.len() + 1)
        );
        let mut binds: Vec<SqlValue> = columns
            .into_iter()
            .map(|(n, v)| value_for(entity, &n, v))
            .collect::<Result<_>>()?;
        binds.push(key.value.clone());
        run(self, &sql, binds).await
    }

    async fn delete(&mut self, entity: &Entity, key: &Key) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            quote_ident(&entity.table),
            key_match(entity, 1)
        );
        run(self, &sql, vec![key.value.clone()]).await
    }

    async fn latest_after(&mut self, entity: &str, id: &str, after: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT version FROM _rhtmx_sync_log WHERE version > $1 AND entity = $2 \
             AND entity_id = $3 ORDER BY version DESC LIMIT 1",
        )
        .bind(after)
        .bind(entity)
        .bind(id)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn append(&mut self, e: &NewEntry<'_>) -> Result<i64> {
        let c = &e.context;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO _rhtmx_sync_log \
             (entity, entity_id, action, data, changed, client_id, hlc, conflict, digest, \
             scope_before, scope_after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING seq",
        )
        .bind(c.entity)
        .bind(c.id)
        .bind(e.action)
        .bind(e.data)
        .bind(c.changed)
        .bind(c.client_id)
        .bind(&c.hlc)
        .bind(c.conflict)
        .bind(c.digest)
        .bind(e.scope.as_deref())
        .fetch_one(&mut *self)
        .await?;
        self.settle().await?;
        Ok(
            sqlx::query_scalar("SELECT version FROM _rhtmx_sync_log WHERE seq = $1")
                .bind(seq)
                .fetch_one(&mut *self)
                .await?,
        )
    }

    async fn row_log(
        &mut self,
        entity: &str,
        id: &str,
        (after, upto): (i64, i64),
    ) -> Result<Vec<EntryRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM _rhtmx_sync_log \
             WHERE entity = $1 AND entity_id = $2 AND version > $3 AND version <= $4 \
             ORDER BY version",
            entry_columns()
        ))
        .bind(entity)
        .bind(id)
        .bind(after)
        .bind(upto)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn log_after(&mut self, after: i64) -> Result<Vec<EntryRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM _rhtmx_sync_log WHERE version > $1 ORDER BY version",
            entry_columns()
        ))
        .bind(after)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn data_at(
        &mut self,
        entity: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<Option<String>>> {
        Ok(sqlx::query_scalar(
            "SELECT data FROM _rhtmx_sync_log WHERE entity = $1 AND entity_id = $2 \
             AND version <= $3 ORDER BY version DESC LIMIT 1",
        )
        .bind(entity)
        .bind(id)
        .bind(version)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn last_live(&mut self, entity: &str, id: &str) -> Result<Option<(i64, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT version, data FROM _rhtmx_sync_log WHERE entity = $1 AND entity_id = $2 \
             AND action <> 'delete' AND version IS NOT NULL ORDER BY version DESC LIMIT 1",
        )
        .bind(entity)
        .bind(id)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn parked(&mut self, entity: &str, id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT change FROM _rhtmx_sync_parked WHERE entity = $1 AND entity_id = $2",
        )
        .bind(entity)
        .bind(id)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn deletes_after(
        &mut self,
        entity: &str,
        id: &str,
        after: i64,
    ) -> Result<(Option<i64>, Option<String>)> {
        Ok(sqlx::query_as(&format!(
            "SELECT min(version), max({EFFECTIVE_HLC}) FROM _rhtmx_sync_log \
             WHERE entity = $1 AND entity_id = $2 AND version > $3"
        ))
        .bind(entity)
        .bind(id)
        .bind(after)
        .fetch_one(&mut *self)
        .await?)
    }

    async fn replayed(&mut self, digest: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM _rhtmx_sync_log WHERE digest = $1) \
                 OR EXISTS (SELECT 1 FROM _rhtmx_sync_replays WHERE digest = $1)",
        )
        .bind(digest)
        .fetch_one(&mut *self)
        .await?)
    }

    async fn effects(&mut self, entity: &str, after: i64) -> Result<Vec<Effect>> {
        Ok(sqlx::query_as(
            "SELECT entity_id, action, scope_before, scope_after FROM _rhtmx_sync_log \
             WHERE version > $1 AND entity = $2 ORDER BY version",
        )
        .bind(after)
        .bind(entity)
        .fetch_all(&mut *self)
        .await?)
    }
}
