//! [`SyncEngine`]: registration, start-up, and the routes it hands out.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
#[cfg(feature = "sqlite")]
use sqlx::SqlitePool;
use tokio::task::JoinHandle;

use crate::backend::{self, Pool, ReadLog, Schema, Started};
use crate::broadcast::Hub;
use crate::compaction::{self, Compaction, LastReport};
use crate::conflict::{ConflictResolver, SharedResolver};
use crate::entity::{Entity, EntitySpec};
use crate::error::{BuildError, Error, Result};
use crate::hlc::HlcClock;
use crate::http::budget::Budget;

/// How far ahead of the server a client's HLC may be before the server's clock stamps
/// its change instead (see [`SyncEngineBuilder::clock_tolerance`]).
const DEFAULT_CLOCK_TOLERANCE: Duration = Duration::from_secs(5);
use crate::operator::{self, OpenStreams, OperatorFigures, RecentErrors};
use crate::permission::{Push, ValidatePush};
use crate::principal::{self, Authenticate, Principal};
use crate::scope::{Access, Rule, Scope};
use crate::syncable::{SyncStrategy, Syncable};

/// The one-line configuration: a SQLite pool and the tables to sync.
///
/// ```no_run
/// # async fn run(db_pool: sqlx::SqlitePool) -> Result<(), rhtmx_sync::BuildError> {
/// use rhtmx_sync::{SyncConfig, SyncEngine};
///
/// let engine = SyncEngine::new(SyncConfig { db_pool, entities: vec!["todos"] }).await?;
/// let app: axum::Router = axum::Router::new().merge(engine.routes());
/// # Ok(()) }
/// ```
///
/// Columns and the key are read from the schema. For typed registration and every other
/// option use [`SyncEngine::builder`].
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The app's own pool; the engine shares it.
    pub db_pool: SqlitePool,
    /// Table names to sync, each with a single-column primary key.
    pub entities: Vec<&'static str>,
}

/// One snapshot of the registered entities, looked up by wire name.
#[derive(Debug)]
pub(crate) struct Entities(Vec<Arc<Entity>>);

impl Entities {
    pub(crate) fn get(&self, name: &str) -> Option<&Entity> {
        self.shared(name).map(|e| &**e)
    }

    /// The entity as a handle that outlives this snapshot.
    pub(crate) fn shared(&self, name: &str) -> Option<&Arc<Entity>> {
        self.0.iter().find(|e| &*e.name == name)
    }

    pub(crate) fn list(&self) -> impl Iterator<Item = &Entity> {
        self.0.iter().map(|e| &**e)
    }
}

/// The registrations and what the schema makes of them now.
///
/// Read once at build, and again by the broadcaster whenever `PRAGMA schema_version`
/// changes ([`Registry::refresh`]): an entity registered by name then gains the columns
/// a migration added, and every entity's column types and UNIQUE constraints follow the
/// table. Requests load the current snapshot; one that began before a refresh finishes
/// with the snapshot it loaded.
#[derive(Debug)]
pub(crate) struct Registry {
    /// As registered, with the builder's conflict settings applied.
    specs: Vec<EntitySpec>,
    current: RwLock<Arc<Entities>>,
}

impl Registry {
    /// A registry of `entities`, resolved from `specs`.
    pub(crate) fn new(specs: Vec<EntitySpec>, entities: Vec<Arc<Entity>>) -> Registry {
        Registry {
            specs,
            current: RwLock::new(Arc::new(Entities(entities))),
        }
    }

