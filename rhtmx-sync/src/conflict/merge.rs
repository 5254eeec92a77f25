//! The field-level three-way merge, as a pure function over rows and the row's log.
//!
//! The engine reads the row and its log entries from SQLite and executes the
//! [`Decision`]; a simulation (or a test) can drive [`merge`] with rows kept in memory.
//! Everything that decides who wins is here.

use std::collections::BTreeMap;

use serde_json::Value;

use super::report::{Conflict, FieldReport, Outcome, Reason, Rule};
use super::resolver::{ConflictResolver, FieldConflict};
use crate::hlc::Hlc;
use crate::syncable::SyncStrategy;
use crate::wire::Action;

/// A row as JSON, column → value, **without its key column** (the key travels as the
/// change's `id`). Values are as the change log encodes them (booleans as `true`/`false`).
pub type Row = serde_json::Map<String, Value>;

/// A client's change, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The entity (table) name.
    pub entity: String,
    /// The row's id as it travels on the wire.
    pub id: Value,
    /// What the client did.
    pub action: Action,
    /// The fields the client set (for an update: the ones its user changed).
    pub fields: Row,
    /// When the user acted (the server's clock when the client did not say). Each change
    /// of one row needs its own: an HLC already in the row's log marks a replay.
    pub hlc: Hlc,
    /// Who pushed it. Log entries with the same client id after the base are the
    /// client's own earlier writes, which it had seen.
    pub client_id: Option<String>,
    /// The version of the row the client last saw (`client_version`). `None`: a plain
    /// last-arrival write, as before conflict resolution existed.
    pub base: Option<i64>,
}

/// One entry of the row's change log, as the merge sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its log version.
    pub version: i64,
    /// What happened.
    pub action: Action,
    /// The fields an update changed; `None` for creates (every field) and deletes.
    pub changed: Option<Vec<String>>,
    /// The row after the change (without the key); `None` for deletes.
    pub data: Option<Row>,
    /// Its HLC (derived from `created_at` for the app's own SQL writes).
    pub hlc: Hlc,
    /// The HLC its writer gave it, where the log moved it after the writes it
    /// overwrote (causal stamping); `None` where it did not.
    pub origin_hlc: Option<Hlc>,
    /// The client that pushed it, if any.
    pub client_id: Option<String>,
}

impl Entry {
    /// Whether this entry set `field`.
    pub fn touches(&self, field: &str) -> bool {
        match (self.action, &self.changed) {
            (Action::Delete, _) => false,
            (Action::Update, Some(changed)) => changed.iter().any(|c| c == field),
            _ => true,
        }
    }

    /// The fields this entry set, given the row's fields (for a create: all of them).
    fn touched<'a>(&'a self, row: &'a Row) -> Vec<&'a str> {
        match (self.action, &self.changed) {
            (Action::Delete, _) => Vec::new(),
            (Action::Update, Some(changed)) => changed.iter().map(String::as_str).collect(),
            _ => row.keys().map(String::as_str).collect(),
        }
    }
}

/// The deletes of a row which is absent now: the log entries after its last live one.
#[derive(Debug, Clone, PartialEq)]
pub struct Tombstone {
    /// The version of the delete that removed the row.
    pub version: i64,
    /// The latest HLC among the deletes since: when the row was last deleted.
    pub hlc: Hlc,
    /// The row just before it (without the key), if the log still has it.
    pub last_row: Option<Row>,
}

/// What the merge needs from the row's log; see [`History::from_log`] for how each part
/// is defined.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The entries after [`History::floor`], oldest first.
    pub since_base: Vec<Entry>,
    /// The row at the change's base version, for custom resolvers.
    pub base_row: Option<Row>,
    /// The row's deletes, when the row is absent.
    pub tombstone: Option<Tombstone>,
    /// Whether this very change was applied before (the engine compares a digest of
    /// client, HLC, action and fields): a replay, which does nothing.
    pub replayed: bool,
    /// Other engines' updates of the absent row that arrived after its delete but are
    /// older than it (`HLC`, fields set), waiting for the row: where deletes do not
    /// win, the row a later update restores holds them, as it does on an engine that
    /// applied them before the delete.
    pub parked: Vec<(Hlc, Row)>,
}

impl History {
    /// The entries a change is merged against are those after this version: the base
    /// for updates and deletes, the whole log for creates (a create that meets an
    /// existing row merges with everything), none for writes without a base.
    pub fn floor(change: &Change) -> Option<i64> {
        match change.action {
            Action::Create => Some(0),
            _ => change.base,
        }
    }

