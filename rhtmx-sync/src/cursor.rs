//! Cursors: a log version tied to one history of the log.
//!
//! A version alone cannot tell two histories apart: restore an older copy of the
//! database (or point the app at another file), make a few writes, and version 5 names
//! another change. So every cursor the engine hands out — an event's `id:`, a pull's
//! `cursor` — is `"{version}.{tag}"`, where the tag is a short hash of the log's
//! identity (a random id made with the log) and of the entry at that version (entity,
//! key, HLC). A cursor whose tag no longer matches its entry comes from another
//! history, and gets exactly one reset. A restored copy that still holds the cursor's
//! entry unchanged *is* a continuation of that history, and resumes normally.
//!
//! In an engine with scopes ([`crate::scope`]), the tag goes on with the fingerprint of
//! what the principal may read (8 more hex digits). A cursor made under other access —
//! the user left a tenant, lost a membership, signed out — gets a reset too, so the
//! client drops rows it may no longer read and pulls what it may now.
//!
//! Below the compaction horizon (see [`crate::Compaction`]) a cursor resumes only if it
//! was handed out there — a page of a read from 0 through the compacted log — and
//! nothing was purged since: such a tag also hashes the log's purge count
//! ([`ReadLog::purges`]). Compaction removing superseded entries never hides a change
//! from such a reader (each row's later entry is still ahead of it); a purge (an
//! expired tombstone, or the entry where a row left a scope) can, so it ends every
//! such cursor, and its reader resyncs once. Any other cursor below the horizon is
//! from a client offline longer than the history window, and resyncs too.
//!
//! A bare version (`5`) is accepted too, unverified, for tools such as curl.

use crate::backend::ReadLog;
use crate::error::Result;
use crate::log::LogRow;
use sha2::{Digest, Sha256};

/// A cursor as a client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub version: i64,
    /// Absent for a bare version.
    pub tag: Option<String>,
    /// The access fingerprint it was made under, if any.
    pub access: Option<String>,
}

impl Cursor {
    /// Parses `V` or `V.tag`; `None` if it is neither.
    pub(crate) fn parse(s: &str) -> Option<Cursor> {
        let (version, tag) = match s.split_once('.') {
            Some((v, t)) => (v, Some(t)),
            None => (s, None),
        };
        // Digits only: `-0` and `+5` are not versions a server ever hands out.
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let version: i64 = version.parse().ok()?;
        if tag.is_some_and(|t| {
            !matches!(t.len(), 8 | 16) || !t.bytes().all(|b| b.is_ascii_hexdigit())
        }) {
            return None;
        }
        let tag = tag.map(str::to_ascii_lowercase);
        let (tag, access) = match tag {
            Some(t) if t.len() == 16 => (Some(t[..8].to_owned()), Some(t[8..].to_owned())),
            other => (other, None),
        };
        Some(Cursor {
            version,
            tag,
            access,
        })
    }
}

/// Why a cursor cannot be resumed: the client must resync from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reset {
    /// Newer than anything the log has held: the database was replaced or restored.
    AheadOfLog,
    /// Older than what compaction kept.
    BehindHorizon,
    /// The entry at the cursor is another change: another history of the log.
    OtherHistory,
    /// Made under other access: the principal may read more or less than it could.
    AccessChanged,
}

impl Reset {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Reset::AheadOfLog => "ahead_of_log",
            Reset::BehindHorizon => "behind_horizon",
            Reset::OtherHistory => "other_history",
            Reset::AccessChanged => "access_changed",
        }
    }
}

/// The tag of `version` given the entry there (absent: compacted, or the empty log).
pub(crate) fn tag(log_id: &str, version: i64, entry: Option<&LogRow>) -> String {
    hash(&[
        log_id,
        &version.to_string(),
        entry.map_or("", |e| e.entity.as_str()),
        entry.map_or("", |e| e.entity_id.as_str()),
        entry.and_then(|e| e.hlc.as_deref()).unwrap_or(""),
    ])
}

/// The tag of `version` below the horizon, valid while the purge count is `purges`.
/// Not of the entry there: a later pass may remove it (its row changed again), which
/// hides nothing from the reader, who is still to read that later change.
fn tag_below(log_id: &str, version: i64, purges: i64) -> String {
    hash(&[
        log_id,
        &version.to_string(),
        "below the horizon",
        &purges.to_string(),
    ])
}

