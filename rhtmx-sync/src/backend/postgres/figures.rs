//! The operator figures' database part on PostgreSQL (see `crate::operator::figures`),
//! read in one `REPEATABLE READ` transaction so they agree with each other.

use sqlx::PgConnection;

use crate::backend::ReadLog;
use crate::error::Result;
use crate::operator::figures::{conflict_figures, count};
use crate::operator::{ConflictFigure, IdempotencyFigures, LogFigures};

/// Bytes of every column of an entry, as stored text.
const ENTRY_BYTES: &str =
    "coalesce(octet_length(entity), 0) + coalesce(octet_length(entity_id), 0) \
     + coalesce(octet_length(action), 0) + coalesce(octet_length(data), 0) \
     + coalesce(octet_length(changed), 0) + coalesce(octet_length(client_id), 0) \
     + coalesce(octet_length(hlc), 0) + coalesce(octet_length(created_at::text), 0) \
     + coalesce(octet_length(conflict), 0) + coalesce(octet_length(digest), 0) \
     + coalesce(octet_length(scope_before), 0) + coalesce(octet_length(scope_after), 0)";

/// The log's, the key table's and the latest conflicts' figures.
pub(crate) async fn read(
    conn: &mut PgConnection,
    recent: i64,
) -> Result<(LogFigures, IdempotencyFigures, Vec<ConflictFigure>)> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (rows, bytes, oldest_version, minute, hour, conflicts): (
        i64,
        i64,
        Option<i64>,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum({ENTRY_BYTES}), 0)::int8, min(version), \
         count(*) FILTER (WHERE created_at >= now() - interval '60 seconds'), \
         count(*) FILTER (WHERE created_at >= now() - interval '3600 seconds'), \
         count(*) FILTER (WHERE conflict IS NOT NULL) FROM _rhtmx_sync_log"
    ))
    .fetch_one(&mut *tx)
    .await?;
    let database_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut *tx)
        .await?;
    let log = LogFigures {
        rows: count(rows),
        bytes: count(bytes),
        oldest_version,
        head_version: tx.head().await?,
        horizon: tx.horizon().await?,
        changes_last_minute: count(minute),
        changes_last_hour: count(hour),
        conflicts: count(conflicts),
        database_bytes: count(database_bytes),
    };
    // The same sum as the running totals' trigger (`idempotency`).
    let (keys, in_flight, key_bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'in_flight'), \
         coalesce(sum(octet_length(key) + octet_length(fingerprint) \
             + coalesce(octet_length(headers), 0) + coalesce(octet_length(body), 0)), 0)::int8 \
         FROM _rhtmx_sync_idempotency",
    )
    .fetch_one(&mut *tx)
    .await?;
    let idempotency = IdempotencyFigures {
        keys: count(keys),
        in_flight: count(in_flight),
        bytes: count(key_bytes),
    };
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT version, (extract(epoch FROM created_at) * 1000)::int8, \
         jsonb_set(conflict::jsonb, '{version}', to_jsonb(version))::text \
         FROM _rhtmx_sync_log WHERE conflict IS NOT NULL AND version IS NOT NULL \
         ORDER BY version DESC LIMIT $1",
    )
    .bind(recent)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    let conflicts = conflict_figures(
        rows.into_iter()
            .map(|(v, at, json)| (v, at, json.into_bytes())),
    );
    Ok((log, idempotency, conflicts))
}