    /// Extracts the history from the row's whole log (oldest first). `exists` says
    /// whether the row exists now.
    pub fn from_log(log: &[Entry], change: &Change, exists: bool) -> History {
        let since_base = match History::floor(change) {
            Some(floor) => log.iter().filter(|e| e.version > floor).cloned().collect(),
            None => Vec::new(),
        };
        let base_row = match (change.action, change.base) {
            (Action::Update, Some(base)) => log
                .iter()
                .rev()
                .find(|e| e.version <= base)
                .and_then(|e| e.data.clone()),
            _ => None,
        };
        let tombstone = if exists {
            None
        } else {
            // The deletes after the last entry that left the row in place.
            let live = log.iter().rposition(|e| e.action != Action::Delete);
            let deletes = &log[live.map_or(0, |i| i + 1)..];
            deletes.first().map(|first| Tombstone {
                version: first.version,
                hlc: deletes.iter().map(|e| e.hlc).max().unwrap_or(first.hlc),
                last_row: live.and_then(|i| log[i].data.clone()),
            })
        };
        History {
            since_base,
            base_row,
            tombstone,
            // Entries carry no digest: a model whose every action has its own HLC can
            // tell a replay by the HLC alone (the one its writer gave it).
            replayed: log
                .iter()
                .any(|e| e.origin_hlc.unwrap_or(e.hlc) == change.hlc),
            parked: Vec::new(),
        }
    }
}

/// How an entity resolves conflicts.
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    /// The rule for a field changed on both sides.
    pub strategy: SyncStrategy,
    /// The resolver for [`SyncStrategy::Custom`] (without one, last write wins).
    pub resolver: Option<&'a dyn ConflictResolver>,
    /// Whether a delete beats a concurrent update; with `false` the later by HLC wins.
    pub delete_wins: bool,
}

impl Default for Policy<'_> {
    fn default() -> Self {
        Policy {
            strategy: SyncStrategy::LastWriteWins,
            resolver: None,
            delete_wins: true,
        }
    }
}

impl std::fmt::Debug for Policy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("strategy", &self.strategy)
            .field("resolver", &self.resolver.is_some())
            .field("delete_wins", &self.delete_wins)
            .finish()
    }
}

/// The write the merge decided on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Write {
    /// Nothing changes in the table.
    Nothing,
    /// Insert the row with these fields (the rest take their defaults).
    Insert(Row),
    /// Set these fields of the existing row.
    Update(Row),
    /// Delete the row.
    Delete,
    /// The row is already absent: record the delete anyway, so that a create or an
    /// update that happened before it but arrives later cannot bring the row back.
    Tombstone,
    /// Re-insert a deleted row with these fields (an update newer than the delete, when
    /// deletes do not always win).
    Restore(Row),
}

/// What became of the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Applied, possibly with some fields lost to a conflict (see the conflict).
    Applied,
    /// Already applied: nothing to do.
    Duplicate,
    /// An update of a row that does not exist and never was deleted.
    NotFound,
    /// An update or create of a deleted row, refused (see the conflict).
    Deleted,
}

/// The merge's verdict on one change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Decision {
    /// What to write.
    pub write: Write,
    /// The fields that now hold the client's value, whether or not they changed: the
    /// change's log entry must list them in `changed`, so that later merges see this
    /// change as their latest writer.
    pub touched: Vec<String>,
    /// The conflict to report, if any.
    pub conflict: Option<Conflict>,
    /// What became of the change.
    pub status: Status,
}

impl Decision {
    fn new(status: Status, write: Write) -> Decision {
        Decision {
            write,
            touched: Vec::new(),
            conflict: None,
            status,
        }
    }
}

/// Merges `change` into the row as it is now (`current`, `None` when absent) given its
/// log `history`, by the entity's `policy`.
///
/// - A field the client changed that nobody else changed since the client's base is
///   applied. A field both changed goes to the strategy; log entries of the same client
///   are its own earlier writes and do not conflict (a newer one of its own wins).
/// - A change without a base is a plain last-arrival write.
/// - A delete beats concurrent updates (or, without `delete_wins`, the later by HLC
///   wins); an update of a deleted row is refused; a create older than the row's
///   tombstone is refused; a change already applied (`history.replayed`) is a replay.
/// - Two writes with the same HLC are parts of one user action: the later wins.
pub fn merge(
    change: &Change,
    current: Option<&Row>,
    history: &History,
    policy: &Policy<'_>,
) -> Decision {
    if history.replayed {
        return Decision::new(Status::Duplicate, Write::Nothing);
    }
    match (change.action, current) {
        (Action::Create, None) => create_absent(change, history),
        (Action::Create, Some(row)) => merge_fields(change, row, history, policy),
        (Action::Update, None) => update_absent(change, history, policy),
        (Action::Update, Some(_)) if change.base.is_none() => {
            Decision::new(Status::Applied, Write::Update(change.fields.clone()))
        }
        (Action::Update, Some(row)) => merge_fields(change, row, history, policy),
        (Action::Delete, None) => {
            // Recorded when it moves the tombstone's time on, so that a create or an
            // update older than this delete cannot bring the row back.
            let newer = history
                .tombstone
                .as_ref()
                .is_none_or(|t| change.hlc > t.hlc);
            if newer && change.base.is_some() {
                Decision::new(Status::Applied, Write::Tombstone)
            } else {
                Decision::new(Status::Applied, Write::Nothing)
            }
        }
        (Action::Delete, Some(row)) => delete_present(change, row, history, policy),
    }
}

