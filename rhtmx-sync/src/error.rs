//! The crate's errors: [`Error`], what a request (or a write) can meet and how it
//! answers over HTTP, and [`BuildError`], why an engine could not be built — a
//! configuration or schema mistake, never an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rhtmx-sync.
///
/// Over HTTP each variant answers with its status and a short JSON body
/// `{"error": "..."}`; database and configuration details are logged, never sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request body is not valid JSON (400).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A query parameter is missing or malformed (400).
    #[error("invalid query: {0}")]
    BadQuery(String),
    /// The entity named in the request is not registered with the engine (404).
    #[error("unknown entity `{}`", quote(.0))]
    UnknownEntity(String),
    /// The JSON is well-formed but does not describe valid changes: unknown field,
    /// wrong type, missing id (422).
    #[error("{0}")]
    Invalid(String),
    /// A push carries more changes than the engine takes at once (413): it would hold
    /// the write lock too long. Send them in several pushes.
    #[error(
        "a push carries at most {limit} changes, this one {sent}: send the rest in another push"
    )]
    TooManyChanges {
        /// The configured limit ([`SyncEngineBuilder::max_push_changes`](crate::SyncEngineBuilder::max_push_changes)).
        limit: usize,
        /// How many the push carried.
        sent: usize,
    },
    /// The push body is not `application/json` (415). Only JSON is applied, so a
    /// cross-site form (`enctype="text/plain"`) or a `no-cors` fetch cannot write.
    #[error("the body must be `application/json`")]
    UnsupportedMediaType,
    /// The app did not make this entity writable through the push API, or the principal
    /// has no scope of it it may write in (anonymous, no tenant) (403); nothing is
    /// written. See [`SyncEngineBuilder::writable`](crate::SyncEngineBuilder::writable).
    #[error("`{}` is not writable through the push API", quote(.0))]
    NotWritable(String),
    /// An unsafe request from another site or origin, as the browser tells it
    /// (`Sec-Fetch-Site`, `Origin`), that the app did not allow (403): nothing is
    /// written. See [`SyncEngineBuilder::allowed_origins`](crate::SyncEngineBuilder::allowed_origins).
    #[error("writes from another site are refused")]
    CrossSite,
    /// More event streams or pulls are open than the engine's budget allows (429 with
    /// `Retry-After`): the server keeps descriptors and memory for the app's own pages.
    /// See [`SyncEngineBuilder::max_event_streams`](crate::SyncEngineBuilder::max_event_streams)
    /// and [`max_concurrent_pulls`](crate::SyncEngineBuilder::max_concurrent_pulls).
    #[error("too many {what} are open: try again in {retry_after} s")]
    Busy {
        /// "event streams" or "pulls".
        what: &'static str,
        /// Seconds to wait, sent as `Retry-After`.
        retry_after: u64,
    },
    /// A row the write needs is held by another transaction beyond the wait the engine
    /// allows, or the database broke a deadlock or a serialization conflict by failing
    /// this write (503 with `Retry-After`; nothing was written). A retry succeeds once
    /// the other transaction ends.
    #[error(
        "the rows this write needs are busy in another transaction: try again in {retry_after} s"
    )]
    Contended {
        /// Seconds to wait, sent as `Retry-After`.
        retry_after: u64,
    },
    /// The push body did not arrive within the body timeout (408; the connection is
    /// closed). See [`SyncEngineBuilder::body_timeout`](crate::SyncEngineBuilder::body_timeout).
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request body is larger than the configured limit (413).
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The engine is shutting down ([`SyncEngine::shutdown`](crate::SyncEngine::shutdown))
    /// and opens no new event stream (503); the client reconnects to another instance
    /// or after the restart.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A [`ConflictResolver`](crate::ConflictResolver) returned a value its column
    /// cannot hold (500; the write is rolled back).
    #[error("conflict resolver: {0}")]
    Resolver(String),
    /// A row holds a value the merge cannot read as JSON (a number beyond `f64`,
    /// nesting deeper than 128): the change is refused rather than merged against an
    /// empty row, which would lose its fields (422, so a client reports the write as
    /// rejected instead of retrying it forever; nothing is written). Write such rows with
    /// plain SQL.
    #[error("the stored row {0} holds a value the merge cannot read; it was not changed")]
    UnreadableRow(String),
    /// The entity is not readable by this request's principal (403): the engine has
    /// scopes and this entity has none. See [`Scope`](crate::Scope).
    #[error("`{}` is not readable", quote(.0))]
    NotReadable(String),
    /// A pushed change would write a row outside the principal's scope: a row it may
    /// not read, or one moved out of its reach or into another's (403; nothing is
    /// written). See [`Scope`](crate::Scope).
    #[error("changes[{0}] writes a row outside what you may write")]
    OutOfScope(usize),
    /// The app's [`ScopeKeys`](crate::ScopeKeys) failed (500; logged, not sent).
    #[error("scope keys: {0}")]
    Scope(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MalformedJson(_) | Error::BadQuery(_) => StatusCode::BAD_REQUEST,
            Error::UnknownEntity(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::PayloadTooLarge { .. } | Error::TooManyChanges { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::CrossSite
            | Error::NotWritable(_)
            | Error::NotReadable(_)
            | Error::OutOfScope(_) => StatusCode::FORBIDDEN,
            Error::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::ShuttingDown | Error::Contended { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Resolver(_) | Error::Scope(_) | Error::Database(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::UnreadableRow(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// A database error that a retry would not meet again (a lock wait cut short, a
    /// deadlock or serialization failure the database resolved by failing this
    /// transaction) becomes [`Error::Contended`].
    pub(crate) fn contended(self) -> Self {
        if let Error::Database(sqlx::Error::Database(db)) = &self {
            if matches!(db.code().as_deref(), Some("55P03" | "40P01" | "40001")) {
                return Error::Contended { retry_after: 1 };
            }
        }
        self
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Why [`SyncEngineBuilder::build`](crate::SyncEngineBuilder::build) (or
/// [`SyncEngine::new`](crate::SyncEngine::new)) failed: the registration does not fit
/// the schema, or the database failed. Each names the table (and column) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A registered table does not exist.
    #[error("table `{table}` does not exist; create it before building the SyncEngine")]
    NoSuchTable {
        /// The table.
        table: String,
    },
    /// On PostgreSQL, a registered name names a table only with its schema
    /// (`other.todos`, or a table whose schema is not on the pool's `search_path`): the
    /// engine finds tables by their name alone, as the app's own queries do.
    #[error(
        "table `{table}` is not on the search_path of the pool's connections: register it \
         by its name alone and put its schema on the search_path"
    )]
    OutsideSearchPath {
        /// The name as registered.
        table: String,
    },
    /// A registered table has no primary key, or one of several columns.
    #[error("table `{table}` needs a single-column PRIMARY KEY to be synced")]
    NoSingleColumnKey {
        /// The table.
        table: String,
    },
    /// The key compares texts other than byte for byte (SQLite: a collation other than
    /// `BINARY`; PostgreSQL: a nondeterministic collation, or the `citext` type): keys
    /// it treats as equal would be synced as different rows.
    #[error(
        "the primary key of `{table}` uses COLLATE {collation}: keys it treats as equal would \
         be synced as different rows; give the key a collation that compares byte for byte \
         (SQLite's default BINARY, or any deterministic collation on PostgreSQL)"
    )]
    KeyCollation {
        /// The table.
        table: String,
        /// The key's collation, as declared.
        collation: String,
    },
    /// The model's `id` is not the table's primary key.
    #[error("the id of `{table}` is `{id}` but its primary key is `{key}`")]
    WrongKey {
        /// The table.
        table: String,
        /// The id the model names.
        id: String,
        /// The table's primary key.
        key: String,
    },
    /// The key column is not among the synced columns.
    #[error("the id column `{id}` of `{table}` must be synced")]
    KeyNotSynced {
        /// The table.
        table: String,
        /// The key column.
        id: String,
    },
    /// A synced column is not in the table.
    #[error("column `{column}` is not in table `{table}`")]
    NoSuchColumn {
        /// The table.
        table: String,
        /// The column the model names.
        column: String,
    },
    /// An entity is named like a route of the engine (`events`, `client.js`, `sw.js`).
    #[error("an entity cannot be named `{table}`: the route is taken by the engine")]
    ReservedName {
        /// The table.
        table: String,
    },
    /// The same table is registered twice.
    #[error("entity `{table}` is registered twice")]
    Duplicate {
        /// The table.
        table: String,
    },
    /// Settings (conflicts, push permission) name an entity that is not registered.
    #[error("settings were given for `{table}`, which is not registered")]
    NotRegistered {
        /// The name given.
        table: String,
    },
    /// An entity whose model says `#[sync(offline_writes = false)]` was made writable
    /// through the push API ([`writable`](crate::SyncEngineBuilder::writable),
    /// [`validate`](crate::SyncEngineBuilder::validate)).
    #[error(
        "`{table}` takes no offline writes (`offline_writes = false`): it cannot be made writable"
    )]
    NotWritable {
        /// The table.
        table: String,
    },
    /// A scope's column is not a synced column of the table, or is its key.
    #[error(
        "the scope column `{column}` of `{table}` must be a synced column of the table, \
         other than its key"
    )]
    ScopeColumn {
        /// The table.
        table: String,
        /// The column the scope names.
        column: String,
    },
    /// A scope that reads the principal was given, but not the extractor that tells
    /// the engine who is asking ([`authenticate`](crate::SyncEngineBuilder::authenticate)):
    /// every request would be anonymous and read nothing.
    #[error(
        "`{table}` has a scope by principal, but the engine cannot tell who is asking: \
         call SyncEngineBuilder::authenticate"
    )]
    NoAuthenticator {
        /// The table.
        table: String,
    },
    /// [`SyncStrategy::Custom`](crate::SyncStrategy::Custom) without a resolver.
    #[error(
        "`{table}` uses SyncStrategy::Custom but has no resolver; register one with \
         SyncEngineBuilder::resolver"
    )]
    NoResolver {
        /// The table.
        table: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Another step of the engine failed while it was being built.
    #[error("{0}")]
    Engine(Box<Error>),
}

