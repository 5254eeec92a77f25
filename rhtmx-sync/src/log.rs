//! The change log: its tables, and reading it in version order.
//!
//! `version` is the log's `INTEGER PRIMARY KEY AUTOINCREMENT`: strictly increasing, never
//! reused (even after compaction deletes rows), and — because SQLite has one writer at a
//! time — committed in the order it is assigned, so "everything after version N" is a
//! well-defined, gap-free cursor.
//!
//! Every entry has an HLC ([`crate::hlc`]). The push API and
//! [`SyncEngine::write`](crate::SyncEngine::write) stamp theirs with the client's (or the
//! server clock's) when they write. Entries written by the app's own SQL come from the
//! capture triggers, which cannot reach the engine's clock, so their `hlc` is `NULL`;
//! their *effective* HLC is derived from `created_at` (the database's clock when the
//! row was written, to the millisecond) with counter 0 and the reserved node
//! `0000000000000000` ([`EFFECTIVE_HLC`]). That is deterministic (every reader, in every
//! process, derives the same value), needs no second write after the app's
//! transaction, and is honest: it is when the server applied the change, which for a
//! plain handler is when its user acted. The node sorts below every real node, so such
//! a write loses a tie in the same millisecond to a client's. Any entry of this
//! database's own whose HLC would not be above every HLC its row has seen is moved after
//! them by the log's own trigger ([`crate::causal`]).

#[cfg(feature = "sqlite")]
use crate::error::Result;
#[cfg(feature = "sqlite")]
use sqlx::SqliteConnection;

/// The change log table.
#[cfg(feature = "sqlite")]
pub(crate) const LOG_TABLE: &str = "_rhtmx_sync_log";

/// The per-change context the capture triggers read (see `apply::execute`).
#[cfg(feature = "sqlite")]
pub(crate) const CONTEXT_TABLE: &str = "_rhtmx_sync_context";

#[cfg(feature = "sqlite")]
/// The version of the engine's own tables: 2 added `conflict`, 3 `digest`, 4 the
/// scopes (`scope_before`, `scope_after`, and the REPLACE victims' `scope`), 5
/// compaction (`clocks`, `_rhtmx_sync_replays`), 6 causal stamping (`row_hlc`,
/// `origin_hlc` and the log's own trigger, see [`crate::causal`]), 7 the trigger reads
/// compaction's field clocks and older logs get `row_hlc`.
const SCHEMA_VERSION: i64 = 7;