/// Whether `change` is another engine's ([`crate::replication`]).
fn authored(change: &Change) -> bool {
    change
        .client_id
        .as_deref()
        .is_some_and(|c| c.starts_with(crate::replication::AUTHOR_PREFIX))
}

/// Whether `entry` was written by the same client as `change`.
fn own(entry: &Entry, change: &Change) -> bool {
    matches!((&entry.client_id, &change.client_id), (Some(a), Some(b)) if a == b)
}

fn conflict(change: &Change, reason: Reason, outcome: Outcome, strategy: Rule) -> Conflict {
    Conflict {
        entity: change.entity.clone(),
        id: change.id.clone(),
        action: change.action,
        reason,
        outcome,
        strategy,
        fields: BTreeMap::new(),
        client_hlc: change.hlc,
        server_hlc: change.hlc,
        client_version: change.base,
        version: None,
        client_id: change.client_id.clone(),
    }
}

/// The client's fields, each reported as lost to a delete.
fn lost_to_delete(change: &Change) -> BTreeMap<String, FieldReport> {
    change
        .fields
        .iter()
        .map(|(k, v)| {
            let report = FieldReport {
                client: Some(v.clone()),
                server: None,
                resolved: None,
                outcome: Outcome::Deleted,
                server_hlc: None,
            };
            (k.clone(), report)
        })
        .collect()
}

fn create_absent(change: &Change, history: &History) -> Decision {
    match &history.tombstone {
        // A create from before the delete (a late replay) must not bring the row back;
        // a newer one is a deliberate re-creation.
        // Another engine's create at the delete's very HLC loses, as the delete would
        // win on that engine.
        Some(t) if t.hlc > change.hlc || (t.hlc == change.hlc && authored(change)) => {
            let mut c = conflict(
                change,
                Reason::Deleted,
                Outcome::Deleted,
                Rule::LastWriteWins,
            );
            c.server_hlc = t.hlc;
            c.fields = lost_to_delete(change);
            Decision {
                conflict: Some(c),
                ..Decision::new(Status::Deleted, Write::Nothing)
            }
        }
        _ if authored(change) => {
            Decision::new(Status::Applied, Write::Insert(recreated(change, history)))
        }
        _ => Decision::new(Status::Applied, Write::Insert(change.fields.clone())),
    }
}

/// Another engine's create of a row absent here, with the fields this engine's updates
/// set after it (by HLC) on top: writes made here while the row was gone, which that
/// engine applies to the created row when they reach it.
fn recreated(change: &Change, history: &History) -> Row {
    let floor = history
        .tombstone
        .as_ref()
        .map_or(change.hlc, |t| t.hlc.max(change.hlc));
    let mut fields = change.fields.clone();
    let mut newest: BTreeMap<&str, Hlc> = BTreeMap::new();
    let later = history
        .since_base
        .iter()
        .filter(|e| e.action == Action::Update && e.hlc > floor);
    for entry in later {
        let (Some(data), Some(changed)) = (&entry.data, &entry.changed) else {
            continue;
        };
        for field in changed {
            let (Some(value), true) = (
                data.get(field),
                newest.get(field.as_str()).is_none_or(|h| entry.hlc > *h),
            ) else {
                continue;
            };
            fields.insert(field.clone(), value.clone());
            newest.insert(field, entry.hlc);
        }
    }
    fields
}

fn update_absent(change: &Change, history: &History, policy: &Policy<'_>) -> Decision {
    let (Some(t), Some(base)) = (&history.tombstone, change.base) else {
        return Decision::new(Status::NotFound, Write::Nothing);
    };
    let rule = if policy.delete_wins {
        Rule::DeleteWins
    } else {
        Rule::LastWriteWins
    };
    let mut c = conflict(change, Reason::Deleted, Outcome::Deleted, rule);
    c.server_hlc = t.hlc;
    c.fields = lost_to_delete(change);
    let restorable = !policy.delete_wins && t.version > base && change.hlc >= t.hlc;
    if let (true, Some(last)) = (restorable, &t.last_row) {
        let mut row = last.clone();
        take_parked(&mut row, t, history);
        for (k, v) in &change.fields {
            row.insert(k.clone(), v.clone());
            let field = c.fields.get_mut(k).expect("every client field is reported");
            field.outcome = Outcome::Client;
            field.resolved = Some(v.clone());
        }
        c.outcome = Outcome::Client;
        return Decision {
            conflict: Some(c),
            ..Decision::new(Status::Applied, Write::Restore(row))
        };
    }
    Decision {
        conflict: Some(c),
        ..Decision::new(Status::Deleted, Write::Nothing)
    }
}