    /// The current snapshot.
    pub(crate) fn load(&self) -> Arc<Entities> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads every registration against the schema again. [`Refreshed::matching`]
    /// holds the entities that match their table now; one that no longer does (its
    /// table is gone, or lost a column its model names) keeps its previous definition for
    /// requests, is logged, and is left out, so that no trigger naming a missing column
    /// is installed for it.
    ///
    /// Nothing changes until [`Registry::publish`]: the caller installs the capture of
    /// `matching` first, so a push never writes a column (one just added) that the
    /// triggers would not log yet.
    pub(crate) async fn refresh(&self, conn: &mut impl Schema) -> Result<Refreshed> {
        let before = self.load();
        let mut next = Vec::with_capacity(self.specs.len());
        let mut matching = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let previous = before.shared(&spec.table);
            match conn.resolve(spec.clone()).await {
                Ok(entity) => {
                    if let Some(previous) = previous {
                        let names = |e: &Entity| {
                            e.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
                        };
                        if names(previous) != names(&entity) {
                            tracing::info!(
                                entity = spec.table,
                                columns = ?names(&entity),
                                "the table's columns changed; syncing them"
                            );
                        }
                    }
                    let entity = Arc::new(entity);
                    matching.push(entity.clone());
                    next.push(entity);
                }
                Err(BuildError::Database(error)) => return Err(Error::Database(error)),
                Err(error) => {
                    tracing::error!(
                        entity = spec.table,
                        %error,
                        "the entity no longer matches its table: its changes are not captured \
                         until it does"
                    );
                    if let Some(previous) = previous {
                        next.push(previous.clone());
                    }
                }
            }
        }
        Ok(Refreshed { next, matching })
    }

    /// Makes a refreshed registry current.
    pub(crate) fn publish(&self, refreshed: Refreshed) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(Entities(refreshed.next));
    }
}

/// The registry as [`Registry::refresh`] read it, not yet current.
pub(crate) struct Refreshed {
    next: Vec<Arc<Entity>>,
    /// The entities that match their table now.
    pub matching: Vec<Arc<Entity>>,
}

/// Tunables, all with defaults that suit a typical app.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub prefix: String,
    pub body_limit: usize,
    pub poll_interval: Duration,
    pub keep_alive: Duration,
    pub sse_retry: Duration,
    pub event_buffer: usize,
    pub default_pull_limit: i64,
    pub max_pull_limit: i64,
    pub clock_tolerance: Duration,
    pub max_push_changes: usize,
    pub allowed_origins: Vec<String>,
    pub max_event_streams: usize,
    pub max_concurrent_pulls: usize,
    pub max_event_streams_per_principal: usize,
    pub max_concurrent_pulls_per_principal: usize,
    pub body_timeout: Duration,
    pub access_recheck: Duration,
    /// How often the figures are logged as `tracing` events; `None`: never by itself.
    pub figures_every: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "/api/sync".to_owned(),
            body_limit: 1024 * 1024,
            poll_interval: Duration::from_millis(10),
            keep_alive: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            event_buffer: 4096,
            default_pull_limit: 1000,
            max_pull_limit: 10_000,
            clock_tolerance: DEFAULT_CLOCK_TOLERANCE,
            max_push_changes: 1000,
            allowed_origins: Vec::new(),
            max_event_streams: 512,
            max_concurrent_pulls: 32,
            max_event_streams_per_principal: 16,
            max_concurrent_pulls_per_principal: 8,
            body_timeout: Duration::from_secs(30),
            access_recheck: Duration::from_secs(60),
            figures_every: None,
        }
    }
}

/// Records every change of the registered tables and serves them to browsers.
///
/// Building the engine creates its tables (`_rhtmx_sync_log`, `_rhtmx_sync_meta`),
/// installs change-capture triggers on each registered table and starts the task that
/// broadcasts committed changes; it needs a Tokio runtime. Cloning is cheap; the task
/// stops when the last clone (including the routes) is dropped.
#[derive(Clone)]
pub struct SyncEngine {
    pub(crate) inner: Arc<Inner>,
}

/// Runs `job` every `period`, the first time `period` from now, in `span`, until the
/// engine is dropped: the task holds it weakly, so it never keeps the engine alive.
pub(crate) fn every<F, Fut>(engine: &SyncEngine, period: Duration, span: tracing::Span, job: F)
where
    F: Fn(SyncEngine) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tracing::Instrument;
    let engine = Arc::downgrade(&engine.inner);
    let task = async move {
        let start = tokio::time::Instant::now() + period;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(inner) = engine.upgrade() else {
                return;
            };
            job(SyncEngine { inner }).await;
        }
    };
    tokio::spawn(task.instrument(span));
}

