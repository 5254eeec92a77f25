//! Read scopes: which rows of an entity a principal may read, and so receive by pull, by
//! the event stream, or write through the push API.
//!
//! A scoped entity names one **scope column**; a row belongs to the scope its value
//! names (as text: `42`, `acme`, a UUID). A principal may read the rows whose scope is
//! one of its **scope keys**: its user id ([`Scope::owner`]), its tenant
//! ([`Scope::tenant`]), or whatever the app's [`ScopeKeys`] answers ([`Scope::keyed`]:
//! memberships, shared projects). A rule over several columns is a generated column.
//!
//! The capture triggers record, with every change, the scope the row had before and has
//! after it (`scope_before`, `scope_after` in the log). A change is then judged by
//! comparing two strings with the principal's keys, looked up once per request or
//! stream — never a query per change: a row that enters a principal's scope reaches
//! it whole (a create), one that leaves it reaches it as a delete (a removal), and
//! changes of rows outside it never reach it at all, not even their ids.
//!
//! Once any entity has a scope, an entity without one is not readable through the
//! engine ([`Error::NotReadable`](crate::Error::NotReadable)); [`Scope::public`] opens
//! one to everybody.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::engine::Entities;
use crate::error::{Error, Result};
use crate::log::LogRow;
use crate::principal::Principal;

/// The error a [`ScopeKeys`] may fail with (the request answers 500; it is logged).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which rows of an entity a principal may read; given per entity with
/// [`SyncEngineBuilder::scope`](crate::SyncEngineBuilder::scope).
///
/// ```
/// use rhtmx_sync::{Principal, Scope};
///
/// // Rows whose `tenant_id` is the principal's tenant.
/// let by_tenant = Scope::tenant("tenant_id");
/// // Rows whose `project_id` is a project the principal is a member of.
/// let members = Scope::keyed("project_id", |who: Principal| async move {
///     // An app would query its membership table here.
///     Ok::<_, std::convert::Infallible>(who.user.into_iter().collect::<Vec<_>>())
/// });
/// # let _ = (by_tenant, members);
/// ```
#[derive(Clone)]
pub struct Scope {
    pub(crate) rule: Rule,
}

#[derive(Clone)]
pub(crate) enum Rule {
    /// Every row, to everybody.
    Public,
    /// Rows whose `column` is one of the principal's keys.
    Column { column: String, keys: Keys },
}

#[derive(Clone)]
pub(crate) enum Keys {
    User,
    Tenant,
    Custom(Arc<dyn ScopeKeys>),
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule {
            Rule::Public => f.write_str("Scope::public()"),
            Rule::Column { column, keys } => {
                let kind = match keys {
                    Keys::User => "owner",
                    Keys::Tenant => "tenant",
                    Keys::Custom(_) => "keyed",
                };
                write!(f, "Scope::{kind}({column:?})")
            }
        }
    }
}

impl Scope {
    /// Every row is readable by everybody, signed in or not.
    pub fn public() -> Scope {
        Scope { rule: Rule::Public }
    }

    /// Rows whose `column` holds the principal's user id ([`Principal::user`]);
    /// nothing for an anonymous request. A push that creates a row without `column`
    /// gets the user's id.
    pub fn owner(column: impl Into<String>) -> Scope {
        Scope::column(column, Keys::User)
    }

    /// Rows whose `column` holds the principal's tenant ([`Principal::tenant`]);
    /// nothing without one. A push that creates a row without `column` gets the tenant.
    pub fn tenant(column: impl Into<String>) -> Scope {
        Scope::column(column, Keys::Tenant)
    }

    /// Rows whose `column` holds one of the keys `keys` answers for the principal:
    /// any rule the app can state as "the scopes this principal may read" (a
    /// membership table, shared folders). Asked once per pull, push and event stream
    /// (and again at [`SyncEngine::access_changed`](crate::SyncEngine::access_changed)).
    pub fn keyed(column: impl Into<String>, keys: impl ScopeKeys) -> Scope {
        Scope::column(column, Keys::Custom(Arc::new(keys)))
    }

    fn column(column: impl Into<String>, keys: Keys) -> Scope {
        Scope {
            rule: Rule::Column {
                column: column.into(),
                keys,
            },
        }
    }

    /// The scope column, if the scope has one.
    pub(crate) fn scope_column(&self) -> Option<&str> {
        match &self.rule {
            Rule::Public => None,
            Rule::Column { column, .. } => Some(column),
        }
    }
}

