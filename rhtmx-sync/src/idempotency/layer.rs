//! [`IdempotencyLayer`]: how the layer is obtained from the engine and configured.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use tower_layer::Layer;

use super::budget::{Budget, IdempotencyUsage};
use super::finality;
use super::service::Idempotency;
use super::store::Store;
use crate::principal::Authenticate;
use crate::SyncEngine;

/// The tunables, shared by every service the layer wraps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Config {
    pub retention: Duration,
    pub lease: Duration,
    pub body_limit: usize,
    pub body_timeout: Duration,
    pub replay_body_limit: usize,
    pub budget: Budget,
    /// Recognises a login page's path (a redirect there is not a final answer).
    pub login_page: fn(&str) -> bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retention: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(60),
            body_limit: 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            replay_body_limit: 64 * 1024,
            budget: Budget {
                max_keys: 100_000,
                max_bytes: 64 * 1024 * 1024,
            },
            login_page: finality::is_login_page,
        }
    }
}

/// Makes the wrapped routes apply each `Idempotency-Key` once and replay the stored
/// response to retries; see [`SyncEngine::idempotency_layer`].
///
/// Every clone shares one store, so applying the layer to a whole router (it is cloned
/// per route) prunes old keys once, not once per route.
#[derive(Debug, Clone)]
#[must_use]
pub struct IdempotencyLayer {
    store: Store,
    config: Config,
    authenticate: Option<Authenticate>,
}

impl SyncEngine {
    /// A layer that makes the app's unsafe routes (`POST`, `PUT`, `PATCH`, `DELETE`)
    /// idempotent under the `Idempotency-Key` header the browser client sends with
    /// replayed offline writes. Keys are kept in the engine's database.
    ///
    /// Apply it to the whole router, after the routes, so it sees the original path:
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::SqlitePool, app: axum::Router) -> Result<(), rhtmx_sync::BuildError> {
    /// let engine = rhtmx_sync::SyncEngine::builder(pool)
    ///     .entity_named("todos")
    ///     .build()
    ///     .await?;
    /// let app = app
    ///     .merge(engine.routes())
    ///     .layer(engine.idempotency_layer());
    /// # Ok(()) }
    /// ```
    pub fn idempotency_layer(&self) -> IdempotencyLayer {
        IdempotencyLayer {
            store: Store::new(self.inner.pool.clone()),
            config: Config::default(),
            authenticate: self.inner.authenticate.clone(),
        }
    }
}

