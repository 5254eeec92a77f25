//! The idempotency layer's key table on PostgreSQL: the same table, claims, totals and
//! budget as on SQLite (`crate::idempotency`), in PostgreSQL's SQL. A claim that
//! collides with a key locks its row (`ON CONFLICT DO UPDATE` does, even when its
//! `WHERE` declines), so reading the row after it in the same transaction sees it as
//! it stays until the claim commits — on any instance.

use sqlx::{PgConnection, PgPool};

use crate::error::Result;
use crate::idempotency::{Found, IdempotencyUsage, KeyRow};

/// The key table and its totals (kept by a trigger, so every instance counts); run by
/// `super::migrate`.
pub(super) const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS _rhtmx_sync_idempotency (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    state        text NOT NULL CHECK (state IN ('in_flight', 'completed')),
    attempt      bigint NOT NULL DEFAULT 1,
    status       bigint,
    headers      text,
    body         bytea,
    created_at   bigint NOT NULL,
    locked_until bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS _rhtmx_sync_idempotency_created
    ON _rhtmx_sync_idempotency (created_at);
CREATE TABLE IF NOT EXISTS _rhtmx_sync_idempotency_usage (
    id    integer PRIMARY KEY CHECK (id = 0),
    keys  bigint NOT NULL,
    bytes bigint NOT NULL
);
INSERT INTO _rhtmx_sync_idempotency_usage (id, keys, bytes)
    SELECT 0, count(*), coalesce(sum(octet_length(key) + octet_length(fingerprint)
        + coalesce(octet_length(headers), 0) + coalesce(octet_length(body), 0)), 0)
    FROM _rhtmx_sync_idempotency
    ON CONFLICT (id) DO NOTHING;
"#;

/// The body of the trigger function that keeps the totals.
const USAGE_BODY: &str = r#"
DECLARE _keys bigint := 0; _bytes bigint := 0;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        _keys := _keys - 1;
        _bytes := _bytes - octet_length(OLD.key) - octet_length(OLD.fingerprint)
            - coalesce(octet_length(OLD.headers), 0) - coalesce(octet_length(OLD.body), 0);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        _keys := _keys + 1;
        _bytes := _bytes + octet_length(NEW.key) + octet_length(NEW.fingerprint)
            + coalesce(octet_length(NEW.headers), 0) + coalesce(octet_length(NEW.body), 0);
    END IF;
    UPDATE _rhtmx_sync_idempotency_usage
        SET keys = keys + _keys, bytes = bytes + _bytes WHERE id = 0;
    RETURN NULL;
END
"#;

/// Installs the totals' trigger unless it is in place as this version writes it: a
/// `CREATE OR REPLACE TRIGGER` at every start would lock the key table against every
/// instance's keyed writes while it waits for theirs.
pub(super) async fn install_usage(conn: &mut PgConnection) -> Result<()> {
    if usage_installed(conn).await? {
        return Ok(());
    }
    sqlx::query(&format!(
        "CREATE OR REPLACE FUNCTION _rhtmx_sync_idempotency_usage() RETURNS trigger \
         LANGUAGE plpgsql AS $rhtmx${USAGE_BODY}$rhtmx$"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "CREATE OR REPLACE TRIGGER _rhtmx_sync_idempotency_usage \
         AFTER INSERT OR UPDATE OR DELETE ON _rhtmx_sync_idempotency \
         FOR EACH ROW EXECUTE FUNCTION _rhtmx_sync_idempotency_usage()",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether the totals' table, function (with this version's body) and trigger exist.
pub(super) async fn usage_installed(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT to_regclass('_rhtmx_sync_idempotency_usage') IS NOT NULL \
         AND EXISTS (SELECT 1 FROM pg_proc \
             WHERE oid = to_regprocedure('_rhtmx_sync_idempotency_usage()') AND prosrc = $1) \
         AND EXISTS (SELECT 1 FROM pg_trigger \
             WHERE tgrelid = to_regclass('_rhtmx_sync_idempotency') \
             AND tgname = '_rhtmx_sync_idempotency_usage')",
    )
    .bind(USAGE_BODY)
    .fetch_one(&mut *conn)
    .await?)
}

/// See `crate::idempotency::store`'s claim.
const CLAIM: &str = "
INSERT INTO _rhtmx_sync_idempotency AS _k
    (key, fingerprint, state, attempt, created_at, locked_until)
VALUES ($1, $2, 'in_flight', 1, $3, $4)
ON CONFLICT (key) DO UPDATE SET
    attempt = _k.attempt + 1,
    created_at = excluded.created_at,
    locked_until = excluded.locked_until
WHERE _k.state = 'in_flight'
    AND _k.locked_until <= excluded.created_at
    AND _k.fingerprint = excluded.fingerprint
RETURNING attempt";

/// Claims `key`, or reads the row it collided with.
pub(crate) async fn claim(
    pool: &PgPool,
    key: &str,
    fingerprint: &str,
    now: i64,
    until: i64,
) -> Result<Found> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *tx)
        .await?;
    let won: Option<i64> = sqlx::query_scalar(CLAIM)
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .bind(until)
        .fetch_optional(&mut *tx)
        .await?;
    let found = match won {
        Some(attempt) => Found::Won(attempt),
        None => {
            let row: KeyRow = sqlx::query_as(
                "SELECT fingerprint, state, status, headers, body \
                 FROM _rhtmx_sync_idempotency WHERE key = $1",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            Found::Existing(row)
        }
    };
    tx.commit().await?;
    Ok(found)
}

