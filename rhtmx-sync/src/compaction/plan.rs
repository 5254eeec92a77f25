//! What one batch of compaction removes and rewrites, decided from the rows' entries
//! alone (no database access, so both backends share it and it is tested directly).

use std::sync::Arc;

use super::clocks::{Clock, Clocks};

/// One log entry at or below the horizon, as compaction reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Held {
    pub version: i64,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    /// The row after the change, as JSON.
    pub data: Option<String>,
    /// The fields an update changed, as a JSON array.
    pub changed: Option<String>,
    pub client_id: Option<String>,
    /// The effective HLC (see `crate::log`).
    pub hlc: String,
    /// When it was written, Unix milliseconds.
    pub created_ms: i64,
    /// Whether it carries a conflict report.
    pub conflict: bool,
    pub digest: Option<String>,
    /// The clocks of an earlier survivor.
    pub clocks: Option<String>,
    /// Whether the row left a scope here (and a reader of that scope learns it here).
    pub left_scope: bool,
}

/// The per-row retention cut-offs (Unix ms): entries written at or before them are past
/// their window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    pub tombstones: i64,
    pub conflicts: i64,
    /// Erasure (`SyncEngine::erase`): every entry but the latest goes whatever its age,
    /// conflict reports included; a tombstone stays (it holds no values, and a client
    /// that has the row must still learn of the delete), and so does where the row left
    /// a scope, without values. Replay digests (hashes, no
    /// values) are kept as by compaction, so a retried push is still not applied twice.
    pub erase: bool,
    /// Entities where a newer update brings a deleted row back (`delete_wins` off): a
    /// deleted row keeps its last live entry as long as its tombstone, for the row to
    /// come back as it was.
    pub restoring: &'a [Arc<str>],
}

impl Policy<'_> {
    /// The policy of an erasure.
    pub(crate) const ERASE: Policy<'static> = Policy {
        tombstones: i64::MIN,
        conflicts: i64::MAX,
        erase: true,
        restoring: &[],
    };
}

/// What to do to one batch.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Versions to delete.
    pub remove: Vec<i64>,
    /// Survivors and their new clocks.
    pub clocks: Vec<(i64, String)>,
    /// Digests of removed entries: `(digest, entity, entity_id, written at, Unix ms)`.
    pub replays: Vec<(String, String, String, i64)>,
    /// Survivors whose conflict report goes (erasure).
    pub clear_conflicts: Vec<i64>,
    /// Entries where a row left a scope, kept by an erasure with these values (`{}`)
    /// instead of their own.
    pub scrub: Vec<(i64, String)>,
    /// Rows changed.
    pub rows: u64,
    /// Rows whose expired tombstone went, leaving no entry.
    pub tombstones: u64,
    /// Whether an entry goes that a reader behind it could not do without: an expired
    /// tombstone, or where a row left a scope (see `ReadLog::purges`).
    pub purges: bool,
}

/// Plans a batch: `held` is every entry at or below the horizon of some rows, sorted by
/// row and then version.
pub(crate) fn plan(held: &[Held], policy: Policy<'_>) -> Plan {
    let mut plan = Plan::default();
    for run in held.chunk_by(|a, b| a.entity == b.entity && a.entity_id == b.entity_id) {
        row(run, policy, &mut plan);
    }
    plan
}

fn row(run: &[Held], policy: Policy<'_>, plan: &mut Plan) {
    let Some(survivor) = run.last() else { return };
    // An entry that resolved a conflict stays while its report is kept.
    let kept = |e: &Held| !policy.erase && e.conflict && e.created_ms > policy.conflicts;
    let deleted = !policy.erase && survivor.action == "delete";
    // An expired tombstone goes with every entry of its row, unless a kept report
    // still holds one: that entry would be the row's latest, and bring it back.
    let dead = deleted && survivor.created_ms <= policy.tombstones && !run.iter().any(kept);
    let restoring = policy.restoring.iter().any(|e| **e == *survivor.entity);
    let last_live = (deleted && !dead && restoring)
        .then(|| run.iter().rposition(|e| e.action != "delete"))
        .flatten();
    // Entries removed (or, by an erasure, rewritten).
    let mut removed = 0;
    let mut clocks = Clocks::default();
    for (i, e) in run.iter().enumerate() {
        fold(&mut clocks, e);
        let last = i + 1 == run.len();
        if (last && !dead) || kept(e) || last_live == Some(i) {
            continue;
        }
        if policy.erase && e.left_scope {
            // A reader of the scope it left learns it here and nowhere else. No values:
            // for the scope it entered, this is where the row came in, and readers
            // there may not see what it held before or after (a later entry there, or
            // where it left, follows).
            if e.data.as_deref() != Some("{}") || e.conflict {
                plan.scrub.push((e.version, "{}".to_owned()));
                if e.conflict {
                    plan.clear_conflicts.push(e.version);
                }
                removed += 1;
            }
            continue;
        }
        plan.remove.push(e.version);
        plan.purges |= e.left_scope;
        if let Some(digest) = &e.digest {
            let row = (e.entity.clone(), e.entity_id.clone());
            plan.replays
                .push((digest.clone(), row.0, row.1, e.created_ms));
        }
        removed += 1;
    }
    if policy.erase && survivor.conflict {
        plan.clear_conflicts.push(survivor.version);
    }
    if removed == 0 {
        plan.rows += u64::from(policy.erase && survivor.conflict);
        return;
    }
    plan.rows += 1;
    if dead && removed == run.len() {
        plan.tombstones += 1;
        plan.purges = true;
    } else if survivor.action != "delete" {
        let json = clocks.to_json();
        if survivor.clocks.as_deref() != Some(json.as_str()) {
            plan.clocks.push((survivor.version, json));
        }
    }
}