impl IdempotencyLayer {
    /// How long a completed key is kept and replayed (default 24 h). Keys are deleted
    /// once older than this, at most once a minute; a retry after that runs again.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// How long a claimed key blocks retries (409) before a retry may take it over
    /// (default 60 s). It only matters when a server died mid-request; keep it above
    /// the slowest handler, or a retry can run concurrently with the first attempt.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How much of a keyed request body is read before the route runs, in bytes
    /// (default 1 MiB). It is fingerprinted to tell a retry from another request with
    /// the same key. A larger body is not refused: the route gets it whole, streamed,
    /// and its own limit (axum's `DefaultBodyLimit`) decides, as without the layer.
    /// Only its beginning is fingerprinted then (the first eighth of this limit, in
    /// canonical form), so two large requests that differ only further on count as
    /// the same request.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// How long a keyed request's body may take to arrive before the route runs (default
    /// 30 s). A slower one (trickled, or stopped) answers 408 and closes the connection;
    /// the key is not claimed, so the client's retry runs normally.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config.body_timeout = timeout;
        self
    }

    /// The largest response body stored with a key, in bytes (default 64 KiB). A
    /// larger body still reaches the client whole, and its key is completed all the
    /// same, so a replay never runs the route again; the replay then gets the status
    /// and headers with an empty body, marked `Idempotent-Body-Omitted: true` and
    /// `HX-Reswap: none` (so htmx does not swap the empty body in). The browser
    /// client's replays only need the status and `HX-*` headers.
    pub fn replay_body_limit(mut self, bytes: usize) -> Self {
        self.config.replay_body_limit = bytes;
        self
    }

    /// The most keys the store keeps (default 100 000), completed and in flight.
    /// Past it, the oldest completed keys are deleted down to 90% of it, even within
    /// their retention, and a replay of a deleted key runs the route again (logged as
    /// a warning). Size it above the keyed writes of a retention period.
    pub fn max_keys(mut self, keys: u64) -> Self {
        self.config.budget.max_keys = keys;
        self
    }

    /// The most bytes the store keeps (default 64 MiB), counting keys, fingerprints,
    /// stored headers and bodies. Past it, the oldest completed keys first lose their
    /// bodies (their replays get the answer described in
    /// [`replay_body_limit`](Self::replay_body_limit)), down to 90% of it; only if the
    /// rows alone are still over it are the oldest completed keys deleted, as
    /// [`max_keys`](Self::max_keys) does.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.config.budget.max_bytes = bytes;
        self
    }

    /// What the store holds now: keys and bytes, as counted against
    /// [`max_keys`](Self::max_keys) and [`max_bytes`](Self::max_bytes). Counted by
    /// database triggers as rows are written, so it covers every process using the
    /// database and costs one read.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the database cannot be read.
    pub async fn usage(&self) -> crate::Result<IdempotencyUsage> {
        self.store.usage().await
    }

    /// How a login page is recognised, from the path of a redirect's target (the path
    /// only: no scheme, host or query). A response that redirects there — a 3xx
    /// `Location`, or htmx's `HX-Redirect` or `HX-Location` — means "log in again", so
    /// it is not stored and a retry with the same key runs the route again.
    ///
    /// The default is [`IdempotencyLayer::is_login_page`], which matches the browser
    /// client's default `data-login-pattern`; if you change one, change the other.
    ///
    /// ```
    /// # fn layer(engine: &rhtmx_sync::SyncEngine) -> rhtmx_sync::IdempotencyLayer {
    /// engine
    ///     .idempotency_layer()
    ///     .login_page(|path| path == "/session/new")
    /// # }
    /// ```
    pub fn login_page(mut self, is_login: fn(&str) -> bool) -> Self {
        self.config.login_page = is_login;
        self
    }

    /// The default login-page rule: a `/` followed by `login`, `signin`, `sign-in` or
    /// `auth` (any case), then the end of the path or a character that is not a
    /// letter, digit or `_`. So `/login`, `/auth/sign-in` and `/users/SignIn` are login
    /// pages; `/loginhelp`, `/blog/authors` and `/oauth2/callback` are not. The same
    /// rule as the browser client's default `data-login-pattern`,
    /// `/(login|signin|sign-in|auth)\b`.
    pub fn is_login_page(path: &str) -> bool {
        finality::is_login_page(path)
    }

    /// Whether a response with `status` and `headers` is final, so stored and replayed
    /// to every retry with its key. Not final, so not stored (the key is freed and a
    /// retry runs the route again):
    ///
    /// - any response with a `Retry-After` header (it asks for a retry);
    /// - 401, 403 and 419 (log in again, or a stale CSRF token);
    /// - 408, 425 and 429 (too early, too many, too slow);
    /// - every 5xx;
    /// - a redirect to a login page (see [`login_page`](Self::login_page)): a 3xx whose
    ///   `Location` is one, or any response whose `HX-Redirect` or `HX-Location` is.
    ///
    /// Everything else is final: 2xx, other 4xx (a 409 without `Retry-After` included),
    /// and other redirects — a `303 See Other` after a successful `POST` is the usual
    /// Post/Redirect/Get answer, and running that `POST` again would apply it twice.
    /// These are the same classes the browser client uses to keep or drop a queued
    /// write.
    pub fn is_final(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        finality::is_final(status, headers, self.config.login_page)
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency {
            inner,
            store: self.store.clone(),
            config: self.config,
            authenticate: self.authenticate.clone(),
        }
    }
}
