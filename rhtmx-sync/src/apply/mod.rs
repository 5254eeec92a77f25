//! Applying clients' changes through the merge: the one write path shared by the push
//! API and [`SyncEngine::write`](crate::SyncEngine::write).
//!
//! [`validate`] checks a change against the registered columns before the database is
//! touched. [`transaction`] then begins a write transaction, applies each change and
//! commits, then wakes the broadcaster: *begin → apply → commit → wake*, nowhere else.
//! Applying one change reads the row and what the merge needs of its log
//! ([`history`]), asks [`conflict::merge`](crate::conflict::merge) for a decision and
//! executes it through the table ([`execute`]), so the capture triggers — the log's one
//! writer — log it like any other write, reading the change's HLC, client, touched
//! fields and conflict from a per-change context row.

mod execute;
mod history;

use serde_json::Value;
use sqlx::Sqlite;

use crate::conflict::{self, Change, Conflict, Row, Status};
use crate::engine::Inner;
use crate::entity::{convert, normalize, Entity, Key};
use crate::error::{quote, Error, Result};
use crate::hlc::{Hlc, HlcClock, Received};
use crate::log;
use crate::wire::Action;

use self::history::HistoryCache;

/// A change that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    /// The id as it travels on the wire.
    pub wire_id: Value,
    pub action: Action,
    key: Key,
    /// The fields without the id, as the log would encode them.
    fields: Row,
    hlc: Option<Hlc>,
    base: Option<i64>,
}

/// A change as a client sends it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub id: &'a Value,
    pub action: Action,
    pub data: Option<&'a serde_json::Map<String, Value>>,
    pub hlc: Option<Hlc>,
    pub base: Option<i64>,
}

/// Checks a change against the registered columns; touches nothing.
pub(crate) fn validate(entity: &Entity, c: Incoming<'_>) -> Result<Validated> {
    let key = entity.parse_id(c.id)?;
    let mut fields = Row::new();
    if let Some(data) = c.data {
        for (field, value) in data {
            let Some(column) = entity.column(field) else {
                return Err(Error::invalid(format!(
                    "unknown field `{}` for `{}`",
                    quote(field),
                    entity.name
                )));
            };
            if column.name == entity.id {
                if entity.parse_id(value)?.text != key.text {
                    return Err(Error::invalid("`data.id` differs from the change's `id`"));
                }
                continue;
            }
            let value = convert(column, value)?;
            fields.insert(column.name.clone(), normalize(column, &value));
        }
    }
    match c.action {
        Action::Create => {
            let data = c
                .data
                .ok_or_else(|| Error::invalid("a create needs `data`"))?;
            if let Some(missing) = entity.columns.iter().find(|col| {
                col.name != entity.id
                    && col.not_null
                    && !col.has_default
                    && !data.contains_key(&col.name)
            }) {
                return Err(Error::invalid(format!(
                    "field `{}` is required",
                    missing.name
                )));
            }
        }
        Action::Update if fields.is_empty() => {
            return Err(Error::invalid(
                "an update needs at least one field in `data`",
            ));
        }
        _ => {}
    }
    if c.base.is_some_and(|b| b < 0) {
        return Err(Error::invalid("`client_version` must not be negative"));
    }
    Ok(Validated {
        wire_id: entity.wire_id(&key.text),
        action: c.action,
        key,
        fields,
        hlc: c.hlc,
        base: c.base,
    })
}

/// What became of one change.
#[derive(Debug)]
pub(crate) struct Applied {
    pub status: Status,
    /// The conflict, with the version of the log entry that carries it.
    pub conflict: Option<Conflict>,
    /// How far ahead of the server's clock the change's HLC was, when it was beyond the
    /// tolerance and the server's clock stamped the change instead.
    pub clamped: Option<std::time::Duration>,
}

/// A change that failed inside the transaction (which is rolled back): its index and why.
#[derive(Debug)]
pub(crate) struct Failed {
    pub index: usize,
    pub error: Error,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { index: 0, error }
    }
}

