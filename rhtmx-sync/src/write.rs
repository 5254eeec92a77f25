//! Writes from the app's own handlers through the same merge as the push API.
//!
//! A form the browser client replays after being offline says, in headers, when its
//! user acted and which version of the data the form was filled in against. A handler
//! that opts in takes them with the [`SyncContext`] extractor and writes through
//! [`SyncEngine::write`]; the change is then merged field by field like a pushed one
//! and its conflicts are reported. Handlers that write with plain SQL keep working:
//! their writes are logged by the triggers and applied in arrival order (last arrival
//! wins), with an HLC taken from the time the database wrote them.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::apply::{self, Incoming};
use crate::conflict::{Conflict, Status};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::principal::Principal;
use crate::scope::Read;
use crate::syncable::Syncable;
use crate::wire::Action;
use crate::SyncEngine;

/// The header carrying the version the client had seen when its user acted (decimal).
///
/// Any version works as long as what the user saw reflects every change up to it: the
/// page's `data-rhtmx-version` can be [`SyncEngine::head`] **read before the rows it
/// renders** (or in the same read transaction). Read after them, a change committed in
/// between would count as seen and be overwritten without a conflict.
pub const BASE_VERSION_HEADER: &str = "x-rhtmx-base-version";
/// The header carrying the [`Hlc`] of the user's action.
pub const HLC_HEADER: &str = "x-rhtmx-hlc";
/// The header identifying the client (the same as the push API's).
pub const CLIENT_ID_HEADER: &str = crate::http::CLIENT_ID_HEADER;

/// What a request says about the write it carries, from its headers:
/// `X-Rhtmx-Base-Version`, `X-Rhtmx-Hlc` and `X-Rhtmx-Client-Id`, each optional.
///
/// As an axum extractor it rejects a malformed header with 422 (and an HLC further
/// ahead than the engine accepts is refused when writing). Without headers it is empty
/// and [`SyncEngine::write`] behaves like a plain write: last arrival wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncContext {
    /// The version of the entity the client had seen (`client_version` of the push
    /// API): the base of the three-way merge.
    pub base_version: Option<i64>,
    /// When the user acted; `None`: the server's clock, when the write is applied.
    pub hlc: Option<Hlc>,
    /// The client; its own earlier writes never conflict with its later ones. Behind
    /// the [idempotency layer](crate::SyncEngine::idempotency_layer) of an engine that
    /// knows who is asking ([`authenticate`](crate::SyncEngineBuilder::authenticate)),
    /// the id is bound to the signed-in user (prefixed with a hash of them), so that no
    /// request can make its writes count as another user's client.
    pub client_id: Option<String>,
    /// How many writes were made with this context (and its clones): the n-th write of
    /// a request is told apart from an identical earlier one (same HLC and fields), and
    /// a replayed request, whose new context counts again from 0, is recognised.
    writes: Sequence,
}

/// A counter shared by a context's clones; it takes no part in comparisons.
#[derive(Debug, Clone, Default)]
struct Sequence(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Sequence {
    fn next(&self) -> u32 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl PartialEq for Sequence {
    fn eq(&self, _: &Sequence) -> bool {
        true
    }
}

impl Eq for Sequence {}

impl SyncContext {
    /// An empty context: a plain last-arrival write stamped by the server's clock.
    pub fn new() -> SyncContext {
        SyncContext::default()
    }

    /// Reads the context from request headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<SyncContext> {
        let text = |name: &str| -> Result<Option<&str>> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::trim)
                        .map_err(|_| Error::invalid(format!("the `{name}` header must be ASCII")))
                })
                .transpose()
        };
        let base_version = match text(BASE_VERSION_HEADER)? {
            None | Some("") => None,
            Some(s) => Some(s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                Error::invalid(format!(
                    "the `{BASE_VERSION_HEADER}` header must be a version number, not `{s}`"
                ))
            })?),
        };
        let hlc = match text(HLC_HEADER)? {
            None | Some("") => None,
            Some(s) => Some(s.parse::<Hlc>()?),
        };
        let client_id = text(CLIENT_ID_HEADER)?
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        // 128 as sent, and the prefix that binds it to its principal.
        let max = 128 + crate::principal::BOUND_PREFIX;
        if client_id.as_ref().is_some_and(|c| c.len() > max) {
            return Err(Error::invalid("the client id must be 1 to 128 characters"));
        }
        crate::replication::refuse_author_claim(client_id.as_deref())?;
        Ok(SyncContext {
            base_version,
            hlc,
            client_id,
            writes: Sequence::default(),
        })
    }

    /// The same context with a base version.
    pub fn with_base_version(mut self, version: i64) -> SyncContext {
        self.base_version = Some(version);
        self
    }

    /// The same context with the HLC of the user's action.
    pub fn with_hlc(mut self, hlc: Hlc) -> SyncContext {
        self.hlc = Some(hlc);
        self
    }

    /// The same context with a client id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> SyncContext {
        self.client_id = Some(client_id.into());
        self
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SyncContext {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        SyncContext::from_headers(&parts.headers)
    }
}