impl From<Error> for BuildError {
    fn from(error: Error) -> BuildError {
        match error {
            Error::Database(e) => BuildError::Database(e),
            other => BuildError::Engine(Box::new(other)),
        }
    }
}

/// The longest error message sent, in bytes.
const MAX_MESSAGE: usize = 240;

/// The longest prefix of client input quoted in an error message, in characters.
const MAX_QUOTE: usize = 40;

/// Client input as an error message quotes it: at most a short prefix, marked when cut.
pub(crate) fn quote(input: &str) -> String {
    let mut chars = input.chars();
    let mut shown: String = chars.by_ref().take(MAX_QUOTE).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        // The whole message, for the operator view's recent errors; never sent.
        let failure = crate::operator::Failure(self.to_string());
        let message = if let Error::ShuttingDown | Error::Contended { .. } = self {
            self.to_string()
        } else if status.is_server_error() {
            // Internals (SQL, file paths) stay in the server log.
            tracing::error!(error = %self, "sync request failed");
            "internal server error".to_owned()
        } else {
            // Messages quote client input through `quote`; this is the backstop for
            // any that do not (serde's, say), so a hostile input is never echoed whole.
            let mut message = self.to_string();
            if message.len() > MAX_MESSAGE {
                let cut = (0..=MAX_MESSAGE)
                    .rev()
                    .find(|&i| message.is_char_boundary(i))
                    .unwrap_or(0);
                message.truncate(cut);
                message.push('…');
            }
            message
        };
        let mut response =
            (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        response.extensions_mut().insert(failure);
        if let Error::Busy { retry_after, .. } | Error::Contended { retry_after } = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after.into());
        }
        if matches!(
            self,
            Error::NotWritable(_) | Error::NotReadable(_) | Error::OutOfScope(_) | Error::CrossSite
        ) {
            // Final: no new sign-in or CSRF token changes it (see `Forbidden`).
            response.headers_mut().insert(
                crate::permission::FORBIDDEN_HEADER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let Error::BodyTimeout = self {
            // The rest of the body may never come: do not wait for it on this connection.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
