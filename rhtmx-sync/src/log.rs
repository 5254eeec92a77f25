//! The change log: its tables, and reading it in version order.
//!
//! `version` is the log's `INTEGER PRIMARY KEY AUTOINCREMENT`: strictly increasing, never
//! reused (even after compaction deletes rows), and — because SQLite has one writer at a
//! time — committed in the order it is assigned, so "everything after version N" is a
//! well-defined, gap-free cursor.

use crate::error::Result;
use sqlx::SqliteConnection;

/// The change log table.
pub(crate) const LOG_TABLE: &str = "_rhtmx_sync_log";

/// The version of the engine's own tables, for future migrations.
const SCHEMA_VERSION: i64 = 1;

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS _rhtmx_sync_log (
    version    INTEGER PRIMARY KEY AUTOINCREMENT,
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    data       TEXT,
    changed    TEXT,
    client_id  TEXT,
    hlc        TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_entity ON _rhtmx_sync_log (entity, version);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_row ON _rhtmx_sync_log (entity, entity_id, version);
CREATE TABLE IF NOT EXISTS _rhtmx_sync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Creates the engine's tables if they are missing; safe to run from several processes.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::raw_sql(DDL).execute(&mut *tx).await?;
    sqlx::query("INSERT OR IGNORE INTO _rhtmx_sync_meta (key, value) VALUES ('schema_version', ?)")
        .bind(SCHEMA_VERSION.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// One log entry as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct LogRow {
    pub version: i64,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    pub data: Option<String>,
    pub changed: Option<String>,
    pub client_id: Option<String>,
}

/// The columns of [`LogRow`], for `SELECT`s.
pub(crate) const ROW_COLUMNS: &str = "version, entity, entity_id, action, data, changed, client_id";

/// The highest version ever assigned (0 for an empty log); survives compaction.
pub(crate) async fn head(conn: &mut SqliteConnection) -> Result<i64> {
    let head: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = '_rhtmx_sync_log'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(head.unwrap_or(0))
}

/// Versions at or below the horizon may have been compacted away: a client resuming from
/// there must reset.
pub(crate) async fn horizon(conn: &mut SqliteConnection) -> Result<i64> {
    let h: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'horizon'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(h.and_then(|h| h.parse().ok()).unwrap_or(0))
}

/// Up to `limit` entries after `after`, in version order, of every entity.
pub(crate) async fn read_after(
    conn: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<LogRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM {LOG_TABLE} WHERE version > ? ORDER BY version LIMIT ?"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}