/// What became of a write made with [`Writer`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WriteOutcome {
    /// Applied (possibly losing fields to a conflict), a duplicate, not found, or
    /// refused because the row was deleted.
    pub status: Status,
    /// The conflict the write met, if any; also sent to every client with the change.
    pub conflict: Option<Conflict>,
    /// The log's head after the write.
    pub version: i64,
    /// Set when the context's HLC was further ahead of the server's clock than the
    /// engine's tolerance: how far. The write was stamped with the server's clock.
    pub clamped: Option<std::time::Duration>,
}

impl WriteOutcome {
    /// Whether the change was applied now (possibly losing fields to a conflict). A
    /// replay of a change applied before is a [`duplicate`](Self::duplicate) instead.
    pub fn applied(&self) -> bool {
        self.status == Status::Applied
    }

    /// Whether this very change (same client, HLC, action and fields) was applied
    /// before, so this write did nothing.
    pub fn duplicate(&self) -> bool {
        self.status == Status::Duplicate
    }
}

/// Writes to one entity through the merge; see [`SyncEngine::write`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Writer<'a> {
    engine: &'a SyncEngine,
    entity: &'a str,
    context: &'a SyncContext,
    within: Option<&'a Principal>,
}

impl SyncEngine {
    /// Writes to the entity of `T` with the merge and conflict reporting of the push API,
    /// using the base version, HLC and client of `context` (usually extracted from the
    /// replayed request's headers).
    ///
    /// ```no_run
    /// use axum::extract::{Path, State};
    /// use axum::Json;
    /// use rhtmx_sync::{SyncContext, SyncEngine, Syncable};
    ///
    /// #[derive(Syncable)]
    /// #[sync(table = "todos")]
    /// struct Todo { id: String, title: String, completed: bool }
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Rename { title: String }
    ///
    /// // The app's state provides the engine (`FromRef`); `axum::Form` works the same.
    /// async fn rename(
    ///     State(engine): State<SyncEngine>,
    ///     sync: SyncContext,
    ///     Path(id): Path<String>,
    ///     Json(form): Json<Rename>,
    /// ) -> rhtmx_sync::Result<String> {
    ///     let done = engine
    ///         .write::<Todo>(&sync)
    ///         .update(&id, [("title", &form.title)])
    ///         .await?;
    ///     Ok(match done.conflict {
    ///         Some(c) => format!("saved; the title went to the {:?}", c.outcome),
    ///         None => "saved".to_owned(),
    ///     })
    /// }
    /// ```
    pub fn write<'a, T: Syncable>(&'a self, context: &'a SyncContext) -> Writer<'a> {
        self.write_to(T::TABLE, context)
    }

    /// [`write`](Self::write) for an entity registered by name.
    pub fn write_to<'a>(&'a self, entity: &'a str, context: &'a SyncContext) -> Writer<'a> {
        Writer {
            engine: self,
            entity,
            context,
            within: None,
        }
    }
}