pub(crate) struct Inner {
    pub pool: Pool,
    pub entities: Arc<Registry>,
    pub hub: Arc<Hub>,
    pub options: Options,
    pub clock: HlcClock,
    /// The log's identity, which every cursor is tagged with.
    pub log_id: Arc<str>,
    /// Places for open event streams and running pulls (see the options).
    pub streams: Arc<Budget>,
    pub pulls: Arc<Budget>,
    /// The event streams open now, with their cursors, for the operator view.
    pub open_streams: Arc<OpenStreams>,
    /// The errors the routes answered with lately, for the operator view.
    pub recent_errors: Arc<RecentErrors>,
    /// The app's extractor of who is asking, if it gave one.
    pub authenticate: Option<Authenticate>,
    /// Whether any entity has a scope (then one without is readable by nobody).
    pub scoped: bool,
    /// How long the log keeps what (see `crate::compaction`), and the latest pass.
    pub compaction: Compaction,
    pub last_compaction: LastReport,
    /// The digest route's check of the log against the tables (`crate::audit`).
    pub checks: crate::audit::Checks,
    tailer: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tailer.abort();
    }
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field(
                "entities",
                &self
                    .inner
                    .entities
                    .load()
                    .list()
                    .map(|e| e.name.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &self.inner.options.prefix)
            .finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// Builds an engine for the tables named in `config`.
    #[cfg(feature = "sqlite")]
    pub async fn new(config: SyncConfig) -> Result<SyncEngine, BuildError> {
        config
            .entities
            .into_iter()
            .fold(SyncEngine::builder(config.db_pool), |b, name| {
                b.entity_named(name)
            })
            .build()
            .await
    }

    /// Starts a builder on the app's pool: a `sqlx::SqlitePool`, or with the `postgres`
    /// feature a `sqlx::PgPool` (any number of app instances on one database; see
    /// [`Pool`]). The engine shares the pool for requests and opens its own connections
    /// for the broadcaster (one on SQLite, two on PostgreSQL).
    pub fn builder(db_pool: impl Into<Pool>) -> SyncEngineBuilder {
        SyncEngineBuilder {
            pool: db_pool.into(),
            specs: Vec::new(),
            overrides: Vec::new(),
            options: Options::default(),
            authenticate: None,
            compaction: Compaction::default(),
        }
    }

    /// The sync routes under the configured prefix (default `/api/sync`):
    /// `GET|POST {prefix}/{entity}`, `GET {prefix}/events`, `GET {prefix}/client.js`.
    ///
    /// Generic over the app's state, so it merges into any router.
    ///
    /// The operator view is not among them: see `operator_routes` and
    /// [`operator`](crate::operator).
    pub fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        // Every error these routes answer with is kept for the operator view.
        crate::http::router(self.clone()).layer(axum::middleware::from_fn_with_state(
            self.inner.recent_errors.clone(),
            operator::record_errors,
        ))
    }

    /// The operator view (see [`operator`](crate::operator)): `GET /`, an HTML page
    /// of [`figures`](Self::figures) (JSON instead when the request's `Accept` names
    /// `application/json` and not `text/html`), and `GET /figures.json`, always the
    /// JSON of [`OperatorFigures`]. Read-only; answers are `Cache-Control: no-store`;
    /// a failed read of the database answers 500.
    ///
    /// The paths are relative: place them with `Router::nest` (`"/admin/sync"` serves
    /// `/admin/sync` and `/admin/sync/figures.json`). **Never mount them
    /// unauthenticated**: they name users and show internal error messages. Wrap them
    /// in the app's own check first, e.g. `.route_layer(middleware::from_fn(admins_only))`
    /// (a full example is in [`operator`](crate::operator)).
    #[cfg(feature = "operator")]
    pub fn operator_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        operator::router(self.clone())
    }

    /// What the engine is doing now, for the people who run it (see
    /// [`operator`](crate::operator)): the change log's size and pace, the open event
    /// streams and their cursors, the idempotency store, recent conflicts and errors.
    /// Database figures are counted when asked, in one read transaction, at the cost of
    /// one pass over the log; [`OperatorFigures::emit`] logs them.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the database cannot be read.
    pub async fn figures(&self) -> Result<OperatorFigures> {
        operator::read(self).await
    }

    /// The pool the engine writes through.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The engine's hybrid logical clock: it stamps the changes a client sent without an
    /// HLC and merges every HLC it receives. Its node id is random per engine.
    pub fn clock(&self) -> &HlcClock {
        &self.inner.clock
    }

    /// Ends every open event stream now and refuses new ones with 503, so that a
    /// server's graceful shutdown is not held up by browsers that keep a stream open
    /// forever. Browsers reconnect by themselves (to another instance, or to this app
    /// once it is back) and resume where they stopped; nothing is lost. Pulls, pushes
    /// and the app's own routes are not affected. Idempotent.
    ///
    /// Call it when the shutdown signal arrives:
    ///
    /// ```no_run
    /// # async fn run(engine: rhtmx_sync::SyncEngine, app: axum::Router) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(async move {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///         engine.shutdown();
    ///     })
    ///     .await
    /// # }
    /// ```
    pub fn shutdown(&self) {
        self.inner.hub.closing.send_replace(true);
    }

    /// Tells the engine that what some principal may read has changed in a way it
    /// cannot see in a row of a synced table: a membership removed, a user moved to
    /// another tenant, a session ended (call it at sign-out too). Every open event
    /// stream asks again who its client is and what it may read (the app's extractor
    /// and [`ScopeKeys`](crate::ScopeKeys) run once per stream); a stream whose access
    /// changed sends its client a `reset`, and the client drops its mirror (and its
    /// cached pages) and pulls what it may read now. Without the call, open streams find
    /// out within [`access_recheck`](SyncEngineBuilder::access_recheck). Pulls always
    /// ask afresh, and a client that was offline meanwhile resets at its next pull.
    ///
    /// A change of a row's scope column needs no call: the row reaches those who may
    /// now read it, and leaves those who no longer may, as a change.
    pub fn access_changed(&self) {
        self.inner
            .hub
            .access
            .send_modify(|generation| *generation += 1);
    }

    /// Ends every open event stream of `principal` now (call it at sign-out, with the
    /// principal that signed out). Their browsers reconnect and are asked afresh who
    /// they are: a signed-out session is then anonymous, and its client drops what it
    /// held; the principal's other sessions resume where they were.
    ///
    /// [`access_changed`](Self::access_changed) makes streams run the app's extractor
    /// again on the request they were opened with, which cannot see a sign-out when the
    /// extractor reads a session cached in that request (as `tower-sessions` does): a
    /// stream opened with a stolen cookie would keep streaming. This cannot.
    pub fn revoke(&self, principal: &Principal) {
        let _ = self.inner.hub.revoked.send(principal.clone());
    }

    /// What `principal` may read now.
    pub(crate) async fn access(&self, principal: Principal) -> Result<Access> {
        let entities = self.inner.entities.load();
        Access::of(principal, &entities, self.inner.scoped, &self.inner.log_id).await
    }

    /// The highest change version committed so far.
    pub async fn head(&self) -> Result<i64> {
        self.inner.pool.acquire().await?.settled_head().await
    }

    /// The entity registered as `name`, as the schema defines it now.
    pub(crate) fn entity(&self, name: &str) -> Result<Arc<Entity>> {
        self.inner
            .entities
            .load()
            .shared(name)
            .cloned()
            .ok_or_else(|| Error::UnknownEntity(name.to_owned()))
    }
}