/// Applies to `row`, the row as the delete `t` left it, the parked updates older than
/// the delete: each field takes the one whose HLC is greater than its last write before
/// the delete (a create writes every field), as it did where they came first.
fn take_parked(row: &mut Row, t: &Tombstone, history: &History) {
    if history.parked.is_empty() {
        return;
    }
    let mut written: BTreeMap<&str, Hlc> = BTreeMap::new();
    // When the row's last life began: its create, or (compacted away) the first write
    // known of it. A parked update older than that belongs to an earlier life.
    let mut life: Option<Hlc> = None;
    for e in history.since_base.iter().filter(|e| e.version < t.version) {
        match e.action {
            Action::Delete => life = None,
            Action::Create => life = Some(e.hlc),
            Action::Update => life = life.or(Some(e.hlc)),
        }
        match (e.action, &e.changed, &e.data) {
            (Action::Delete, ..) => written.clear(),
            (Action::Create, _, Some(data)) => {
                written = data.keys().map(|k| (k.as_str(), e.hlc)).collect();
            }
            (_, Some(changed), _) => {
                for field in changed {
                    let at = written.entry(field.as_str()).or_insert(e.hlc);
                    *at = (*at).max(e.hlc);
                }
            }
            _ => {}
        }
    }
    let mut parked: Vec<&(Hlc, Row)> = (history.parked.iter())
        .filter(|p| p.0 < t.hlc && life.is_none_or(|l| p.0 > l))
        .collect();
    parked.sort_by_key(|p| p.0);
    for (hlc, fields) in parked {
        for (k, v) in fields {
            if written.get(k.as_str()).is_none_or(|at| *hlc > *at) {
                row.insert(k.clone(), v.clone());
                written.insert(k.as_str(), *hlc);
            }
        }
    }
}

/// The value a conflicting field gets and who won it.
fn resolve(
    change: &Change,
    field: &str,
    server: &Value,
    client: &Value,
    server_hlc: Hlc,
    history: &History,
    policy: &Policy<'_>,
) -> (Value, Outcome) {
    let client_wins = match (policy.strategy, policy.resolver) {
        (SyncStrategy::ClientWins, _) => true,
        (SyncStrategy::ServerWins, _) => false,
        (SyncStrategy::Custom, Some(resolver)) => {
            let resolved = resolver.resolve(&FieldConflict {
                entity: &change.entity,
                id: &change.id,
                field,
                base: history.base_row.as_ref().and_then(|r| r.get(field)),
                server,
                client,
                server_hlc,
                client_hlc: change.hlc,
            });
            let outcome = if resolved == *client {
                Outcome::Client
            } else if resolved == *server {
                Outcome::Server
            } else {
                Outcome::Merged
            };
            return (resolved, outcome);
        }
        // Another engine's write with the very same HLC (the app's own SQL on two
        // engines in one millisecond: both node 0): the greater value wins, the same
        // on both engines, or they would each keep the other's.
        _ if change.hlc == server_hlc && authored(change) => {
            let (ours, theirs) = (client.to_string(), server.to_string());
            ours > theirs
        }
        // Ties cannot happen between two nodes. An identical HLC is another write of the
        // same user action (two writes in one handler, one push): the later one wins.
        _ => change.hlc >= server_hlc,
    };
    if client_wins {
        (client.clone(), Outcome::Client)
    } else {
        (server.clone(), Outcome::Server)
    }
}

fn merge_fields(change: &Change, row: &Row, history: &History, policy: &Policy<'_>) -> Decision {
    let mut set = Row::new();
    let mut touched = Vec::new();
    let mut reports = BTreeMap::new();
    let mut latest: Option<Hlc> = None;
    for (field, client) in &change.fields {
        let mut concurrent: Option<Hlc> = None;
        let mut superseded = false;
        for entry in history.since_base.iter().filter(|e| e.touches(field)) {
            if own(entry, change) {
                // Its own earlier write it had seen; a later one of its own wins. By
                // the client's own clock: the log may have moved its entry later.
                superseded |= entry.origin_hlc.unwrap_or(entry.hlc) > change.hlc;
            } else {
                concurrent = concurrent.max(Some(entry.hlc));
            }
        }
        if superseded {
            continue;
        }
        let server = row.get(field).unwrap_or(&Value::Null);
        let Some(server_hlc) = concurrent else {
            if server != client {
                set.insert(field.clone(), client.clone());
            }
            touched.push(field.clone());
            continue;
        };
        if server == client {
            // Both made the same change: nothing to resolve.
            touched.push(field.clone());
            continue;
        }
        let (resolved, outcome) =
            resolve(change, field, server, client, server_hlc, history, policy);
        if resolved != *server {
            set.insert(field.clone(), resolved.clone());
        }
        if outcome == Outcome::Client {
            touched.push(field.clone());
        }
        latest = latest.max(Some(server_hlc));
        let report = FieldReport {
            client: Some(client.clone()),
            server: Some(server.clone()),
            resolved: Some(resolved),
            outcome,
            server_hlc: Some(server_hlc),
        };
        reports.insert(field.clone(), report);
    }
    let write = if set.is_empty() {
        Write::Nothing
    } else {
        Write::Update(set)
    };
    let conflict = latest.map(|server_hlc| {
        let outcomes: Vec<Outcome> = reports.values().map(|r: &FieldReport| r.outcome).collect();
        let overall = if outcomes.iter().all(|o| *o == Outcome::Client) {
            Outcome::Client
        } else if outcomes.iter().all(|o| *o == Outcome::Server) {
            Outcome::Server
        } else {
            Outcome::Merged
        };
        let mut c = conflict(
            change,
            Reason::ConcurrentUpdate,
            overall,
            policy.strategy.into(),
        );
        c.server_hlc = server_hlc;
        c.fields = reports;
        c
    });
    Decision {
        write,
        touched,
        conflict,
        status: Status::Applied,
    }
}

