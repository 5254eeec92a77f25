//! What the push API may write: nothing, unless the app makes an entity writable
//! ([`SyncEngineBuilder::writable`](crate::SyncEngineBuilder::writable)), and then only
//! changes the app's own validation accepts
//! ([`SyncEngineBuilder::validate`](crate::SyncEngineBuilder::validate)), so the push API
//! is never a way around the rules the app's handlers enforce.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::wire::Action;

/// One change a client pushed, as the app's validation sees it: after the engine checked
/// its shape against the table (known columns, types, a key), before anything is written.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PushedChange<'a> {
    /// The entity (table) it writes.
    pub entity: &'a str,
    /// The row's key, as sent (a string or a number).
    pub id: &'a Value,
    /// Create, update or delete.
    pub action: Action,
    /// The fields sent, by column name (`None` for a delete); an update carries only the
    /// fields it changes.
    pub data: Option<&'a Map<String, Value>>,
}

/// The app's check of a pushed change. `Err(message)` refuses the whole push with 422
/// and `changes[i]: message`; nothing is written. Any
/// `Fn(&PushedChange<'_>) -> Result<(), String>` is one.
pub trait ValidatePush: Send + Sync + 'static {
    /// Accepts the change, or says why not (in words for the user: it reaches the client
    /// as the answer's `error`).
    fn validate(&self, change: &PushedChange<'_>) -> Result<(), String>;
}

impl<F> ValidatePush for F
where
    F: Fn(&PushedChange<'_>) -> Result<(), String> + Send + Sync + 'static,
{
    fn validate(&self, change: &PushedChange<'_>) -> Result<(), String> {
        self(change)
    }
}

/// Whether, and how, the push API may write an entity.
#[derive(Clone, Default)]
pub(crate) enum Push {
    /// Not through the push API (the default).
    #[default]
    Refused,
    /// Any change that fits the table.
    Allowed,
    /// Changes the app's validation accepts.
    Validated(Arc<dyn ValidatePush>),
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Push::Refused => "Refused",
            Push::Allowed => "Allowed",
            Push::Validated(_) => "Validated",
        })
    }
}