impl<'a> Writer<'a> {
    /// Holds the write to what `principal` may read of the entity ([`Scope`](crate::Scope)),
    /// as the push API does: a row outside it, or a change that would move a row out of
    /// it or into another scope, fails with [`Error::OutOfScope`] (403) and writes
    /// nothing — atomically with the write, so a row cannot change scope in between.
    /// Without it the write is the app's own and is not checked.
    pub fn within(mut self, principal: &'a Principal) -> Self {
        self.within = Some(principal);
        self
    }

    /// Creates the row (every required field must be given). A replay (the same client,
    /// HLC and fields) is recognised and does nothing; a create older than the row's
    /// tombstone is refused.
    pub async fn create<I, K, V>(self, id: impl serde::Serialize, fields: I) -> Result<WriteOutcome>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: serde::Serialize,
    {
        self.run(Action::Create, id, Some(to_map(fields)?)).await
    }

    /// Sets the given fields — only the ones the user changed, since every field given
    /// counts as changed by the client and can win a conflict.
    pub async fn update<I, K, V>(self, id: impl serde::Serialize, fields: I) -> Result<WriteOutcome>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: serde::Serialize,
    {
        self.run(Action::Update, id, Some(to_map(fields)?)).await
    }

    /// Deletes the row; idempotent. A delete beats concurrent updates unless the entity
    /// says otherwise (`delete_wins`).
    pub async fn delete(self, id: impl serde::Serialize) -> Result<WriteOutcome> {
        self.run(Action::Delete, id, None).await
    }

    async fn run(
        self,
        action: Action,
        id: impl serde::Serialize,
        data: Option<serde_json::Map<String, Value>>,
    ) -> Result<WriteOutcome> {
        let inner = &self.engine.inner;
        let entity = &*self.engine.entity(self.entity)?;
        let id = serde_json::to_value(id).map_err(|e| Error::invalid(e.to_string()))?;
        let incoming = Incoming {
            id: &id,
            action,
            data: data.as_ref(),
            hlc: self.context.hlc,
            base: self.context.base_version,
        };
        let mut change = apply::validate(entity, incoming)?;
        change.occurrence = self.context.writes.next();
        let client = self.context.client_id.as_deref();
        // The app's own write is its code's to check, unless it asks for a principal's.
        let read = match self.within {
            Some(principal) => self
                .engine
                .access(principal.clone())
                .await?
                .read(&entity.name)
                .clone(),
            None => Read::All,
        };
        let (mut done, version) =
            apply::transaction(inner, entity, std::slice::from_ref(&change), client, &read)
                .await
                .map_err(|failed| failed.error)?;
        let done = done.pop().expect("one change, one outcome");
        Ok(WriteOutcome {
            status: done.status,
            conflict: done.conflict,
            version,
            clamped: done.clamped,
        })
    }
}

fn to_map<I, K, V>(fields: I) -> Result<serde_json::Map<String, Value>>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: serde::Serialize,
{
    fields
        .into_iter()
        .map(|(k, v)| {
            let v = serde_json::to_value(v).map_err(|e| Error::invalid(e.to_string()))?;
            Ok((k.into(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_comes_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            SyncContext::from_headers(&headers).unwrap(),
            SyncContext::new()
        );
        headers.insert(BASE_VERSION_HEADER, "42".parse().unwrap());
        headers.insert(
            HLC_HEADER,
            "001732345678901-00000-9f86d081884c7d65".parse().unwrap(),
        );
        headers.insert(CLIENT_ID_HEADER, "tab-1".parse().unwrap());
        let ctx = SyncContext::from_headers(&headers).unwrap();
        assert_eq!(
            ctx,
            SyncContext::new()
                .with_base_version(42)
                .with_hlc(Hlc::new(1_732_345_678_901, 0, 0x9f86_d081_884c_7d65))
                .with_client_id("tab-1")
        );
        for (name, bad) in [
            (BASE_VERSION_HEADER, "-1"),
            (BASE_VERSION_HEADER, "x"),
            (HLC_HEADER, "soon"),
        ] {
            let mut h = headers.clone();
            h.insert(name, bad.parse().unwrap());
            let err = SyncContext::from_headers(&h).unwrap_err();
            assert_eq!(
                err.status(),
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "{name}: {bad}"
            );
        }
    }
}
