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

/// The header that makes a 403 final: `X-Rhtmx-Forbidden: 1`.
///
/// A 403 alone may mean "your CSRF token or session went stale": the browser client then
/// keeps a queued write and pauses until its user signs in again. With this header it
/// means "this user may not do this" — a row of another tenant, a team the user has
/// left — and the client moves the write to its dead letters (`rhtmx:rejected`) instead
/// of waiting for a sign-in that changes nothing. The engine's own refusals carry it;
/// the app's handlers send it with [`Forbidden`].
pub const FORBIDDEN_HEADER: &str = "x-rhtmx-forbidden";

/// A final 403 from the app's own handler: the user may not do this, whoever signs in
/// again (see [`FORBIDDEN_HEADER`]). The body is the message, as plain text.
///
/// ```
/// use axum::response::IntoResponse;
/// let response = rhtmx_sync::Forbidden("you are not in this team").into_response();
/// assert_eq!(response.status(), 403);
/// assert_eq!(response.headers()[rhtmx_sync::FORBIDDEN_HEADER], "1");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Forbidden(pub &'static str);

impl axum::response::IntoResponse for Forbidden {
    fn into_response(self) -> axum::response::Response {
        (
            axum::http::StatusCode::FORBIDDEN,
            [(FORBIDDEN_HEADER, "1")],
            self.0,
        )
            .into_response()
    }
}
