//! [`IdempotencyLayer`]: how the layer is obtained from the engine and configured.

use std::time::Duration;

use tower_layer::Layer;

use super::service::Idempotency;
use super::store::Store;
use crate::SyncEngine;

/// The tunables, shared by every service the layer wraps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Config {
    pub retention: Duration,
    pub lease: Duration,
    pub body_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retention: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(60),
            body_limit: 1024 * 1024,
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
}

impl SyncEngine {
    /// A layer that makes the app's unsafe routes (`POST`, `PUT`, `PATCH`, `DELETE`)
    /// idempotent under the `Idempotency-Key` header the browser client sends with
    /// replayed offline writes. Keys are kept in the engine's database.
    ///
    /// Apply it to the whole router, after the routes, so it sees the original path:
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::SqlitePool, app: axum::Router) -> rhtmx_sync::Result<()> {
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

    /// The largest request body, and the largest response body stored for replay, in
    /// bytes (default 1 MiB). A larger request answers 413; a larger response is passed
    /// through unstored and its key released, so a retry runs again.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Idempotency<S> {
        Idempotency {
            inner,
            store: self.store.clone(),
            config: self.config,
        }
    }
}