/// Configures a [`SyncEngine`]; see each method for its default.
#[derive(Debug)]
#[must_use]
pub struct SyncEngineBuilder {
    pool: Pool,
    specs: Vec<EntitySpec>,
    /// Per-entity conflict settings, applied to the registrations at build time.
    overrides: Vec<(String, Override)>,
    options: Options,
    authenticate: Option<Authenticate>,
    compaction: Compaction,
}

/// A per-entity conflict setting given on the builder.
#[derive(Debug)]
enum Override {
    Strategy(SyncStrategy),
    Resolver(SharedResolver),
    DeleteWins(bool),
    Push(Push),
    Scope(Scope),
}

/// Route segments the engine uses itself, so no entity may be named after them.
const RESERVED: &[&str] = &["events", "client.js", "sw.js"];

impl SyncEngineBuilder {
    /// Syncs the model `T` (its table, key, columns and strategy come from
    /// `#[derive(Syncable)]`).
    pub fn entity<T: Syncable>(mut self) -> Self {
        self.specs.push(EntitySpec {
            table: T::TABLE.to_owned(),
            id: Some(T::ID.to_owned()),
            columns: Some(T::COLUMNS.iter().map(|c| (*c).to_owned()).collect()),
            strategy: T::STRATEGY,
            delete_wins: T::DELETE_WINS,
            resolver: None,
            offline_writes: T::OFFLINE_WRITES,
            push: Push::Refused,
            scope: None,
        });
        self
    }

