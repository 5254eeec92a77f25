//! PostgreSQL: the log's tables, reading the log, and starting the engine's tasks.
//!
//! The log is the same as on SQLite (`_rhtmx_sync_log`, same columns and meanings), but a
//! version cannot come from a sequence: sequences are handed out at insert and commit in
//! any order, so a reader could see version 11 before 10 commits and skip 10 for ever.
//! Capture triggers insert entries with a `seq` and no version; [`stamp`] then gives
//! committed entries consecutive versions under one lock, after their transaction
//! committed. See docs/ARCHITECTURE.md ("Versions on PostgreSQL").

pub(crate) mod audit;
pub(crate) mod capture;
mod compact;
pub(crate) mod figures;
pub(crate) mod idempotency;
pub(crate) mod schema;
pub(crate) mod stamp;
pub(crate) mod tail;
mod write;

pub(crate) use self::write::begin;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tracing::Instrument;

use super::{ReadLog, Started};
use crate::broadcast::{Follow, Hub};
use crate::engine::Registry;
use crate::entity::EntitySpec;
use crate::error::{BuildError, Result};
use crate::log::LogRow;

/// The `application_name` of the tailer's connection (`pg_stat_activity` shows it).
pub(crate) const TAILER: &str = "rhtmx-sync tailer";
/// The `application_name` of the connection that listens on [`CHANNEL`].
pub(crate) const LISTENER: &str = "rhtmx-sync listener";

/// The app pool's connection options, for a connection of the engine's own, named.
pub(crate) fn own_options(pool: &PgPool, name: &str) -> sqlx::postgres::PgConnectOptions {
    (*pool.connect_options()).clone().application_name(name)
}

/// Creates the engine's tables, resolves `specs`, installs their capture, numbers what
/// is waiting, and starts the tailer on a connection of its own (it must not hold one
/// of the app's).
pub(crate) async fn start(
    pool: &PgPool,
    specs: Vec<EntitySpec>,
    hub: Arc<Hub>,
    poll: Duration,
) -> Result<Started, BuildError> {
    let mut conn = PgConnection::connect_with(&own_options(pool, TAILER)).await?;
    migrate(&mut conn).await?;
    let mut entities = Vec::with_capacity(specs.len());
    for spec in &specs {
        entities.push(Arc::new(schema::resolve(&mut conn, spec.clone()).await?));
    }
    // Read before installing: a migration from now on is followed (`tail`).
    let tables: Vec<String> = entities.iter().map(|e| e.table.clone()).collect();
    let schema = tail::schema_of(&mut conn, &tables).await?;
    capture::install(&mut conn, &entities).await?;
    stamp::stamp(&mut conn).await?;
    let head = conn.head().await?;
    let log_id: Arc<str> = log_id(&mut conn).await?.into();
    let registry = Arc::new(Registry::new(specs, entities));
    let follow = Follow {
        registry: registry.clone(),
        // Schema changes are not followed on this backend yet: no trigger generations.
        generation: 0,
        log_id: log_id.clone(),
    };
    let tailer = tokio::spawn(
        tail::tail(pool.clone(), conn, hub, follow, poll, head, schema)
            .instrument(tracing::info_span!("rhtmx_sync_broadcaster")),
    );
    Ok(Started {
        registry,
        log_id,
        tailer,
    })
}

/// The advisory lock every migration and trigger installation takes, so that engines
/// starting together on one database do not race on `CREATE ... IF NOT EXISTS`.
/// (Advisory locks are per database: other databases of the cluster are not concerned.)
pub(crate) const SCHEMA_LOCK: i64 = 0x7268_746d_7873_0001;

/// The `schema_version` [`DDL`] records (kept in step with it).
const SCHEMA_VERSION: &str = "9";