impl From<sqlx::Error> for Failed {
    fn from(error: sqlx::Error) -> Failed {
        Error::from(error).into()
    }
}

/// Applies `changes` to `entity` in one write transaction, all or nothing, and wakes
/// the broadcaster. Returns each change's outcome and the log's head after the commit.
pub(crate) async fn transaction(
    inner: &Inner,
    entity: &Entity,
    changes: &[Validated],
    client_id: Option<&str>,
) -> std::result::Result<(Vec<Applied>, i64), Failed> {
    // BEGIN IMMEDIATE takes the write lock at once: a deferred transaction that reads
    // first can fail with SQLITE_BUSY_SNAPSHOT when another writer commits in between.
    let mut tx = inner.pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut cache = HistoryCache::default();
    let mut done = Vec::with_capacity(changes.len());
    for (index, change) in changes.iter().enumerate() {
        let applied = apply(&mut tx, entity, &inner.clock, change, client_id, &mut cache)
            .await
            .map_err(|error| Failed { index, error })?;
        done.push(applied);
    }
    let version = log::head(&mut tx).await?;
    tx.commit().await?;
    inner.hub.wake.notify_one();
    Ok((done, version))
}

/// Merges and writes one validated change inside the write transaction.
async fn apply(
    conn: &mut sqlx::Transaction<'static, Sqlite>,
    entity: &Entity,
    clock: &HlcClock,
    v: &Validated,
    client_id: Option<&str>,
    cache: &mut HistoryCache,
) -> Result<Applied> {
    // An HLC ahead of the server by more than the tolerance is a wrong device clock:
    // the server's clock stamps the change instead, and the clock is not dragged along.
    let (hlc, clamped) = match v.hlc.map(|h| clock.receive(h)) {
        Some(Received::Observed(hlc)) => (hlc, None),
        Some(Received::Clamped { now, ahead }) => {
            tracing::warn!(
                entity = %entity.name,
                ahead_ms = ahead.as_millis() as u64,
                "a client's HLC is ahead of the server clock; stamped with the server's"
            );
            (now, Some(ahead))
        }
        None => (clock.now(), None),
    };
    let change = Change {
        entity: entity.name.to_string(),
        id: v.wire_id.clone(),
        action: v.action,
        fields: v.fields.clone(),
        hlc,
        client_id: client_id.map(str::to_owned),
        base: v.base,
    };
    // Only a client's own HLC can make a replay; the server's are new by construction.
    let digest = v.hlc.map(|sent| digest(entity, v, sent));
    let row = execute::read_row(conn, entity, &v.key).await?;
    // A row the merge cannot read must not count as empty: its fields would be lost.
    let current = row
        .as_deref()
        .map(|s| history::parse_row(entity, s))
        .transpose()
        .map_err(|e| Error::UnreadableRow(format!("`{}` {}: {e}", entity.name, v.key.text)))?;
    let history = cache
        .read(
            conn,
            entity,
            &v.key.text,
            &change,
            current.is_some(),
            digest.as_deref(),
        )
        .await?;
    let decision = conflict::merge(&change, current.as_ref(), &history, &entity.policy());
    let before = log::head(conn).await?;
    let status = decision.status;
    let conflict = execute::write(
        conn,
        entity,
        &v.key,
        &change,
        decision,
        current.as_ref(),
        row.as_deref(),
        digest.as_deref(),
    )
    .await?;
    cache.extend(conn, entity, before).await?;
    Ok(Applied {
        status,
        conflict,
        clamped,
    })
}

/// What makes a change the same change when it is sent again: when its user acted (the
/// HLC, whose node is the client's own) and what it does. Two writes that share an HLC
/// (two writes in one handler, a create and an update in one push) differ here and are
/// both applied. The client id is left out: a retry may come without it.
fn digest(entity: &Entity, v: &Validated, hlc: Hlc) -> String {
    use sha2::{Digest, Sha256};
    let what = serde_json::json!([
        &*entity.name,
        v.key.text,
        v.action,
        v.fields,
        v.base,
        hlc.to_string(),
    ]);
    let hash = Sha256::digest(what.to_string().as_bytes());
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}
