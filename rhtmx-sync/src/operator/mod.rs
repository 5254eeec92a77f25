//! The operator view: what the engine is doing, for the people who run the app.
//!
//! [`SyncEngine::figures`](crate::SyncEngine::figures) reads [`OperatorFigures`] now:
//! the change log (rows, bytes, oldest and head version, compaction horizon, changes
//! in the last minute and hour), the open event streams with their cursors (who, since
//! when, how far behind), the idempotency store (keys, bytes), the latest conflicts
//! the log carries and the latest errors the engine's routes answered with. Database
//! figures are counted by SQL at that moment, in one read transaction.
//!
//! The same figures come three ways:
//!
//! - **HTML and JSON**, with the `operator` feature (on by default):
//!   `SyncEngine::operator_routes` is a router
//!   with `GET /` (the page; JSON instead when `Accept` names `application/json` and
//!   not `text/html`) and `GET /figures.json` (always JSON, the serialized
//!   [`OperatorFigures`]). Read-only; every answer is `Cache-Control: no-store`.
//! - **`tracing` events** at target [`METRICS_TARGET`]: [`OperatorFigures::emit`], or
//!   every period with
//!   [`SyncEngineBuilder::emit_figures_every`](crate::SyncEngineBuilder::emit_figures_every).
//! - **Rust values**: [`OperatorFigures`] and its parts.
//!
//! # Never mount the routes unauthenticated
//!
//! They name users, show error messages the clients were not sent, and cost a pass over
//! the log per request. [`SyncEngine::routes`](crate::SyncEngine::routes) does not
//! include them; the app nests them where it likes behind its own check:
//!
//! ```no_run
//! # #[cfg(feature = "operator")]
//! # fn app(engine: rhtmx_sync::SyncEngine) -> axum::Router {
//! use axum::extract::Request;
//! use axum::http::StatusCode;
//! use axum::middleware::{self, Next};
//! use axum::response::Response;
//!
//! /// The app's own rule: here, a signed-in administrator.
//! async fn admins_only(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     # let is_admin = |_: &Request| false;
//!     if !is_admin(&request) {
//!         return Err(StatusCode::NOT_FOUND);
//!     }
//!     Ok(next.run(request).await)
//! }
//!
//! axum::Router::new()
//!     .merge(engine.routes())
//!     .nest(
//!         "/admin/sync",
//!         engine.operator_routes().route_layer(middleware::from_fn(admins_only)),
//!     )
//! # }
//! ```
//!
//! # How the engine knows
//!
//! The event stream handler registers each stream while it is open (a guard removes it
//! when the stream is dropped) and stores its cursor in an atomic as it goes: no lock
//! and no allocation per event. Conflicts are read from the log, which records every
//! one with the change that resolved it. Errors are kept in memory, the last 50, by a
//! middleware on the engine's routes: a restart empties that list, and errors of the
//! app's own routes (even those made by [`SyncEngine::write`](crate::SyncEngine::write))
//! are the app's to log.

mod errors;
pub(crate) mod figures;
mod metrics;
#[cfg(feature = "operator")]
mod page;
#[cfg(feature = "operator")]
mod routes;
mod streams;

pub use self::figures::{
    ConflictFigure, ErrorFigure, ErrorFigures, IdempotencyFigures, LogFigures, OperatorFigures,
    StreamFigure, StreamFigures,
};
pub use self::metrics::METRICS_TARGET;

pub(crate) use self::errors::{record as record_errors, Failure, RecentErrors};
pub(crate) use self::figures::read;
pub(crate) use self::metrics::emit_every;
#[cfg(feature = "operator")]
pub(crate) use self::routes::router;
pub(crate) use self::streams::OpenStreams;