/// The channel the stamper notifies, once per stamped batch.
pub(crate) const CHANNEL: &str = "_rhtmx_sync";

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS _rhtmx_sync_log (
    seq          bigserial PRIMARY KEY,
    version      bigint UNIQUE,
    xact         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    entity       text NOT NULL,
    entity_id    text NOT NULL,
    action       text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    data         text,
    changed      text,
    client_id    text,
    hlc          text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    conflict     text,
    digest       text,
    scope_before text,
    scope_after  text,
    clocks       text,
    row_hlc      text,
    origin_hlc   text
);
ALTER TABLE _rhtmx_sync_log ADD COLUMN IF NOT EXISTS clocks text;
-- Causal stamping (schema 8, `crate::causal`; 9 reads compaction's field clocks).
ALTER TABLE _rhtmx_sync_log ADD COLUMN IF NOT EXISTS row_hlc text;
ALTER TABLE _rhtmx_sync_log ADD COLUMN IF NOT EXISTS origin_hlc text;
CREATE TABLE IF NOT EXISTS _rhtmx_sync_replays (
    digest     text PRIMARY KEY,
    entity     text NOT NULL,
    entity_id  text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_replays_row ON _rhtmx_sync_replays (entity, entity_id);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_unstamped ON _rhtmx_sync_log (seq)
    WHERE version IS NULL;
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_entity ON _rhtmx_sync_log (entity, version);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_row ON _rhtmx_sync_log (entity, entity_id, seq);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_row_version
    ON _rhtmx_sync_log (entity, entity_id, version);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_log_digest ON _rhtmx_sync_log (digest)
    WHERE digest IS NOT NULL;
-- An entry's data as jsonb, or NULL where it is not JSON (damaged): the audit compares
-- entries with rows, and one bad entry must not make it fail (schema 7).
CREATE OR REPLACE FUNCTION _rhtmx_sync_jsonb(t text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN NULL;
END $$;
CREATE TABLE IF NOT EXISTS _rhtmx_sync_context (
    entity    text NOT NULL,
    entity_id text NOT NULL,
    hlc       text,
    client_id text,
    changed   text,
    conflict  text,
    digest    text,
    PRIMARY KEY (entity, entity_id)
);
CREATE TABLE IF NOT EXISTS _rhtmx_sync_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO _rhtmx_sync_meta (key, value)
    VALUES ('log_id', substr(md5(random()::text || clock_timestamp()::text), 1, 16))
    ON CONFLICT (key) DO NOTHING;
INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('head', '0') ON CONFLICT (key) DO NOTHING;
INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('schema_version', '9') -- SCHEMA_VERSION
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE _rhtmx_sync_meta.value::int < excluded.value::int;
"#;

/// Begins a transaction at READ COMMITTED, whatever the database's default: the
/// stamper's reasoning (each statement sees every commit before it) and the write
/// transaction's row locks rely on it.
pub(crate) async fn begin_read_committed(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Creates the engine's tables (the log's and the idempotency layer's) if they are
/// missing; safe to run from several processes at once (they take turns under
/// [`SCHEMA_LOCK`]). When all is in place, as at every start after the first, it only
/// reads the catalog: `CREATE INDEX IF NOT EXISTS` locks its table even when the index
/// exists, which would hold the app's writes back behind any open transaction.
pub(crate) async fn migrate(conn: &mut PgConnection) -> Result<()> {
    if installed(conn).await? {
        return Ok(());
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(DDL).execute(&mut *tx).await?;
    let schema = capture::log_schema(&mut tx).await?;
    let causal = crate::causal::postgres_ddl(&schema);
    sqlx::raw_sql(&causal).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO _rhtmx_sync_meta (key, value) VALUES ('stamping', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(crate::causal::fingerprint(&causal))
    .execute(&mut *tx)
    .await?;
    // A log from before schema 9 lacks `row_hlc` where the stamping needs it; on a
    // current one this changes nothing.
    sqlx::query(&crate::causal::postgres_backfill(&schema))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(crate::parked::POSTGRES_UPGRADE)
        .execute(&mut *tx)
        .await?;
    sqlx::query(crate::parked::DDL).execute(&mut *tx).await?;
    sqlx::raw_sql(idempotency::DDL).execute(&mut *tx).await?;
    idempotency::install_usage(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether every table [`DDL`] creates exists at this version's `schema_version`, and
/// the idempotency layer's too.
async fn installed(conn: &mut PgConnection) -> Result<bool> {
    let tables: bool = sqlx::query_scalar(
        "SELECT to_regclass('_rhtmx_sync_log') IS NOT NULL \
         AND to_regclass('_rhtmx_sync_context') IS NOT NULL \
         AND to_regclass('_rhtmx_sync_meta') IS NOT NULL \
         AND to_regclass('_rhtmx_sync_replays') IS NOT NULL \
         AND to_regclass('_rhtmx_sync_parked') IS NOT NULL \
         AND to_regclass('_rhtmx_sync_idempotency') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !tables {
        return Ok(false);
    }
    let version: Option<String> = sqlx::query_scalar(
        "SELECT value FROM _rhtmx_sync_meta WHERE key = 'schema_version' \
             AND (SELECT count(*) FROM _rhtmx_sync_meta WHERE key IN ('log_id', 'head')) = 2",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if version.as_deref() != Some(SCHEMA_VERSION) {
        return Ok(false);
    }
    // The stamping function an older build installed is replaced (see `causal`).
    let stamping: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'stamping'")
            .fetch_optional(&mut *conn)
            .await?;
    let schema = capture::log_schema(conn).await?;
    let current = crate::causal::fingerprint(&crate::causal::postgres_ddl(&schema));
    Ok(stamping.as_deref() == Some(current.as_str()) && idempotency::usage_installed(conn).await?)
}

/// The effective HLC of an entry (see `crate::log`): its `hlc`, or `created_at` in
/// milliseconds with counter 0 and node 0.
const EFFECTIVE_HLC: &str = "COALESCE(hlc, lpad(floor(extract(epoch FROM created_at) * 1000)\
     ::bigint::text, 15, '0') || '-00000-0000000000000000')";

/// The columns of [`LogRow`], for `SELECT`s.
fn row_columns() -> String {
    format!(
        "version, entity, entity_id, action, data, changed, client_id, {EFFECTIVE_HLC} AS hlc, origin_hlc, \
         CASE WHEN conflict IS NULL THEN NULL \
         ELSE jsonb_set(conflict::jsonb, '{{version}}', to_jsonb(version))::text END AS conflict, \
         scope_before, scope_after"
    )
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for LogRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        // PostgreSQL text is always valid UTF-8: no lossy decoding needed.
        Ok(LogRow {
            version: row.try_get("version")?,
            entity: row.try_get("entity")?,
            entity_id: row.try_get("entity_id")?,
            action: row.try_get("action")?,
            data: row.try_get("data")?,
            changed: row.try_get("changed")?,
            client_id: row.try_get("client_id")?,
            hlc: row.try_get("hlc")?,
            origin_hlc: row.try_get("origin_hlc")?,
            conflict: row.try_get("conflict")?,
            scope_before: row.try_get("scope_before")?,
            scope_after: row.try_get("scope_after")?,
        })
    }
}

/// The log's identity (see `crate::cursor`).
pub(crate) async fn log_id(conn: &mut PgConnection) -> Result<String> {
    Ok(
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = 'log_id'")
            .fetch_one(&mut *conn)
            .await?,
    )
}

async fn meta_int(conn: &mut PgConnection, key: &str) -> Result<i64> {
    let value: Option<String> =
        sqlx::query_scalar("SELECT value FROM _rhtmx_sync_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

impl ReadLog for PgConnection {
    /// The stamper's counter: every version up to it is committed and visible, since
    /// the counter moves in the transaction that stamps them.
    async fn head(&mut self) -> Result<i64> {
        meta_int(self, "head").await
    }

    async fn settled_head(&mut self) -> Result<i64> {
        let (head, pending) = stamp::probe(self).await?;
        if !pending {
            return Ok(head);
        }
        // Another engine stamping now is numbering these too: wait for it (the lock,
        // not the try-lock, so the head read after covers them).
        stamp::stamp_waiting(self).await?;
        self.head().await
    }

    async fn horizon(&mut self) -> Result<i64> {
        meta_int(self, "horizon").await
    }

    async fn purges(&mut self) -> Result<i64> {
        meta_int(self, "purges").await
    }

    async fn entry_at(&mut self, version: i64) -> Result<Option<LogRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM _rhtmx_sync_log WHERE version = $1",
            row_columns()
        ))
        .bind(version)
        .fetch_optional(&mut *self)
        .await?)
    }

    async fn read_after(&mut self, after: i64, limit: i64) -> Result<Vec<LogRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {} FROM _rhtmx_sync_log WHERE version > $1 ORDER BY version LIMIT $2",
            row_columns()
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn read_entity(
        &mut self,
        entity: &str,
        (after, upto): (i64, i64),
        keys: Option<&str>,
        limit: i64,
        select: crate::backend::Select,
    ) -> Result<Vec<LogRow>> {
        let scoped = if keys.is_some() {
            " AND (scope_before IN (SELECT jsonb_array_elements_text($5::jsonb)) \
             OR scope_after IN (SELECT jsonb_array_elements_text($5::jsonb)))"
        } else {
            ""
        };
        // See `ReadLog::read_entity` for what `latest` leaves out, and why that is safe.
        let later = "NOT EXISTS (SELECT 1 FROM _rhtmx_sync_log AS n \
             WHERE n.entity = l.entity AND n.entity_id = l.entity_id \
             AND n.version > l.version AND n.version <= $3)";
        use crate::backend::Select;
        let latest = match select {
            Select::Every => String::new(),
            Select::Latest { fresh: true } => format!(" AND l.action <> 'delete' AND {later}"),
            Select::Latest { fresh: false } => format!(
                " AND ({later} OR (l.scope_before IS NOT NULL \
                 AND l.scope_before IS DISTINCT FROM l.scope_after))"
            ),
        };
        let sql = format!(
            "SELECT {} FROM _rhtmx_sync_log AS l WHERE l.entity = $1 AND l.version > $2 \
             AND l.version <= $3{scoped}{latest} ORDER BY l.version LIMIT $4",
            row_columns()
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
        Ok(query.fetch_all(&mut *self).await?)
    }
}
