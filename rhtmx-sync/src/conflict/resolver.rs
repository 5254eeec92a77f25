//! [`ConflictResolver`]: the app's own rule for a field changed on both sides.

use std::sync::Arc;

use serde_json::Value;

use crate::hlc::Hlc;

/// Decides the value of a field that a client and the server both changed since the
/// client's base version, for entities with [`SyncStrategy::Custom`](crate::SyncStrategy).
///
/// Register one per entity with
/// [`SyncEngineBuilder::resolver`](crate::SyncEngineBuilder::resolver). It is called
/// inside the write transaction, once per conflicting field, so it must be quick and
/// must not touch the database. Any `Fn(&FieldConflict) -> Value` is a resolver.
///
/// The returned value is checked against the column like a client's (type,
/// nullability); a value that does not fit fails the write with
/// [`Error::Resolver`](crate::Error::Resolver). Returning the server's or the client's
/// value reports the conflict as won by that side; anything else as `merged`.
///
/// ```
/// use rhtmx_sync::conflict::FieldConflict;
/// use serde_json::{json, Value};
///
/// /// Counters add up: both sides' increments since the base are kept.
/// fn sum(c: &FieldConflict<'_>) -> Value {
///     let n = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
///     let base = n(c.base);
///     json!(n(Some(c.server)) + n(Some(c.client)) - base)
/// }
///
/// let (server, client, base) = (json!(7), json!(5), json!(3));
/// assert_eq!(sum(&FieldConflict::new("count", &server, &client).with_base(&base)), json!(9));
/// ```
pub trait ConflictResolver: Send + Sync + 'static {
    /// The value the field gets.
    fn resolve(&self, conflict: &FieldConflict<'_>) -> Value;
}

impl<F> ConflictResolver for F
where
    F: Fn(&FieldConflict<'_>) -> Value + Send + Sync + 'static,
{
    fn resolve(&self, conflict: &FieldConflict<'_>) -> Value {
        self(conflict)
    }
}

/// One field changed both by a client and on the server since the client's base.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FieldConflict<'a> {
    /// The entity (table) name.
    pub entity: &'a str,
    /// The row's id as it travels on the wire.
    pub id: &'a Value,
    /// The column.
    pub field: &'a str,
    /// The value when the client last saw the row (its `client_version`), if the log
    /// still has it. Changes the client made itself after that version are not in it.
    pub base: Option<&'a Value>,
    /// The value on the server now.
    pub server: &'a Value,
    /// The value the client sent.
    pub client: &'a Value,
    /// The latest server change of this field the client had not seen.
    pub server_hlc: Hlc,
    /// When the client's user acted.
    pub client_hlc: Hlc,
}

static NULL: Value = Value::Null;

impl<'a> FieldConflict<'a> {
    /// A conflict on `field` between two values, with no base, an empty entity name, a
    /// null id and zero clocks: for testing a resolver.
    pub fn new(field: &'a str, server: &'a Value, client: &'a Value) -> Self {
        FieldConflict {
            entity: "",
            id: &NULL,
            field,
            base: None,
            server,
            client,
            server_hlc: Hlc::new(0, 0, 0),
            client_hlc: Hlc::new(0, 0, 0),
        }
    }

    /// The same conflict with a base value.
    pub fn with_base(mut self, base: &'a Value) -> Self {
        self.base = Some(base);
        self
    }
}

/// A registered resolver, shared by the engine's entities.
#[derive(Clone)]
pub(crate) struct SharedResolver(pub Arc<dyn ConflictResolver>);

impl std::fmt::Debug for SharedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConflictResolver")
    }
}