    /// Syncs every column of `table`, keyed by its primary key.
    pub fn entity_named(mut self, table: impl Into<String>) -> Self {
        self.specs.push(EntitySpec::named(table));
        self
    }

    /// How fields changed both by a client and on the server are resolved for `entity`
    /// (default: the derive's `strategy`, else [`SyncStrategy::LastWriteWins`]).
    pub fn strategy(mut self, entity: impl Into<String>, strategy: SyncStrategy) -> Self {
        self.overrides
            .push((entity.into(), Override::Strategy(strategy)));
        self
    }

    /// Resolves `entity`'s conflicts with `resolver` ([`SyncStrategy::Custom`]).
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::SqlitePool) -> Result<(), rhtmx_sync::BuildError> {
    /// use rhtmx_sync::conflict::FieldConflict;
    /// use serde_json::{json, Value};
    ///
    /// // Concurrent edits of a text field keep both versions.
    /// let keep_both = |c: &FieldConflict<'_>| match (c.server, c.client) {
    ///     (Value::String(s), Value::String(k)) => json!(format!("{s}\n{k}")),
    ///     _ => c.client.clone(),
    /// };
    /// let engine = rhtmx_sync::SyncEngine::builder(pool)
    ///     .entity_named("notes")
    ///     .resolver("notes", keep_both)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn resolver(mut self, entity: impl Into<String>, resolver: impl ConflictResolver) -> Self {
        let resolver = SharedResolver(Arc::new(resolver));
        self.overrides
            .push((entity.into(), Override::Resolver(resolver)));
        self
    }

    /// How the engine learns who a request is from: an axum extractor of the app's own
    /// (its session or auth crate's type, or a header) that converts into a
    /// [`Principal`](crate::Principal); a rejection counts as anonymous. With it, the
    /// [idempotency layer](SyncEngine::idempotency_layer) refuses (403, nothing run) a
    /// replayed write whose `X-Rhtmx-Principal` (the user the browser client queued it
    /// for) is not the request's user, so a queued write is never applied as someone
    /// else whatever cookies the browser holds by then.
    pub fn authenticate<E>(mut self) -> Self
    where
        E: axum::extract::FromRequestParts<()> + Into<crate::Principal> + 'static,
    {
        self.authenticate = Some(Authenticate(principal::authenticator::<E>()));
        self
    }

    /// Lets the push API (`POST {prefix}/{entity}`) write `entity`: any change that fits
    /// the table (known columns, types, key, constraints). Without this (or
    /// [`validate`](Self::validate)) every push to it answers 403
    /// ([`Error::NotWritable`](crate::Error::NotWritable)): the browser client does not
    /// need the push API (it replays the app's own requests), so it stays closed unless
    /// the app asks. A model with `#[sync(offline_writes = false)]` cannot be made
    /// writable ([`BuildError::NotWritable`]).
    pub fn writable(mut self, entity: impl Into<String>) -> Self {
        self.overrides
            .push((entity.into(), Override::Push(Push::Allowed)));
        self
    }

    /// Lets the push API write `entity`, each pushed change checked by `validator` first
    /// (the rules the app's own handlers enforce, say). A refusal answers 422 with
    /// `changes[i]: message` and writes nothing of the push. See [`writable`](Self::writable).
    pub fn validate(mut self, entity: impl Into<String>, validator: impl ValidatePush) -> Self {
        self.overrides.push((
            entity.into(),
            Override::Push(Push::Validated(Arc::new(validator))),
        ));
        self
    }

    /// Which rows of `entity` a principal may read, and so pull, receive on the event
    /// stream and write through the push API (see [`Scope`]). Once any entity has a
    /// scope, an entity without one is readable by nobody
    /// ([`Error::NotReadable`](crate::Error::NotReadable)); give it [`Scope::public`]
    /// to open it. A scope by principal needs [`authenticate`](Self::authenticate)
    /// ([`BuildError::NoAuthenticator`]); its column must be synced
    /// ([`BuildError::ScopeColumn`]).
    ///
    /// A push that would write a row outside the principal's scope — one it may not
    /// read, or a change of the scope column that moves a row out of its reach or into
    /// another's — answers 403 ([`Error::OutOfScope`](crate::Error::OutOfScope)) and
    /// writes nothing. The app's own handlers are the app's to check.
    pub fn scope(mut self, entity: impl Into<String>, scope: Scope) -> Self {
        self.overrides.push((entity.into(), Override::Scope(scope)));
        self
    }

    /// Whether a delete of `entity` beats an update made concurrently with it (default:
    /// the derive's `delete_wins`, else `true`). With `false` the later of the two by
    /// HLC wins, and an update newer than the delete restores the row.
    pub fn delete_wins(mut self, entity: impl Into<String>, delete_wins: bool) -> Self {
        self.overrides
            .push((entity.into(), Override::DeleteWins(delete_wins)));
        self
    }

    /// How far ahead of the server's clock a client's HLC may be (default 5 s). A
    /// change stamped further ahead comes from a device whose clock is wrong: it is
    /// applied, stamped with the server's clock instead, and reported (a warning in the
    /// log, `clamped` in the push response, [`WriteOutcome::clamped`](crate::WriteOutcome)).
    /// It is never refused, and its HLC is never observed, so it cannot win every
    /// conflict for hours or drag the server's clock, and every tab's, into the future.
    pub fn clock_tolerance(mut self, tolerance: Duration) -> Self {
        self.options.clock_tolerance = tolerance;
        self
    }

    /// The most changes one push may carry (default 1000); more answers 413 and
    /// changes nothing. It bounds how long a push holds the write lock: every app write
    /// waits meanwhile. The browser client pushes fewer at a time.
    pub fn max_push_changes(mut self, changes: usize) -> Self {
        self.options.max_push_changes = changes.max(1);
        self
    }

    /// Other origins whose pages may push (`scheme://host[:port]`, as browsers send
    /// `Origin`; compared without regard to case). By default a push is applied only
    /// from the app's own origin: a browser request from any other site answers 403
    /// ([`Error::CrossSite`](crate::Error::CrossSite)). Requests that carry neither
    /// `Origin` nor `Sec-Fetch-Site` (not from a browser page) are not affected.
    pub fn allowed_origins<I, O>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: Into<String>,
    {
        self.options.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The most event streams open at once (default 512); one more answers 429 with
    /// `Retry-After` ([`Error::Busy`](crate::Error::Busy)) and the browser client tries
    /// again with backoff. Each stream holds a socket and about 30 KB: keep this well
    /// under the process's descriptor limit (`ulimit -n`), so the app's own pages always
    /// have room. The client opens one stream per browser, not per tab.
    pub fn max_event_streams(mut self, streams: usize) -> Self {
        self.options.max_event_streams = streams.max(1);
        self
    }

    /// The most pulls running at once (default 32); one more answers 429 with
    /// `Retry-After`. A pull holds its place until its whole body is written, however
    /// slowly its client reads.
    pub fn max_concurrent_pulls(mut self, pulls: usize) -> Self {
        self.options.max_concurrent_pulls = pulls.max(1);
        self
    }

    /// The most event streams one principal (a signed-in user, see
    /// [`authenticate`](Self::authenticate)) may hold open at once (default 16: a
    /// browser holds one, so this is devices); one more answers 429 with `Retry-After`,
    /// and the other users' places stay free. Anonymous requests count against the
    /// total only.
    pub fn max_event_streams_per_principal(mut self, streams: usize) -> Self {
        self.options.max_event_streams_per_principal = streams.max(1);
        self
    }

    /// The most pulls one principal may run at once (default 8; a browser pulls each
    /// synced entity at once when it starts); one more answers 429 with `Retry-After`.
    pub fn max_concurrent_pulls_per_principal(mut self, pulls: usize) -> Self {
        self.options.max_concurrent_pulls_per_principal = pulls.max(1);
        self
    }

    /// How often an open event stream of a scoped engine asks again who its client is
    /// and what it may read, by itself (default 60 s): a session that ended or a
    /// membership removed without [`SyncEngine::access_changed`] stops reaching the
    /// client within this long. Each check runs the app's extractor (and its
    /// [`ScopeKeys`](crate::ScopeKeys)) once for the stream.
    pub fn access_recheck(mut self, every: Duration) -> Self {
        self.options.access_recheck = every.max(Duration::from_millis(100));
        self
    }

    /// Logs the engine's [figures](SyncEngine::figures) as a `tracing` event
    /// ([`OperatorFigures::emit`], target `rhtmx_sync::metrics`) every `period`, the
    /// first `period` after the build (default: never by itself). Each costs one pass
    /// over the change log, so a minute suits most apps; less than a second is raised to
    /// one. The task holds the engine weakly and ends once the engine is dropped.
    pub fn emit_figures_every(mut self, period: Duration) -> Self {
        self.options.figures_every = Some(period.max(Duration::from_secs(1)));
        self
    }

    /// How long the change log keeps history, tombstones, conflict reports and replay
    /// digests, and how often it is compacted in the background (default:
    /// [`Compaction::default`]: 7 days of history, a pass every hour). See
    /// [`Compaction`] for what a pass keeps and [`SyncEngine::compact`] to run one now.
    pub fn compaction(mut self, compaction: Compaction) -> Self {
        self.compaction = compaction;
        self
    }

    /// Where the routes live (default `/api/sync`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options.prefix = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// How long a push body may take to arrive (default 30 s); a slower one (a client
    /// trickling it, or one that stopped) answers 408, writes nothing and closes the
    /// connection, instead of holding it for as long as the client likes.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.options.body_timeout = timeout;
        self
    }

    /// The largest push body accepted, in bytes (default 1 MiB); larger answers 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.options.body_limit = bytes;
        self
    }

    /// How often the broadcaster checks the database for commits made outside the push
    /// API — the app's own handlers or another process (default 10 ms). This bounds
    /// the delay from such a commit to its event. An idle check costs one pragma on
    /// SQLite and one small indexed query on PostgreSQL, where engines also wake each
    /// other by `NOTIFY` and 50 ms suits many instances.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.options.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often an idle event stream sends a keep-alive comment (default 15 s).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.options.keep_alive = interval;
        self
    }

    /// The reconnection delay suggested to browsers with `retry:` (default 2 s).
    pub fn sse_retry(mut self, delay: Duration) -> Self {
        self.options.sse_retry = delay;
        self
    }

    /// How many events a slow stream may fall behind before it catches up from the log
    /// instead (default 4096).
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.options.event_buffer = events.max(1);
        self
    }

    /// The default and largest `limit` of a pull (defaults 1000 and 10 000).
    pub fn pull_limit(mut self, default: u32, max: u32) -> Self {
        self.options.max_pull_limit = i64::from(max.max(1));
        self.options.default_pull_limit = i64::from(default.clamp(1, max.max(1)));
        self
    }

    /// Creates the engine's tables, installs the triggers, and starts broadcasting.
    pub async fn build(self) -> Result<SyncEngine, BuildError> {
        let mut specs = self.specs;
        for (name, setting) in self.overrides {
            let Some(spec) = specs.iter_mut().find(|s| s.table == name) else {
                return Err(BuildError::NotRegistered { table: name });
            };
            match setting {
                Override::Strategy(strategy) => spec.strategy = strategy,
                Override::Resolver(resolver) => {
                    spec.strategy = SyncStrategy::Custom;
                    spec.resolver = Some(resolver);
                }
                Override::DeleteWins(wins) => spec.delete_wins = wins,
                Override::Push(_) if !spec.offline_writes => {
                    return Err(BuildError::NotWritable { table: name });
                }
                Override::Push(push) => spec.push = push,
                Override::Scope(scope) => {
                    if matches!(scope.rule, Rule::Column { .. }) && self.authenticate.is_none() {
                        return Err(BuildError::NoAuthenticator { table: name });
                    }
                    spec.scope = Some(scope);
                }
            }
        }
        let scoped = specs.iter().any(|s| s.scope.is_some());
        for (i, spec) in specs.iter().enumerate() {
            if spec.strategy == SyncStrategy::Custom && spec.resolver.is_none() {
                return Err(BuildError::NoResolver {
                    table: spec.table.clone(),
                });
            }
            if RESERVED.contains(&spec.table.as_str()) {
                return Err(BuildError::ReservedName {
                    table: spec.table.clone(),
                });
            }
            if specs[..i].iter().any(|s| s.table == spec.table) {
                return Err(BuildError::Duplicate {
                    table: spec.table.clone(),
                });
            }
        }
        let hub = Arc::new(Hub::new(self.options.event_buffer));
        let poll = self.options.poll_interval;
        let Started {
            registry: entities,
            log_id,
            tailer,
        } = match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => backend::sqlite::start(pool, specs, hub.clone(), poll).await?,
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => {
                backend::postgres::start(pool, specs, hub.clone(), poll).await?
            }
        };
        let clock = HlcClock::new().max_drift(self.options.clock_tolerance);
        let engine = SyncEngine {
            inner: Arc::new(Inner {
                pool: self.pool,
                entities,
                hub,
                streams: Budget::new(
                    "event streams",
                    5,
                    self.options.max_event_streams,
                    self.options.max_event_streams_per_principal,
                ),
                pulls: Budget::new(
                    "pulls",
                    1,
                    self.options.max_concurrent_pulls,
                    self.options.max_concurrent_pulls_per_principal,
                ),
                open_streams: Arc::default(),
                recent_errors: Arc::default(),
                authenticate: self.authenticate,
                scoped,
                compaction: self.compaction,
                last_compaction: LastReport::default(),
                checks: crate::audit::Checks::default(),
                options: self.options,
                clock,
                log_id,
                tailer,
            }),
        };
        if let Some(period) = engine.inner.options.figures_every {
            operator::emit_every(&engine, period);
        }
        if let Some(period) = engine.inner.compaction.every {
            compaction::run_every(&engine, period);
        }
        Ok(engine)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let pool = SqlitePool::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    }

    #[tokio::test]
    async fn a_build_names_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let err = SyncEngine::builder(pool.clone())
            .entity_named("todos")
            .strategy("notes", SyncStrategy::ServerWins)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::NotRegistered { table } if table == "notes"),
            "{err}"
        );
        let err = SyncEngine::builder(pool.clone())
            .entity_named("todos")
            .strategy("todos", SyncStrategy::Custom)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::NoResolver { table } if table == "todos"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn shutdown_refuses_new_streams_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SyncEngine::builder(pool(&dir).await)
            .entity_named("todos")
            .build()
            .await
            .unwrap();
        assert!(!*engine.inner.hub.closing.borrow());
        engine.shutdown();
        engine.shutdown();
        assert!(*engine.inner.hub.closing.borrow());
        assert_eq!(engine.head().await.unwrap(), 0);
    }
}
