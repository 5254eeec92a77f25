//! [`Conflict`]: how a resolved conflict is reported, in the push response, in the
//! change log and on the event stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hlc::Hlc;
use crate::wire::Action;

/// Why two writes conflicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The same field was changed by the client and, since its base version, on the
    /// server; or a delete met such changes.
    ConcurrentUpdate,
    /// The row was deleted: an update or create met its tombstone.
    Deleted,
}

/// The rule that decided a conflict: the entity's
/// [`SyncStrategy`](crate::SyncStrategy), or a delete beating concurrent updates. On the
/// wire, snake case (`"last_write_wins"`, `"delete_wins"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rule {
    /// [`SyncStrategy::LastWriteWins`](crate::SyncStrategy::LastWriteWins).
    LastWriteWins,
    /// [`SyncStrategy::ClientWins`](crate::SyncStrategy::ClientWins).
    ClientWins,
    /// [`SyncStrategy::ServerWins`](crate::SyncStrategy::ServerWins).
    ServerWins,
    /// [`SyncStrategy::Custom`](crate::SyncStrategy::Custom): the entity's resolver.
    Custom,
    /// The entity's `delete_wins`: a delete beats concurrent updates.
    DeleteWins,
}

impl From<crate::SyncStrategy> for Rule {
    fn from(strategy: crate::SyncStrategy) -> Rule {
        use crate::SyncStrategy as S;
        match strategy {
            S::LastWriteWins => Rule::LastWriteWins,
            S::ClientWins => Rule::ClientWins,
            S::ServerWins => Rule::ServerWins,
            S::Custom => Rule::Custom,
        }
    }
}

/// Who won.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The client's value (or write) was applied.
    Client,
    /// The server's value (or row) was kept.
    Server,
    /// A custom resolver produced a third value, or fields went both ways.
    Merged,
    /// The row is deleted: a delete won, or the write met a tombstone.
    Deleted,
}

/// One field of a [`Conflict`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FieldReport {
    /// The value the client sent (absent for a delete).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub client: Option<Value>,
    /// The value on the server when the change arrived (absent when the row was gone).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub server: Option<Value>,
    /// The value the field has now (absent when the row is deleted).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub resolved: Option<Value>,
    /// Who won this field.
    pub outcome: Outcome,
    /// The latest server change of this field the client had not seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_hlc: Option<Hlc>,
}

/// A conflict the server resolved: reported in the push response's `conflicts`, to the
/// app by [`WriteOutcome`](crate::WriteOutcome), and to every client as the `conflict`
/// member of the change that carries the resolution on the event stream and in pulls.
///
/// ```json
/// {"entity": "todos", "id": "r1", "action": "update",
///  "reason": "concurrent_update", "outcome": "server", "strategy": "last_write_wins",
///  "fields": {"title": {"client": "milk", "server": "oat milk", "resolved": "oat milk",
///                       "outcome": "server", "server_hlc": "001732345678950-00000-…"}},
///  "client_hlc": "001732345678901-00000-…", "server_hlc": "001732345678950-00000-…",
///  "client_version": 40, "version": 42, "client_id": "tab-1"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Conflict {
    /// The entity (table) name.
    pub entity: String,
    /// The row's id as it travels on the wire.
    pub id: Value,
    /// What the client did.
    pub action: Action,
    /// Why it conflicted.
    pub reason: Reason,
    /// Who won overall: every field the same way, or [`Outcome::Merged`].
    pub outcome: Outcome,
    /// The rule that decided: the entity's strategy, or `delete_wins`.
    pub strategy: Rule,
    /// The fields involved, by name.
    pub fields: BTreeMap<String, FieldReport>,
    /// When the client's user acted.
    pub client_hlc: Hlc,
    /// The latest server change the client's write met (or the tombstone's HLC).
    pub server_hlc: Hlc,
    /// The version the client's change was based on, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<i64>,
    /// The log version of the change that carries this resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The client that pushed the change, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A present JSON value, `null` included, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_values_survive_a_round_trip() {
        let report = FieldReport {
            client: Some(Value::Null),
            server: Some(json!("x")),
            resolved: None,
            outcome: Outcome::Server,
            server_hlc: None,
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(text, r#"{"client":null,"server":"x","outcome":"server"}"#);
        assert_eq!(serde_json::from_str::<FieldReport>(&text).unwrap(), report);
    }
}