/// Adds what `e` changed to `clocks`.
fn fold(clocks: &mut Clocks, e: &Held) {
    if let Some(older) = &e.clocks {
        clocks.absorb(Clocks::parse(older));
    }
    let clock = Clock(e.version, e.hlc.clone(), e.client_id.clone());
    let changed: Option<Vec<String>> = e
        .changed
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    match (e.action.as_str(), changed) {
        ("delete", _) => clocks.clear(),
        ("update", Some(fields)) => clocks.set(fields.iter().map(String::as_str), &clock),
        // A create, or an update that did not say: every field of the row.
        (action, _) => {
            let row: serde_json::Map<String, serde_json::Value> = e
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_default();
            clocks.set(row.keys().map(String::as_str), &clock);
            if action == "create" {
                clocks.set([super::clocks::CREATED], &clock);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(version: i64, id: &str, action: &str, changed: Option<&str>, ms: i64) -> Held {
        Held {
            version,
            entity: "todos".into(),
            entity_id: id.into(),
            action: action.into(),
            data: (action != "delete").then(|| r#"{"id":"a","title":"t","done":0}"#.into()),
            changed: changed.map(Into::into),
            client_id: None,
            hlc: format!("h{version}"),
            created_ms: ms,
            conflict: false,
            digest: Some(format!("d{version}")),
            clocks: None,
            left_scope: false,
        }
    }

    const POLICY: Policy = Policy {
        tombstones: 100,
        conflicts: 100,
        erase: false,
        restoring: &[],
    };

    #[test]
    fn a_row_keeps_its_latest_entry_with_every_fields_clock() {
        let held = [
            held(1, "a", "create", None, 10),
            held(2, "a", "update", Some(r#"["done"]"#), 20),
            held(3, "a", "update", Some(r#"["title"]"#), 30),
            held(4, "b", "create", None, 40),
        ];
        let plan = plan(&held, POLICY);
        assert_eq!(plan.remove, [1, 2]);
        assert_eq!(plan.rows, 1);
        let row = |d: &str, ms| (d.to_owned(), "todos".to_owned(), "a".to_owned(), ms);
        assert_eq!(plan.replays, [row("d1", 10), row("d2", 20)]);
        assert_eq!(
            plan.clocks,
            [(
                3,
                r#"{"$created":[1,"h1",null],"done":[2,"h2",null],"id":[1,"h1",null],"title":[3,"h3",null]}"#.into()
            )]
        );
    }

    #[test]
    fn an_expired_tombstone_goes_with_its_row_and_a_recent_one_stays() {
        let old = [
            held(1, "a", "create", None, 10),
            held(2, "a", "delete", None, 50),
        ];
        let plan_old = plan(&old, POLICY);
        assert_eq!(plan_old.remove, [1, 2]);
        assert_eq!(plan_old.tombstones, 1);
        assert!(plan_old.purges);
        assert!(plan_old.clocks.is_empty());
        let recent = [
            held(1, "a", "create", None, 10),
            held(2, "a", "delete", None, 150),
        ];
        let plan_recent = plan(&recent, POLICY);
        assert_eq!(plan_recent.remove, [1]);
        assert_eq!(plan_recent.tombstones, 0);
        assert!(!plan_recent.purges);
        assert!(plan_recent.clocks.is_empty());
    }

    #[test]
    fn a_recent_conflict_report_keeps_its_entry() {
        let mut conflicted = held(2, "a", "update", Some(r#"["done"]"#), 150);
        conflicted.conflict = true;
        let held = [
            held(1, "a", "create", None, 10),
            conflicted,
            held(3, "a", "update", Some("[]"), 160),
        ];
        assert_eq!(plan(&held, POLICY).remove, [1]);
    }

    #[test]
    fn a_compacted_row_compacted_again_keeps_older_clocks() {
        let mut survivor = held(3, "a", "update", Some(r#"["title"]"#), 30);
        survivor.clocks = Some(r#"{"done":[2,"h2",null],"title":[3,"h3",null]}"#.into());
        let held = [survivor, held(7, "a", "update", Some(r#"["title"]"#), 70)];
        let plan = plan(&held, POLICY);
        assert_eq!(plan.remove, [3]);
        assert_eq!(
            plan.clocks,
            [(7, r#"{"done":[2,"h2",null],"title":[7,"h7",null]}"#.into())]
        );
        // Nothing to remove: nothing to do.
        assert_eq!(plan_one(), Plan::default());
    }

    #[test]
    fn an_erasure_keeps_only_the_latest_entry_and_no_report() {
        let mut first = held(1, "a", "create", None, 10);
        first.conflict = true;
        let mut last = held(2, "a", "delete", None, 999);
        last.conflict = true;
        let plan = plan(&[first, last], Policy::ERASE);
        assert_eq!(plan.remove, [1]);
        // The digest, a hash of the push, still recognises its retry.
        let digest = ("d1".to_owned(), "todos".to_owned(), "a".to_owned(), 10);
        assert_eq!(plan.replays, [digest]);
        assert_eq!(plan.clear_conflicts, [2]);
        assert_eq!(plan.tombstones, 0);
    }

    #[test]
    fn an_erasure_keeps_where_a_row_left_a_scope_without_values() {
        let mut moved = held(2, "a", "update", Some(r#"["tenant"]"#), 20);
        moved.left_scope = true;
        moved.data = Some(r#"{"id":"a","title":"old","tenant":"t2"}"#.into());
        let mut latest = held(3, "a", "update", Some(r#"["title"]"#), 30);
        latest.data = Some(r#"{"id":"a","title":"new","tenant":"t2"}"#.into());
        let rows = [held(1, "a", "create", None, 10), moved, latest.clone()];
        let plan = plan(&rows, Policy::ERASE);
        assert_eq!(plan.remove, [1]);
        assert_eq!(plan.scrub, [(2, "{}".to_owned())]);
        // Done once: a second erasure finds nothing to rewrite.
        let mut scrubbed = rows[1].clone();
        scrubbed.data = Some("{}".into());
        assert_eq!(
            super::plan(&[scrubbed, latest], Policy::ERASE),
            Plan::default()
        );
    }

    #[test]
    fn removing_where_a_row_left_a_scope_is_a_purge() {
        let mut moved = held(2, "a", "update", Some(r#"["tenant"]"#), 20);
        moved.left_scope = true;
        let rows = [
            held(1, "a", "create", None, 10),
            moved,
            held(3, "a", "update", Some(r#"["title"]"#), 30),
        ];
        let plan = plan(&rows, POLICY);
        assert_eq!(plan.remove, [1, 2]);
        assert!(plan.purges);
        // Only superseded entries: nothing a reader behind them needs.
        assert!(!plan_one().purges);
        let superseded = [
            held(1, "a", "create", None, 10),
            held(3, "a", "update", None, 30),
        ];
        assert!(!super::plan(&superseded, POLICY).purges);
    }

    #[test]
    fn a_kept_report_keeps_the_tombstone_after_it() {
        let mut conflicted = held(2, "a", "update", Some(r#"["done"]"#), 150);
        conflicted.conflict = true;
        // The tombstone is past its window, the report is not: both stay, or the
        // report's entry would be the row's latest and bring it back.
        let policy = Policy {
            tombstones: 200,
            ..POLICY
        };
        let rows = [
            held(1, "a", "create", None, 10),
            conflicted,
            held(3, "a", "delete", None, 160),
        ];
        let plan = plan(&rows, policy);
        assert_eq!(plan.remove, [1]);
        assert_eq!(plan.tombstones, 0);
        assert!(!plan.purges);
    }

    #[test]
    fn a_restoring_entity_keeps_a_deleted_rows_last_values_with_its_tombstone() {
        let rows = [
            held(1, "a", "create", None, 10),
            held(2, "a", "update", Some(r#"["title"]"#), 20),
            held(3, "a", "delete", None, 150),
        ];
        let restoring: [Arc<str>; 1] = ["todos".into()];
        let policy = Policy {
            restoring: &restoring,
            ..POLICY
        };
        assert_eq!(plan(&rows, policy).remove, [1]);
        assert_eq!(plan(&rows, POLICY).remove, [1, 2]);
        // Once the tombstone expires, everything goes.
        let expired = Policy {
            tombstones: 200,
            ..policy
        };
        assert_eq!(plan(&rows, expired).remove, [1, 2, 3]);
    }

    fn plan_one() -> Plan {
        plan(&[held(1, "a", "create", None, 10)], POLICY)
    }
}