fn delete_present(change: &Change, row: &Row, history: &History, policy: &Policy<'_>) -> Decision {
    if change.base.is_none() {
        return Decision::new(Status::Applied, Write::Delete);
    }
    // Between engines, the order of HLCs decides whether a row exists: it does when
    // it was last created after it was last deleted. A delete older than the row's
    // latest creation removed an earlier life of it, and does nothing here. Where
    // deletes do not win, an update at least as late as the delete keeps the row too,
    // as it restores it on an engine that applied the delete first (`update_absent`).
    if authored(change) {
        let survives = |e: &Entry| match e.action {
            Action::Create => e.hlc > change.hlc,
            Action::Update => {
                !policy.delete_wins
                    && e.changed.as_ref().is_some_and(|c| !c.is_empty())
                    && e.hlc >= change.hlc
            }
            Action::Delete => false,
        };
        return if history.since_base.iter().any(survives) {
            Decision::new(Status::Applied, Write::Nothing)
        } else {
            Decision::new(Status::Applied, Write::Delete)
        };
    }
    // Fields changed since the base by someone else, with their latest HLC.
    let mut concurrent: BTreeMap<&str, Hlc> = BTreeMap::new();
    for entry in history.since_base.iter().filter(|e| !own(e, change)) {
        for field in entry.touched(row) {
            let hlc = concurrent.entry(field).or_insert(entry.hlc);
            *hlc = (*hlc).max(entry.hlc);
        }
    }
    let Some(latest) = concurrent.values().max().copied() else {
        return Decision::new(Status::Applied, Write::Delete);
    };
    let deletes = policy.delete_wins || change.hlc >= latest;
    let outcome = if deletes {
        Outcome::Deleted
    } else {
        Outcome::Server
    };
    let rule = if policy.delete_wins {
        Rule::DeleteWins
    } else {
        Rule::LastWriteWins
    };
    let mut c = conflict(change, Reason::ConcurrentUpdate, outcome, rule);
    c.server_hlc = latest;
    c.fields = concurrent
        .into_iter()
        .map(|(field, hlc)| {
            let server = row.get(field).cloned().unwrap_or(Value::Null);
            let report = FieldReport {
                client: None,
                resolved: (!deletes).then(|| server.clone()),
                server: Some(server),
                outcome,
                server_hlc: Some(hlc),
            };
            (field.to_owned(), report)
        })
        .collect();
    let write = if deletes {
        Write::Delete
    } else {
        Write::Nothing
    };
    Decision {
        conflict: Some(c),
        ..Decision::new(Status::Applied, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "tab-a";
    const B: &str = "tab-b";

    fn hlc(ms: u64, node: u64) -> Hlc {
        Hlc::new(1_700_000_000_000 + ms, 0, node)
    }

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    fn change(action: Action, fields: Value, at: Hlc, client: &str, base: Option<i64>) -> Change {
        Change {
            entity: "todos".into(),
            id: json!("r1"),
            action,
            fields: row(fields),
            hlc: at,
            client_id: Some(client.into()),
            base,
        }
    }

    fn update(fields: Value, at: Hlc, client: &str, base: i64) -> Change {
        change(Action::Update, fields, at, client, Some(base))
    }

    fn entry(
        version: i64,
        action: Action,
        changed: &[&str],
        data: Value,
        at: Hlc,
        client: &str,
    ) -> Entry {
        Entry {
            version,
            action,
            changed: (action == Action::Update)
                .then(|| changed.iter().map(|s| (*s).to_owned()).collect()),
            data: (action != Action::Delete).then(|| row(data)),
            hlc: at,
            origin_hlc: None,
            client_id: Some(client.into()),
        }
    }

    /// The row `r1` created by B at version 1, its title changed by B at version 2.
    fn log() -> Vec<Entry> {
        vec![
            entry(
                1,
                Action::Create,
                &[],
                json!({"title": "a", "done": false, "n": 1}),
                hlc(10, 2),
                B,
            ),
            entry(
                2,
                Action::Update,
                &["title"],
                json!({"title": "b", "done": false, "n": 1}),
                hlc(20, 2),
                B,
            ),
        ]
    }

    fn current() -> Row {
        row(json!({"title": "b", "done": false, "n": 1}))
    }

    fn run(c: &Change, log: &[Entry], current: Option<&Row>, policy: Policy<'_>) -> Decision {
        let history = History::from_log(log, c, current.is_some());
        merge(c, current, &history, &policy)
    }

    fn strategy(s: SyncStrategy) -> Policy<'static> {
        Policy {
            strategy: s,
            ..Policy::default()
        }
    }

    #[test]
    fn fields_changed_only_by_the_client_apply_without_a_conflict() {
        // A saw version 1; since then only `title` changed on the server.
        let c = update(json!({"done": true}), hlc(15, 1), A, 1);
        let d = run(&c, &log(), Some(&current()), Policy::default());
        assert_eq!(d.write, Write::Update(row(json!({"done": true}))));
        assert_eq!(d.touched, ["done"]);
        assert_eq!((d.conflict, d.status), (None, Status::Applied));
    }

    #[test]
    fn last_write_wins_compares_when_the_users_acted() {
        let newer = update(json!({"title": "c", "done": true}), hlc(30, 1), A, 1);
        let d = run(&newer, &log(), Some(&current()), Policy::default());
        assert_eq!(
            d.write,
            Write::Update(row(json!({"title": "c", "done": true})))
        );
        let c = d.conflict.unwrap();
        assert_eq!(
            (c.reason, c.outcome),
            (Reason::ConcurrentUpdate, Outcome::Client)
        );
        assert_eq!(c.strategy, Rule::LastWriteWins);
        assert_eq!((c.client_hlc, c.server_hlc), (hlc(30, 1), hlc(20, 2)));
        assert_eq!(c.fields.keys().collect::<Vec<_>>(), ["title"]);
        let f = &c.fields["title"];
        assert_eq!(
            (&f.client, &f.server, &f.resolved),
            (&Some(json!("c")), &Some(json!("b")), &Some(json!("c")))
        );

        // Acted before the server's change: the server's title stays, `done` applies.
        let older = update(json!({"title": "c", "done": true}), hlc(15, 1), A, 1);
        let d = run(&older, &log(), Some(&current()), Policy::default());
        assert_eq!(d.write, Write::Update(row(json!({"done": true}))));
        assert_eq!(d.touched, ["done"]);
        // The conflict is about `title` alone, which the server won.
        let c = d.conflict.unwrap();
        assert_eq!(c.outcome, Outcome::Server);
        assert_eq!(c.fields.keys().collect::<Vec<_>>(), ["title"]);
    }

    #[test]
    fn ties_in_time_are_broken_by_node() {
        let low = update(json!({"title": "c"}), hlc(20, 1), A, 1);
        let high = update(json!({"title": "c"}), hlc(20, 3), A, 1);
        let lost = run(&low, &log(), Some(&current()), Policy::default());
        let won = run(&high, &log(), Some(&current()), Policy::default());
        assert_eq!(lost.conflict.unwrap().outcome, Outcome::Server);
        assert_eq!(won.conflict.unwrap().outcome, Outcome::Client);
    }

    #[test]
    fn client_wins_and_server_wins() {
        let c = update(json!({"title": "c"}), hlc(15, 1), A, 1);
        let d = run(
            &c,
            &log(),
            Some(&current()),
            strategy(SyncStrategy::ClientWins),
        );
        assert_eq!(d.write, Write::Update(row(json!({"title": "c"}))));
        assert_eq!(d.conflict.unwrap().strategy, Rule::ClientWins);
        let c = update(json!({"title": "c"}), hlc(99, 1), A, 1);
        let d = run(
            &c,
            &log(),
            Some(&current()),
            strategy(SyncStrategy::ServerWins),
        );
        assert_eq!(d.write, Write::Nothing);
        assert!(d.touched.is_empty());
        let c = d.conflict.unwrap();
        assert_eq!((c.outcome, c.strategy), (Outcome::Server, Rule::ServerWins));
    }

    #[test]
    fn a_custom_resolver_sees_base_server_and_client() {
        let sum = |c: &FieldConflict<'_>| {
            let n = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
            json!(n(Some(c.server)) + n(Some(c.client)) - n(c.base))
        };
        let mut log = log();
        // B added 5 (1 → 6) after A's base.
        log.push(entry(
            3,
            Action::Update,
            &["n"],
            json!({"title": "b", "done": false, "n": 6}),
            hlc(25, 2),
            B,
        ));
        let now = row(json!({"title": "b", "done": false, "n": 6}));
        // A added 2 (1 → 3).
        let c = update(json!({"n": 3}), hlc(30, 1), A, 2);
        let policy = Policy {
            strategy: SyncStrategy::Custom,
            resolver: Some(&sum),
            delete_wins: true,
        };
        let d = run(&c, &log, Some(&now), policy);
        assert_eq!(d.write, Write::Update(row(json!({"n": 8}))));
        let c = d.conflict.unwrap();
        assert_eq!((c.outcome, c.strategy), (Outcome::Merged, Rule::Custom));
        assert_eq!(c.fields["n"].resolved, Some(json!(8)));
    }

    #[test]
    fn the_clients_own_writes_are_not_conflicts() {
        let mut log = log();
        // A's own earlier write of `title` (seen by A) arrived after its base...
        log.push(entry(
            3,
            Action::Update,
            &["title"],
            json!({"title": "x", "done": false, "n": 1}),
            hlc(30, 1),
            A,
        ));
        let now = row(json!({"title": "x", "done": false, "n": 1}));
        // ...so its next write of `title` wins even under ServerWins.
        let next = update(json!({"title": "y"}), hlc(31, 1), A, 2);
        let d = run(&next, &log, Some(&now), strategy(SyncStrategy::ServerWins));
        assert_eq!(
            (d.write, d.conflict),
            (Write::Update(row(json!({"title": "y"}))), None)
        );
        // A stale write of its own arriving late is superseded, whatever the strategy.
        let stale = update(json!({"title": "w"}), hlc(29, 1), A, 2);
        let d = run(&stale, &log, Some(&now), strategy(SyncStrategy::ClientWins));
        assert_eq!((d.write, d.conflict), (Write::Nothing, None));
    }

    #[test]
    fn the_same_change_on_both_sides_is_no_conflict_but_is_recorded() {
        let c = update(json!({"title": "b"}), hlc(30, 1), A, 1);
        let d = run(&c, &log(), Some(&current()), Policy::default());
        assert_eq!((d.write, d.conflict), (Write::Nothing, None));
        assert_eq!(d.touched, ["title"]);
    }

    #[test]
    fn a_write_without_a_base_is_last_arrival() {
        let c = change(Action::Update, json!({"title": "old"}), hlc(1, 1), A, None);
        let d = run(
            &c,
            &log(),
            Some(&current()),
            strategy(SyncStrategy::ServerWins),
        );
        assert_eq!(d.write, Write::Update(row(json!({"title": "old"}))));
        assert_eq!(d.conflict, None);
    }

    #[test]
    fn a_replay_is_recognised_by_its_hlc() {
        let c = update(json!({"title": "b"}), hlc(20, 2), B, 1);
        let d = run(
            &c,
            &log(),
            Some(&current()),
            strategy(SyncStrategy::ClientWins),
        );
        assert_eq!((d.status, d.write), (Status::Duplicate, Write::Nothing));
    }

    fn deleted_log() -> Vec<Entry> {
        let mut log = log();
        log.push(entry(
            3,
            Action::Delete,
            &[],
            Value::Null,
            hlc(40, 3),
            "tab-c",
        ));
        log
    }

    #[test]
    fn an_update_after_a_delete_does_not_resurrect() {
        for at in [hlc(30, 1), hlc(50, 1)] {
            let c = update(json!({"title": "late"}), at, A, 2);
            let d = run(&c, &deleted_log(), None, strategy(SyncStrategy::ClientWins));
            assert_eq!(
                (d.status, d.write.clone()),
                (Status::Deleted, Write::Nothing)
            );
            let c = d.conflict.unwrap();
            assert_eq!((c.reason, c.outcome), (Reason::Deleted, Outcome::Deleted));
            assert_eq!((c.strategy, c.server_hlc), (Rule::DeleteWins, hlc(40, 3)));
        }
        // Without a base it is a plain update of a missing row.
        let c = change(
            Action::Update,
            json!({"title": "late"}),
            hlc(50, 1),
            A,
            None,
        );
        assert_eq!(
            run(&c, &deleted_log(), None, Policy::default()).status,
            Status::NotFound
        );
        // A row that never existed is not found, not deleted.
        assert_eq!(
            run(
                &update(json!({"title": "x"}), hlc(50, 1), A, 0),
                &[],
                None,
                Policy::default()
            )
            .status,
            Status::NotFound
        );
    }

    #[test]
    fn without_delete_wins_a_newer_update_restores_the_row() {
        let policy = Policy {
            delete_wins: false,
            ..Policy::default()
        };
        let newer = update(json!({"title": "back"}), hlc(50, 1), A, 2);
        let d = run(&newer, &deleted_log(), None, policy);
        assert_eq!(
            d.write,
            Write::Restore(row(json!({"title": "back", "done": false, "n": 1})))
        );
        assert_eq!(d.conflict.unwrap().outcome, Outcome::Client);
        let older = update(json!({"title": "back"}), hlc(30, 1), A, 2);
        assert_eq!(
            run(&older, &deleted_log(), None, policy).status,
            Status::Deleted
        );
        // An update made after the client saw the delete is not concurrent with it.
        let seen = update(json!({"title": "back"}), hlc(50, 1), A, 3);
        assert_eq!(
            run(&seen, &deleted_log(), None, policy).status,
            Status::Deleted
        );
    }

    #[test]
    fn a_late_create_older_than_the_tombstone_does_not_resurrect() {
        let late = change(Action::Create, json!({"title": "a"}), hlc(5, 1), A, None);
        let d = run(&late, &deleted_log(), None, Policy::default());
        assert_eq!((d.status, d.write), (Status::Deleted, Write::Nothing));
        assert_eq!(d.conflict.unwrap().reason, Reason::Deleted);
        // A create newer than the delete is a deliberate re-creation.
        let again = change(Action::Create, json!({"title": "new"}), hlc(60, 1), A, None);
        let d = run(&again, &deleted_log(), None, Policy::default());
        assert_eq!(d.write, Write::Insert(row(json!({"title": "new"}))));
    }

    #[test]
    fn a_delete_of_a_row_never_seen_leaves_a_tombstone_for_a_late_create() {
        let delete = change(Action::Delete, json!({}), hlc(40, 1), A, Some(0));
        let d = run(&delete, &[], None, Policy::default());
        assert_eq!(d.write, Write::Tombstone);
        let log = vec![entry(1, Action::Delete, &[], Value::Null, hlc(40, 1), A)];
        let create = change(Action::Create, json!({"title": "a"}), hlc(30, 2), B, None);
        assert_eq!(
            run(&create, &log, None, Policy::default()).status,
            Status::Deleted
        );
    }

    #[test]
    fn the_tombstone_is_as_late_as_the_latest_delete() {
        let policy = Policy {
            delete_wins: false,
            ..Policy::default()
        };
        // A second, later delete of the deleted row is recorded...
        let again = change(Action::Delete, json!({}), hlc(60, 1), A, Some(2));
        assert_eq!(
            run(&again, &deleted_log(), None, policy).write,
            Write::Tombstone
        );
        let older = change(Action::Delete, json!({}), hlc(35, 1), A, Some(2));
        assert_eq!(
            run(&older, &deleted_log(), None, policy).write,
            Write::Nothing
        );
        // ...and an update between the two deletes no longer restores the row.
        let mut log = deleted_log();
        log.push(entry(4, Action::Delete, &[], Value::Null, hlc(60, 1), A));
        let between = update(json!({"title": "back"}), hlc(50, 2), B, 2);
        assert_eq!(run(&between, &log, None, policy).status, Status::Deleted);
        let after = update(json!({"title": "back"}), hlc(70, 2), B, 2);
        assert!(matches!(
            run(&after, &log, None, policy).write,
            Write::Restore(_)
        ));
    }

    #[test]
    fn a_delete_beats_concurrent_updates_by_default() {
        let delete = change(Action::Delete, json!({}), hlc(15, 1), A, Some(1));
        let d = run(&delete, &log(), Some(&current()), Policy::default());
        assert_eq!(d.write, Write::Delete);
        let c = d.conflict.unwrap();
        assert_eq!(
            (c.reason, c.outcome, c.strategy),
            (Reason::ConcurrentUpdate, Outcome::Deleted, Rule::DeleteWins)
        );
        assert_eq!(c.fields["title"].server, Some(json!("b")));
        // Last write wins instead: the newer update keeps the row.
        let policy = Policy {
            delete_wins: false,
            ..Policy::default()
        };
        let d = run(&delete, &log(), Some(&current()), policy);
        assert_eq!(d.write, Write::Nothing);
        assert_eq!(d.conflict.unwrap().outcome, Outcome::Server);
        let newer = change(Action::Delete, json!({}), hlc(25, 1), A, Some(1));
        assert_eq!(
            run(&newer, &log(), Some(&current()), policy).write,
            Write::Delete
        );
        // Nothing concurrent: a plain delete.
        let seen = change(Action::Delete, json!({}), hlc(25, 1), A, Some(2));
        let d = run(&seen, &log(), Some(&current()), Policy::default());
        assert_eq!((d.write, d.conflict), (Write::Delete, None));
    }

    #[test]
    fn a_create_meeting_an_existing_row_merges_with_its_whole_history() {
        let c = change(
            Action::Create,
            json!({"title": "z", "n": 9}),
            hlc(15, 1),
            A,
            None,
        );
        let d = run(&c, &log(), Some(&current()), Policy::default());
        // `title` changed at 20 > 15 and stays; `n` was last set at 10 < 15.
        assert_eq!(d.write, Write::Update(row(json!({"n": 9}))));
        assert_eq!(d.conflict.unwrap().outcome, Outcome::Merged);
    }
}