/// Stores the response of `attempt`; false if the key was taken over meanwhile.
pub(crate) async fn complete(
    pool: &PgPool,
    key: &str,
    attempt: i64,
    (status, headers, body): (i64, String, Option<&[u8]>),
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE _rhtmx_sync_idempotency
         SET state = 'completed', status = $1, headers = $2, body = $3
         WHERE key = $4 AND attempt = $5 AND state = 'in_flight'",
    )
    .bind(status)
    .bind(headers)
    .bind(body)
    .bind(key)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Frees the key of `attempt`.
pub(crate) async fn release(pool: &PgPool, key: &str, attempt: i64) -> Result<()> {
    sqlx::query(
        "DELETE FROM _rhtmx_sync_idempotency
         WHERE key = $1 AND attempt = $2 AND state = 'in_flight'",
    )
    .bind(key)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes keys created before `before` unless a live lease holds them.
pub(crate) async fn prune(pool: &PgPool, before: i64, now: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM _rhtmx_sync_idempotency
         WHERE created_at < $1 AND (state = 'completed' OR locked_until <= $2)",
    )
    .bind(before)
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The running totals.
pub(crate) async fn usage(conn: &mut PgConnection) -> Result<IdempotencyUsage> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT keys, bytes FROM _rhtmx_sync_idempotency_usage WHERE id = 0")
            .fetch_optional(&mut *conn)
            .await?;
    let (keys, bytes) = row.unwrap_or_default();
    Ok(IdempotencyUsage::new(keys, bytes))
}

const DROP_BODIES: &str = "
UPDATE _rhtmx_sync_idempotency SET body = NULL WHERE key IN (
    SELECT key FROM (
        SELECT key, coalesce(sum(octet_length(body)) OVER (ORDER BY created_at, key
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS freed_before
        FROM _rhtmx_sync_idempotency
        WHERE state = 'completed' AND octet_length(body) > 0
    ) AS _oldest WHERE freed_before < $1
)";

const DELETE_OLDEST: &str = "
DELETE FROM _rhtmx_sync_idempotency WHERE key IN (
    SELECT key FROM (
        SELECT key,
            row_number() OVER w AS n,
            coalesce(sum(octet_length(key) + octet_length(fingerprint)
                + coalesce(octet_length(headers), 0) + coalesce(octet_length(body), 0))
                OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS freed_before
        FROM _rhtmx_sync_idempotency
        WHERE state = 'completed'
        WINDOW w AS (ORDER BY created_at, key)
    ) AS _oldest WHERE n <= $1 OR freed_before < $2
)";

/// One eviction step (see `crate::idempotency::budget`), in a transaction that holds
/// the totals' row, so two instances over budget at once evict once. Returns the
/// totals after it and how many bodies and keys went.
pub(crate) async fn evict(
    pool: &PgPool,
    (keys_goal, bytes_goal): (u64, u64),
) -> Result<(IdempotencyUsage, u64, u64)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM _rhtmx_sync_idempotency_usage WHERE id = 0 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let before = usage(&mut tx).await?;
    let mut bodies = 0;
    if before.bytes > bytes_goal {
        bodies = sqlx::query(DROP_BODIES)
            .bind(i64::try_from(before.bytes - bytes_goal).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let mid = usage(&mut tx).await?;
    let mut keys = 0;
    if mid.keys > keys_goal || mid.bytes > bytes_goal {
        keys = sqlx::query(DELETE_OLDEST)
            .bind(i64::try_from(mid.keys.saturating_sub(keys_goal)).unwrap_or(i64::MAX))
            .bind(i64::try_from(mid.bytes.saturating_sub(bytes_goal)).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let after = usage(&mut tx).await?;
    tx.commit().await?;
    Ok((after, bodies, keys))
}