fn hash(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `"{version}.{tag}"` for a row just read (followed by the access fingerprint where
/// there is one, see [`Access::suffix`](crate::scope::Access::suffix)).
pub(crate) fn token_of(log_id: &str, row: &LogRow) -> String {
    format!("{}.{}", row.version, tag(log_id, row.version, Some(row)))
}

/// The cursor of `row`, read in a pass that began when the purge count was `purges`
/// and the horizon `horizon`: below the horizon, one that resumes only while the count
/// stays `purges`.
pub(crate) fn token_below(log_id: &str, row: &LogRow, horizon: i64, purges: i64) -> String {
    if row.version >= horizon {
        return token_of(log_id, row);
    }
    format!("{}.{}", row.version, tag_below(log_id, row.version, purges))
}

/// `"{version}.{tag}"`, reading the entry at `version`.
pub(crate) async fn token(conn: &mut impl ReadLog, log_id: &str, version: i64) -> Result<String> {
    let entry = conn.entry_at(version).await?;
    Ok(format!(
        "{version}.{}",
        tag(log_id, version, entry.as_ref())
    ))
}

/// `"{version}.{tag}"` for where a read that began when the purge count was `purges`
/// stopped: below the horizon (read now), one that resumes only while the count stays.
pub(crate) async fn token_resuming(
    conn: &mut impl ReadLog,
    log_id: &str,
    version: i64,
    purges: i64,
) -> Result<String> {
    if version < conn.horizon().await? {
        return Ok(format!("{version}.{}", tag_below(log_id, version, purges)));
    }
    token(conn, log_id, version).await
}

/// Whether `cursor` can be resumed against the log as it is now (`head` read by the
/// caller, in the same connection) by a principal whose access fingerprint is `access`.
pub(crate) async fn check(
    conn: &mut impl ReadLog,
    log_id: &str,
    cursor: &Cursor,
    head: i64,
    access: Option<&str>,
) -> Result<Option<Reset>> {
    if cursor.version > head {
        return Ok(Some(Reset::AheadOfLog));
    }
    // From 0 is always whole: compaction keeps every row's latest entry.
    let horizon = conn.horizon().await?;
    if cursor.version > 0 && cursor.version < horizon {
        let below = tag_below(log_id, cursor.version, conn.purges().await?);
        if cursor.tag.as_deref() != Some(below.as_str()) {
            return Ok(Some(Reset::BehindHorizon));
        }
        return Ok(access_check(cursor, access));
    }
    // Version 0 is the start of every history.
    if let (Some(sent), true) = (&cursor.tag, cursor.version > 0) {
        let entry = conn.entry_at(cursor.version).await?;
        if *sent != tag(log_id, cursor.version, entry.as_ref()) {
            // The entry at the horizon itself can be gone (an expired tombstone): the
            // tag cannot be checked, and the client resyncs for that reason.
            if entry.is_none() && cursor.version == horizon {
                return Ok(Some(Reset::BehindHorizon));
            }
            // Above the horizon only an erasure removes entries (compaction works
            // below it, and versions have no gaps): the cursor stood on an entry of a
            // row since erased — often another scope's, that a quiet stream passed.
            // Nothing is left to check it by; it resumes as a bare version would,
            // rather than every reader of the log resyncing after each erasure.
            if entry.is_none() && cursor.version > horizon {
                return Ok(access_check(cursor, access));
            }
            return Ok(Some(Reset::OtherHistory));
        }
    }
    Ok(access_check(cursor, access))
}

fn access_check(cursor: &Cursor, access: Option<&str>) -> Option<Reset> {
    // A tagged cursor from before the access it is used under (a bare version is the
    // caller's own business: it can only miss changes, never see more).
    (cursor.tag.is_some() && cursor.access.as_deref() != access).then_some(Reset::AccessChanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_bare_or_tagged() {
        assert_eq!(
            Cursor::parse("42"),
            Some(Cursor {
                version: 42,
                tag: None,
                access: None,
            })
        );
        let scoped = Cursor::parse("42.00abcdefDEADbeef").unwrap();
        assert_eq!(scoped.tag.as_deref(), Some("00abcdef"));
        assert_eq!(scoped.access.as_deref(), Some("deadbeef"));
        assert_eq!(
            Cursor::parse("42.00AbCdEf").unwrap().tag.as_deref(),
            Some("00abcdef")
        );
        for bad in [
            "",
            "-1",
            "x",
            "4.2",
            "42.",
            "42.0123456789",
            "42.0123456789abcdef0",
            "42.zzzzzzzz",
            "1.2.3",
            "-0",
            "+5",
            " 5",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_tag_depends_on_the_log_and_the_entry() {
        let row = |hlc: &str| LogRow {
            version: 5,
            entity: "todos".into(),
            entity_id: "a".into(),
            action: "create".into(),
            data: None,
            changed: None,
            client_id: None,
            hlc: Some(hlc.into()),
            origin_hlc: None,
            conflict: None,
            scope_before: None,
            scope_after: None,
        };
        let one = tag("log-1", 5, Some(&row("h1")));
        assert_eq!(one, tag("log-1", 5, Some(&row("h1"))));
        assert_eq!(one.len(), 8);
        assert_ne!(one, tag("log-1", 5, Some(&row("h2"))));
        assert_ne!(one, tag("log-2", 5, Some(&row("h1"))));
        assert_ne!(one, tag("log-1", 5, None));
    }
}