/// The scope keys a principal may read, for [`Scope::keyed`]. Any
/// `Fn(Principal) -> impl Future<Output = Result<Vec<String>, E>>` is one.
pub trait ScopeKeys: Send + Sync + 'static {
    /// The values of the scope column whose rows `principal` may read (compared as
    /// text: an integer column's `42` is `"42"`). An error answers the request with 500.
    fn keys(&self, principal: Principal) -> BoxFuture<'static, Result<Vec<String>, BoxError>>;
}

impl<F, Fut, E> ScopeKeys for F
where
    F: Fn(Principal) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<String>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn keys(&self, principal: Principal) -> BoxFuture<'static, Result<Vec<String>, BoxError>> {
        let keys = self(principal);
        Box::pin(async move { keys.await.map_err(Into::into) })
    }
}

/// What one principal may read of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// Every row (a public entity, or an engine with no scopes at all).
    All,
    /// No row (an entity without a scope once others have one).
    Nothing,
    /// Rows whose scope is one of these keys.
    Keys(HashSet<String>),
}

impl Read {
    pub(crate) fn has(&self, scope: Option<&str>) -> bool {
        match self {
            Read::All => true,
            Read::Nothing => false,
            Read::Keys(keys) => scope.is_some_and(|s| keys.contains(s)),
        }
    }

    /// The keys as a JSON array, for SQL (`json_each`); `None` unless [`Read::Keys`].
    pub(crate) fn keys_json(&self) -> Option<String> {
        match self {
            Read::Keys(keys) => Some(serde_json::to_string(keys).expect("strings serialize")),
            _ => None,
        }
    }
}

/// How a change reaches a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Not at all.
    Hidden,
    /// As logged.
    AsIs,
    /// The row left the principal's scope: a delete.
    Removal,
    /// The row entered the principal's scope: the whole row, as a create.
    Entering,
}

impl Read {
    /// How a change with these scopes reaches this reader.
    pub(crate) fn view(&self, action: &str, before: Option<&str>, after: Option<&str>) -> View {
        if let Read::All = self {
            return View::AsIs;
        }
        match action {
            "create" if self.has(after) => View::AsIs,
            "delete" if self.has(before) => View::AsIs,
            "update" => match (self.has(before), self.has(after)) {
                (true, true) => View::AsIs,
                (true, false) => View::Removal,
                (false, true) => View::Entering,
                (false, false) => View::Hidden,
            },
            _ => View::Hidden,
        }
    }

    /// [`Read::view`] of a log row.
    pub(crate) fn view_row(&self, row: &LogRow) -> View {
        self.view(
            &row.action,
            row.scope_before.as_deref(),
            row.scope_after.as_deref(),
        )
    }

    /// Whether a write that takes a row from scope `before` to `after` (`None` where
    /// the row does not exist) stays within what this reader may read: a principal
    /// writes only rows it may read, and cannot move one out of its reach or into
    /// another's.
    pub(crate) fn may_write(
        &self,
        action: &str,
        before: Option<&str>,
        after: Option<&str>,
    ) -> bool {
        match action {
            "create" => self.has(after),
            "delete" => self.has(before),
            _ => self.has(before) && self.has(after),
        }
    }
}

/// What a principal may read of every entity, and its fingerprint.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    pub principal: Principal,
    reads: HashMap<Arc<str>, Read>,
    /// A short hash of every entity's [`Read`] (8 hex digits); `None` in an engine
    /// without scopes. Cursors carry it: a cursor made under other access gets a reset,
    /// so a client whose access shrank drops what it may no longer read.
    pub fingerprint: Option<String>,
}

impl Access {
    /// What `principal` may read of `entities` (`scoped`: whether the engine has any
    /// scope at all).
    pub(crate) async fn of(
        principal: Principal,
        entities: &Entities,
        scoped: bool,
        log_id: &str,
    ) -> Result<Access> {
        let mut reads = HashMap::new();
        for entity in entities.list() {
            let read = match (&entity.scope, scoped) {
                (_, false) => Read::All,
                (None, true) => Read::Nothing,
                (Some(scope), true) => match &scope.rule {
                    Rule::Public => Read::All,
                    Rule::Column { keys, .. } => Read::Keys(keys_of(keys, &principal).await?),
                },
            };
            reads.insert(entity.name.clone(), read);
        }
        let fingerprint = scoped.then(|| fingerprint(log_id, &reads));
        Ok(Access {
            principal,
            reads,
            fingerprint,
        })
    }