#[cfg(feature = "sqlite")]
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
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    conflict   TEXT,
    digest     TEXT,
    scope_before TEXT,
    scope_after  TEXT,
    clocks     TEXT,
    row_hlc    TEXT,
    origin_hlc TEXT
);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_entity ON _rhtmx_sync_log (entity, version);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_row ON _rhtmx_sync_log (entity, entity_id, version);
CREATE TABLE IF NOT EXISTS _rhtmx_sync_context (
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    hlc       TEXT,
    client_id TEXT,
    changed   TEXT,
    conflict  TEXT,
    digest    TEXT,
    PRIMARY KEY (entity, entity_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _rhtmx_sync_replaced (
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    key,
    scope     TEXT
);
CREATE TABLE IF NOT EXISTS _rhtmx_sync_replays (
    digest     TEXT PRIMARY KEY,
    entity     TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _rhtmx_sync_replays_row ON _rhtmx_sync_replays (entity, entity_id);
CREATE TABLE IF NOT EXISTS _rhtmx_sync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"#;

#[cfg(feature = "sqlite")]
/// Creates the engine's tables if they are missing; safe to run from several processes.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<()> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::raw_sql(DDL).execute(&mut *tx).await?;
    // Older logs lack later columns. Another process may add one first: a duplicate
    // column is then fine.
    for (table, column) in [
        (LOG_TABLE, "conflict"),
        (LOG_TABLE, "digest"),
        (LOG_TABLE, "scope_before"),
        (LOG_TABLE, "scope_after"),
        (LOG_TABLE, "clocks"),
        (LOG_TABLE, crate::causal::ROW_HLC),
        (LOG_TABLE, "origin_hlc"),
        ("_rhtmx_sync_replaced", "scope"),
    ] {
        let has: bool =
            sqlx::query_scalar("SELECT count(*) > 0 FROM pragma_table_info(?) WHERE name = ?")
                .bind(table)
                .bind(column)
                .fetch_one(&mut *tx)
                .await?;
        if has {
            continue;
        }
        let add = format!("ALTER TABLE {table} ADD COLUMN {column} TEXT");
        if let Err(e) = sqlx::query(&add).execute(&mut *tx).await {
            if !e.to_string().contains("duplicate column") {
                return Err(e.into());
            }
        }
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'schema_version'")
            .fetch_optional(&mut *tx)
            .await?;
    let stored = stored.and_then(|v| v.parse::<i64>().ok());
    if stored.is_some_and(|v| v < SCHEMA_VERSION) {
        sqlx::query(&crate::causal::sqlite_backfill())
            .execute(&mut *tx)
            .await?;
    }
    // The stamping trigger, replaced whenever its text changed (its fingerprint is
    // kept beside the schema version, which need not change with it).
    let trigger = crate::causal::sqlite_trigger();
    let mark = crate::causal::fingerprint(&trigger);
    let installed: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'stamping'")
            .fetch_optional(&mut *tx)
            .await?;
    if installed.as_deref() != Some(mark.as_str()) {
        sqlx::query("DROP TRIGGER IF EXISTS _rhtmx_sync_log_causal")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('stamping', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = ?1",
        )
        .bind(&mark)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&trigger).execute(&mut *tx).await?;
    let parked_v1: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = '_rhtmx_sync_parked' \
         AND NOT EXISTS (SELECT 1 FROM pragma_table_info('_rhtmx_sync_parked') \
         WHERE name = 'version')",
    )
    .fetch_one(&mut *tx)
    .await?;
    if parked_v1 {
        sqlx::raw_sql(crate::parked::SQLITE_UPGRADE)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(crate::parked::DDL).execute(&mut *tx).await?;
    let has_waits: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pragma_table_info('_rhtmx_sync_parked') WHERE name = 'waits'",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !has_waits {
        sqlx::query(crate::parked::SQLITE_ADD_WAITS)
            .execute(&mut *tx)
            .await?;
    }
    // A replay is found by its digest (see `apply`), never by scanning a row's log.
    sqlx::query(
        "CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_digest ON _rhtmx_sync_log (digest) \
         WHERE digest IS NOT NULL",
    )
    .execute(&mut *tx)
    .await?;
    // The log's identity, made once with it; cursors are tagged with it (`cursor`).
    sqlx::query(
        "INSERT OR IGNORE INTO _rhtmx_sync_meta (key, value) \
         VALUES ('log_id', lower(hex(randomblob(8))))",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('schema_version', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = ?1 WHERE CAST(value AS INTEGER) < ?1",
    )
    .bind(SCHEMA_VERSION.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

// The SQL of `EFFECTIVE_HLC`, a macro so that `ROW_COLUMNS` can `concat!` it.
#[cfg(feature = "sqlite")]
macro_rules! effective_hlc {
    () => {
        "COALESCE(hlc, printf('%015d-00000-0000000000000000', \
         CAST(strftime('%s', created_at) AS INTEGER) * 1000 \
         + CAST(substr(created_at, 21, 3) AS INTEGER)))"
    };
}
/// The effective HLC of a log entry as SQL: its `hlc`, or for an entry written by the
/// app's own SQL, its `created_at` in milliseconds with counter 0 and node 0 (see the
/// module docs). `created_at` is `YYYY-MM-DDTHH:MM:SS.sssZ`, so the milliseconds are
/// characters 21–23.
#[cfg(feature = "sqlite")]
pub(crate) const EFFECTIVE_HLC: &str = effective_hlc!();

/// One log entry as stored.
///
/// Text columns are read as bytes and decoded lossily: a value SQLite holds as invalid
/// UTF-8 (a blob cast to text by an older trigger, a hand-edited row) must never make a
/// row undecodable, or the broadcaster would retry it forever and pulls would end there.
#[derive(Debug, Clone)]
pub(crate) struct LogRow {
    pub version: i64,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    pub data: Option<String>,
    pub changed: Option<String>,
    pub client_id: Option<String>,
    /// The effective HLC ([`EFFECTIVE_HLC`]).
    pub hlc: Option<String>,
    /// The HLC the writer gave, where the log ordered the entry later
    /// ([`crate::causal`]).
    pub origin_hlc: Option<String>,
    /// The conflict this entry resolved, as JSON.
    pub conflict: Option<String>,
    /// The row's scope before and after the change (see [`crate::scope`]); `None`
    /// where the row did not exist, and for entities without a scope column.
    pub scope_before: Option<String>,
    pub scope_after: Option<String>,
}

#[cfg(feature = "sqlite")]
impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for LogRow {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        let text = |name: &str| -> sqlx::Result<Option<String>> {
            let bytes: Option<Vec<u8>> = row.try_get(name)?;
            Ok(bytes.map(|b| match String::from_utf8(b) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }))
        };
        Ok(LogRow {
            version: row.try_get("version")?,
            entity: text("entity")?.unwrap_or_default(),
            entity_id: text("entity_id")?.unwrap_or_default(),
            action: text("action")?.unwrap_or_default(),
            data: text("data")?,
            changed: text("changed")?,
            client_id: text("client_id")?,
            hlc: text("hlc")?,
            origin_hlc: text("origin_hlc")?,
            conflict: text("conflict")?,
            scope_before: text("scope_before")?,
            scope_after: text("scope_after")?,
        })
    }
}

#[cfg(feature = "sqlite")]
/// The columns of [`LogRow`], for `SELECT`s (text read as blobs, see [`LogRow`]).
pub(crate) const ROW_COLUMNS: &str = concat!(
    "version, CAST(entity AS BLOB) AS entity, CAST(entity_id AS BLOB) AS entity_id, ",
    "CAST(action AS BLOB) AS action, CAST(data AS BLOB) AS data, ",
    "CAST(changed AS BLOB) AS changed, CAST(client_id AS BLOB) AS client_id, CAST(",
    effective_hlc!(),
    " AS BLOB) AS hlc, CAST(origin_hlc AS BLOB) AS origin_hlc, ",
    // A conflict is stored without the version of the entry carrying it.
    "CAST(CASE WHEN conflict IS NULL THEN NULL ",
    "ELSE json_set(conflict, '$.version', version) END AS BLOB) AS conflict, ",
    "CAST(scope_before AS BLOB) AS scope_before, CAST(scope_after AS BLOB) AS scope_after"
);

#[cfg(feature = "sqlite")]
/// The highest version ever assigned (0 for an empty log); survives compaction.
pub(crate) async fn head(conn: &mut SqliteConnection) -> Result<i64> {
    let head: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = '_rhtmx_sync_log'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(head.unwrap_or(0))
}

#[cfg(feature = "sqlite")]
/// The log's identity (see [`crate::cursor`]).
pub(crate) async fn log_id(conn: &mut SqliteConnection) -> Result<String> {
    Ok(
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'log_id'")
            .fetch_one(&mut *conn)
            .await?,
    )
}

#[cfg(feature = "sqlite")]
/// Versions at or below the horizon may have been compacted away: a client resuming from
/// there must reset.
pub(crate) async fn horizon(conn: &mut SqliteConnection) -> Result<i64> {
    meta_int(conn, "horizon").await
}

#[cfg(feature = "sqlite")]
/// A number kept in `_rhtmx_sync_meta` (0 when absent).
pub(crate) async fn meta_int(conn: &mut SqliteConnection, key: &str) -> Result<i64> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

#[cfg(feature = "sqlite")]
/// The entry at `version`, if the log holds it.
pub(crate) async fn entry_at(conn: &mut SqliteConnection, version: i64) -> Result<Option<LogRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM {LOG_TABLE} WHERE version = ?"
    ))
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?)
}

