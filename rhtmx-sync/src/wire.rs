//! The JSON wire format shared by pull, push and the event stream.
//!
//! One encoding of a change serves all three, so a client applies a pulled change and a
//! streamed one with the same code. The encoding is deterministic (fields in a fixed
//! order, row data exactly as SQLite's `json_object` wrote it).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::entity::Entity;
use crate::log::LogRow;
use crate::scope::View;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Action {
    /// The row was inserted (or replaced as a whole).
    Create,
    /// Some fields of the row changed.
    Update,
    /// The row was deleted.
    Delete,
}

impl Action {
    pub(crate) fn parse(s: &str) -> Option<Action> {
        match s {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// A change as pulled and streamed: `{"entity", "id", "action", "data", "version", ...}`.
#[derive(Debug, Serialize)]
pub(crate) struct WireChange<'a> {
    /// Present on the event stream, where changes of several entities interleave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<&'a str>,
    pub id: Value,
    pub action: Action,
    /// The row after the change; absent for deletes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    pub version: i64,
    /// The fields an update changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<&'a RawValue>,
    /// The client that pushed the change, when it came through the push API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    /// When the change's user acted (for the app's own SQL writes: when it was written),
    /// or, where that was before the writes it overwrote, one millisecond after them
    /// (causal stamping). Clients observe it so that their next HLC is later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hlc: Option<&'a str>,
    /// When its user acted, where `hlc` was moved after the writes it overwrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_hlc: Option<&'a str>,
    /// The conflict this change resolved, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<&'a RawValue>,
}

/// Renders a log row as a reader with this [`View`] sees it: as logged, as the delete
/// of a row that left its scope (the key and version only), or as the create of the
/// whole row that entered it. `View::Hidden` rows are never rendered; as logged if asked.
pub(crate) fn encode_as(entity: &Entity, row: &LogRow, with_entity: bool, view: View) -> String {
    let action = match view {
        View::Hidden | View::AsIs => return encode(entity, row, with_entity),
        View::Removal => Action::Delete,
        View::Entering => Action::Create,
    };
    let data = match view {
        View::Entering => row
            .data
            .as_deref()
            .and_then(|s| RawValue::from_string(s.to_owned()).ok()),
        _ => None,
    };
    let change = WireChange {
        entity: with_entity.then_some(row.entity.as_str()),
        id: entity.wire_id(&row.entity_id),
        action,
        data: data.as_deref(),
        version: row.version,
        changed: None,
        // Who wrote it, and any conflict, belong to a scope the reader did not share.
        client_id: None,
        hlc: row.hlc.as_deref(),
        origin_hlc: None,
        conflict: None,
    };
    serde_json::to_string(&change).expect("a change always serializes")
}

/// Renders a log row; `with_entity` adds the entity name (event stream).
pub(crate) fn encode(entity: &Entity, row: &LogRow, with_entity: bool) -> String {
    let raw = |s: &Option<String>| -> Option<Box<RawValue>> {
        s.as_deref()
            .and_then(|s| RawValue::from_string(s.to_owned()).ok())
    };
    let data = raw(&row.data);
    let changed = raw(&row.changed);
    let conflict = raw(&row.conflict);
    let change = WireChange {
        entity: with_entity.then_some(row.entity.as_str()),
        id: entity.wire_id(&row.entity_id),
        action: Action::parse(&row.action).unwrap_or(Action::Update),
        data: data.as_deref(),
        version: row.version,
        changed: changed.as_deref(),
        client_id: row.client_id.as_deref(),
        hlc: row.hlc.as_deref(),
        origin_hlc: row.origin_hlc.as_deref(),
        conflict: conflict.as_deref(),
    };
    serde_json::to_string(&change).expect("a change always serializes")
}

/// The body of `POST /api/sync/{entity}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushRequest {
    pub changes: Vec<PushChange>,
    /// Identifies the pushing client; the `X-Rhtmx-Client-Id` header does the same.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// One change a client pushes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushChange {
    pub id: Value,
    pub action: Action,
    #[serde(default)]
    pub data: Option<serde_json::Map<String, Value>>,
    /// The version of the row the client last saw: the base of the three-way merge.
    /// Absent: a plain last-arrival write.
    #[serde(default)]
    pub client_version: Option<i64>,
    /// When the user acted ([`Hlc`](crate::Hlc) string); absent: the server's clock.
    #[serde(default)]
    pub hlc: Option<String>,
}

/// The answer to a push.
#[derive(Debug, Serialize)]
pub(crate) struct PushResponse {
    /// The log's head after the push.
    pub version: i64,
    /// Changes that were not applied as sent, and why.
    pub conflicts: Vec<PushConflict>,
    /// The ids of the changes applied (merged, possibly losing some fields).
    pub applied: Vec<Value>,
    /// The ids of changes applied before (the same client, HLC and fields): replays
    /// that did nothing.
    pub duplicates: Vec<Value>,
    /// The ids of changes whose HLC was too far ahead of the server's clock: they were
    /// applied, stamped with the server's clock (check the device's clock).
    pub clamped: Vec<Value>,
}

/// A change the server did not apply as sent.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum PushConflict {
    /// An update of a row that does not exist: `{"id", "action", "reason": "not_found"}`.
    NotFound {
        id: Value,
        action: Action,
        reason: &'static str,
    },
    /// A resolved conflict.
    Resolved(Box<crate::conflict::Conflict>),
}
