//! The write transaction on SQLite (see [`WriteTx`]): `BEGIN IMMEDIATE` holds the write
//! lock, so the log's `AUTOINCREMENT` numbers each entry as it is inserted.

use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::Sqlite;

use crate::backend::{Context, Effect, EntryRow, NewEntry, WriteTx};
use crate::capture;
use crate::entity::{quote_ident, Entity, Key, SqlValue};
use crate::error::Result;
use crate::log::{CONTEXT_TABLE, EFFECTIVE_HLC, LOG_TABLE};

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Binds a value of any kind.
fn bind(q: Query<'_>, value: SqlValue) -> Query<'_> {
    match value {
        SqlValue::Null => q.bind(None::<i64>),
        SqlValue::Int(n) => q.bind(n),
        SqlValue::Real(f) => q.bind(f),
        SqlValue::Text(s) => q.bind(s),
        SqlValue::Blob(b) => q.bind(b),
    }
}

async fn run(conn: &mut SqliteConnection, sql: &str, binds: Vec<SqlValue>) -> Result<()> {
    let mut query = sqlx::query(sql);
    for value in binds {
        query = bind(query, value);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// The columns of [`EntryRow`].
fn entry_columns() -> String {
    format!("version, entity, entity_id, action, data, changed, client_id, {EFFECTIVE_HLC} AS hlc, origin_hlc, clocks")
}

impl WriteTx for SqliteConnection {
    /// `BEGIN IMMEDIATE` took the write lock already: nothing else writes meanwhile.
    async fn prepare(&mut self, _: &Entity, _: &[&Key]) -> Result<()> {
        Ok(())
    }

    async fn settle(&mut self) -> Result<()> {
        Ok(())
    }

    async fn read_row(&mut self, entity: &Entity, key: &Key) -> Result<Option<String>> {
        use sqlx::Row as _;
        let [value, alt] = key.lookup();
        let select = capture::row_select(entity);
        let row = bind(bind(sqlx::query(&select), value), alt)
            .fetch_optional(&mut *self)
            .await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    async fn read_scope(&mut self, entity: &Entity, key: &Key) -> Result<Option<Option<String>>> {
        let Some(column) = entity.scope_column() else {
            return Ok(None);
        };
        let [value, alt] = key.lookup();
        let select = format!(
            "SELECT {} FROM {} AS _row WHERE _row.{} IN (?, ?)",
            capture::key_text("_row", column),
            quote_ident(&entity.table),
            quote_ident(&entity.id)
        );
        use sqlx::Row as _;
        let row = bind(bind(sqlx::query(&select), value), alt)
            .fetch_optional(&mut *self)
            .await?;
        Ok(row.map(|r| r.get::<Option<String>, _>(0)))
    }

    async fn set_context(&mut self, c: &Context<'_>) -> Result<()> {
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO {CONTEXT_TABLE} \
             (entity, entity_id, hlc, client_id, changed, conflict, digest) \
             VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
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
        sqlx::query(&format!(
            "DELETE FROM {CONTEXT_TABLE} WHERE entity = ? AND entity_id = ?"
        ))
        .bind(entity)
        .bind(id)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn insert(&mut self, entity: &Entity, columns: Vec<(String, SqlValue)>) -> Result<()> {
        let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
        let marks = vec!["?"; names.len()].join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({marks})",
            quote_ident(&entity.table),
            names.join(", ")
        );
        run(self, &sql, columns.into_iter().map(|(_, v)| v).collect()).await
    }

    async fn update(
        &mut self,
        entity: &Entity,
        key: &Key,
        columns: Vec<(String, SqlValue)>,
    ) -> Result<()> {
        let sets: Vec<String> = columns
            .iter()
            .map(|(n, _)| format!("{} = ?", quote_ident(n)))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {} IN (?, ?)",
            quote_ident(&entity.table),
            sets.join(", "),
            quote_ident(&entity.id)
        );
        let mut binds: Vec<SqlValue> = columns.into_iter().map(|(_, v)| v).collect();
        binds.extend(key.lookup());
        run(self, &sql, binds).await
    }

    async fn delete(&mut self, entity: &Entity, key: &Key) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE {} IN (?, ?)",
            quote_ident(&entity.table),
            quote_ident(&entity.id)
        );
        run(self, &sql, key.lookup().to_vec()).await
    }

    async fn latest_after(&mut self, entity: &str, id: &str, after: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT version FROM {LOG_TABLE} WHERE version > ? AND entity = ? AND entity_id = ? \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(after)
        .bind(entity)
        .bind(id)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn append(&mut self, e: &NewEntry<'_>) -> Result<i64> {
        let c = &e.context;
        Ok(sqlx::query_scalar(&format!(
            "INSERT INTO {LOG_TABLE} \
             (entity, entity_id, action, data, changed, client_id, hlc, conflict, digest, \
             scope_before, scope_after) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?10, ?10) RETURNING version"
        ))
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
        .await?)
    }

    async fn row_log(
        &mut self,
        entity: &str,
        id: &str,
        (after, upto): (i64, i64),
    ) -> Result<Vec<EntryRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM {LOG_TABLE} \
             WHERE entity = ? AND entity_id = ? AND version > ? AND version <= ? \
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
            "SELECT {} FROM {LOG_TABLE} WHERE version > ? ORDER BY version",
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
        Ok(sqlx::query_scalar(&format!(
            "SELECT data FROM {LOG_TABLE} WHERE entity = ? AND entity_id = ? AND version <= ? \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(entity)
        .bind(id)
        .bind(version)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn last_live(&mut self, entity: &str, id: &str) -> Result<Option<(i64, Option<String>)>> {
        Ok(sqlx::query_as(&format!(
            "SELECT version, data FROM {LOG_TABLE} WHERE entity = ? AND entity_id = ? \
             AND action != 'delete' ORDER BY version DESC LIMIT 1"
        ))
        .bind(entity)
        .bind(id)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn parked(&mut self, entity: &str, id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT change FROM _rhtmx_sync_parked WHERE entity = ? AND entity_id = ?",
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
            "SELECT min(version), max({EFFECTIVE_HLC}) FROM {LOG_TABLE} \
             WHERE entity = ? AND entity_id = ? AND version > ?"
        ))
        .bind(entity)
        .bind(id)
        .bind(after)
        .fetch_one(&mut *self)
        .await?)
    }

    async fn replayed(&mut self, digest: &str) -> Result<bool> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {LOG_TABLE} WHERE digest = ?1) \
             OR EXISTS (SELECT 1 FROM _rhtmx_sync_replays WHERE digest = ?1)"
        ))
        .bind(digest)
        .fetch_one(&mut *self)
        .await?)
    }

    async fn effects(&mut self, entity: &str, after: i64) -> Result<Vec<Effect>> {
        Ok(sqlx::query_as(&format!(
            "SELECT entity_id, action, scope_before, scope_after FROM {LOG_TABLE} \
             WHERE version > ? AND entity = ? ORDER BY version"
        ))
        .bind(after)
        .bind(entity)
        .fetch_all(&mut *self)
        .await?)
    }
}