    /// What may be read of `entity` (an unknown one: nothing).
    pub(crate) fn read(&self, entity: &str) -> &Read {
        self.reads.get(entity).unwrap_or(&Read::Nothing)
    }

    /// The fingerprint as a cursor suffix (empty without scopes).
    pub(crate) fn suffix(&self) -> &str {
        self.fingerprint.as_deref().unwrap_or("")
    }
}

async fn keys_of(keys: &Keys, principal: &Principal) -> Result<HashSet<String>> {
    Ok(match keys {
        Keys::User => principal.user.iter().cloned().collect(),
        Keys::Tenant => principal.tenant.iter().cloned().collect(),
        Keys::Custom(keys) => keys
            .keys(principal.clone())
            .await
            .map_err(|e| Error::Scope(e.to_string()))?
            .into_iter()
            .collect(),
    })
}

/// Salted with the log's identity (never sent), so that a cursor seen in a URL or a log
/// cannot be matched against guessed teams elsewhere.
fn fingerprint(log_id: &str, reads: &HashMap<Arc<str>, Read>) -> String {
    let mut names: Vec<&Arc<str>> = reads.keys().collect();
    names.sort();
    let mut hash = Sha256::new();
    let mut part = |s: &str| {
        hash.update((s.len() as u64).to_be_bytes());
        hash.update(s.as_bytes());
    };
    part(log_id);
    for name in names {
        part(name);
        match &reads[name] {
            Read::All => part("all"),
            Read::Nothing => part("nothing"),
            Read::Keys(keys) => {
                let mut keys: Vec<&String> = keys.iter().collect();
                keys.sort();
                part(&format!("keys {}", keys.len()));
                keys.into_iter().for_each(|k| part(k));
            }
        }
    }
    hash.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Read {
        Read::Keys(k.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn a_change_reaches_a_reader_by_its_scopes() {
        let a = keys(&["a"]);
        assert_eq!(a.view("create", None, Some("a")), View::AsIs);
        assert_eq!(a.view("create", None, Some("b")), View::Hidden);
        assert_eq!(a.view("create", None, None), View::Hidden);
        assert_eq!(a.view("update", Some("a"), Some("a")), View::AsIs);
        assert_eq!(a.view("update", Some("a"), Some("b")), View::Removal);
        assert_eq!(a.view("update", Some("b"), Some("a")), View::Entering);
        assert_eq!(a.view("update", Some("b"), Some("b")), View::Hidden);
        assert_eq!(a.view("delete", Some("a"), None), View::AsIs);
        assert_eq!(a.view("delete", Some("b"), None), View::Hidden);
        assert_eq!(Read::Nothing.view("create", None, None), View::Hidden);
        assert_eq!(Read::All.view("update", Some("x"), Some("y")), View::AsIs);
    }

    #[test]
    fn a_write_stays_within_the_writers_scope() {
        let a = keys(&["a", "c"]);
        assert!(a.may_write("create", None, Some("a")));
        assert!(!a.may_write("create", None, Some("b")));
        assert!(!a.may_write("create", None, None));
        assert!(a.may_write("update", Some("a"), Some("c")));
        assert!(!a.may_write("update", Some("a"), Some("b")), "out of reach");
        assert!(
            !a.may_write("update", Some("b"), Some("a")),
            "taking another's"
        );
        assert!(!a.may_write("delete", Some("b"), None));
    }

    #[test]
    fn the_fingerprint_follows_what_may_be_read() {
        let of = |pairs: &[(&str, Read)]| {
            fingerprint(
                "log",
                &pairs
                    .iter()
                    .map(|(n, r)| (Arc::from(*n), r.clone()))
                    .collect(),
            )
        };
        let one = of(&[("docs", keys(&["a", "b"])), ("notes", Read::All)]);
        assert_eq!(
            one,
            of(&[("notes", Read::All), ("docs", keys(&["b", "a"]))])
        );
        assert_eq!(one.len(), 8);
        assert_ne!(one, of(&[("docs", keys(&["a"])), ("notes", Read::All)]));
        assert_ne!(
            one,
            of(&[("docs", keys(&["a", "b"])), ("notes", Read::Nothing)])
        );
        // Keys cannot run into each other.
        assert_ne!(
            of(&[("docs", keys(&["ab"]))]),
            of(&[("docs", keys(&["a", "b"]))])
        );
    }
}