#[cfg(feature = "sqlite")]
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

#[cfg(feature = "sqlite")]
/// Up to `limit` entries of `entity` in `(after, upto]`, in version order; with `keys`
/// (a JSON array of scope keys), only those whose scope before or after is one of them.
pub(crate) async fn read_entity(
    conn: &mut SqliteConnection,
    entity: &str,
    (after, upto): (i64, i64),
    keys: Option<&str>,
    limit: i64,
    select: crate::backend::Select,
) -> Result<Vec<LogRow>> {
    let scoped = if keys.is_some() {
        " AND (scope_before IN (SELECT value FROM json_each(?5)) \
         OR scope_after IN (SELECT value FROM json_each(?5)))"
    } else {
        ""
    };
    // See `ReadLog::read_entity` for what `latest` leaves out, and why that is safe.
    use crate::backend::Select;
    let latest = match select {
        Select::Every => "",
        Select::Latest { fresh: true } => {
            " AND l.action <> 'delete' AND NOT EXISTS (SELECT 1 FROM _rhtmx_sync_log AS n \
             WHERE n.entity = l.entity AND n.entity_id = l.entity_id \
             AND n.version > l.version AND n.version <= ?3)"
        }
        Select::Latest { fresh: false } => {
            " AND (NOT EXISTS (SELECT 1 FROM _rhtmx_sync_log AS n \
             WHERE n.entity = l.entity AND n.entity_id = l.entity_id \
             AND n.version > l.version AND n.version <= ?3) \
             OR (l.scope_before IS NOT NULL AND l.scope_before IS NOT l.scope_after))"
        }
    };
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM {LOG_TABLE} AS l \
         WHERE l.entity = ?1 AND l.version > ?2 AND l.version <= ?3{scoped}{latest} \
         ORDER BY l.version LIMIT ?4"
    );
    let query = sqlx::query_as(&sql)
        .bind(entity)
        .bind(after)
        .bind(upto)
        .bind(limit);
    let query = match keys {
        Some(keys) => query.bind(keys),
        None => query,
    };
    Ok(query.fetch_all(&mut *conn).await?)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use sqlx::Connection;

    #[tokio::test]
    async fn the_effective_hlc_of_an_app_write_comes_from_created_at() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        migrate(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO _rhtmx_sync_log (entity, entity_id, action, created_at) \
             VALUES ('t', '1', 'delete', '2024-11-23T06:10:00.123Z')",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO _rhtmx_sync_log (entity, entity_id, action, hlc) \
             VALUES ('t', '2', 'delete', '001732345678901-00042-9f86d081884c7d65')",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let hlcs: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT {EFFECTIVE_HLC} FROM {LOG_TABLE} ORDER BY version"
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        // 2024-11-23T06:10:00Z is 1732342200 s after the epoch.
        assert_eq!(
            hlcs,
            [
                "001732342200123-00000-0000000000000000",
                "001732345678901-00042-9f86d081884c7d65"
            ]
        );
        let rows = read_after(&mut conn, 0, 10).await.unwrap();
        assert_eq!(rows[0].hlc.as_deref(), Some(hlcs[0].as_str()));
        for h in &hlcs {
            h.parse::<crate::hlc::Hlc>().unwrap();
        }
        // The default `created_at` has the shape the expression reads.
        sqlx::query(
            "INSERT INTO _rhtmx_sync_log (entity, entity_id, action) VALUES ('t', '3', 'delete')",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let now: String = sqlx::query_scalar(&format!(
            "SELECT {EFFECTIVE_HLC} FROM {LOG_TABLE} WHERE entity_id = '3'"
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let now: crate::hlc::Hlc = now.parse().unwrap();
        let wall = crate::hlc::system_ms();
        assert!(now.physical_ms().abs_diff(wall) < 60_000, "{now} vs {wall}");
    }

    #[tokio::test]
    async fn a_schema_1_log_gains_the_later_columns() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql(&DDL.replace(
            ",\n    conflict   TEXT,\n    digest     TEXT,\n    scope_before TEXT,\n    scope_after  TEXT,\n    clocks     TEXT,\n    row_hlc    TEXT,\n    origin_hlc TEXT",
            "",
        ))
            .execute(&mut conn)
            .await
            .unwrap();
        migrate(&mut conn).await.unwrap();
        migrate(&mut conn).await.unwrap();
        let version: String =
            sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'schema_version'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        assert!(read_after(&mut conn, 0, 1).await.unwrap().is_empty());
    }
}
