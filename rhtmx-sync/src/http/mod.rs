//! The HTTP face of the engine: pull, push, the event stream, state digests and the
//! browser files.

mod assets;
pub(crate) mod budget;
mod digest;
mod events;
mod origin;
mod pull;
mod push;

pub(crate) use self::push::CLIENT_ID_HEADER;

use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::SyncEngine;

/// Builds the routes with the engine as their state, leaving the app's state open.
///
/// Every answer that carries row data — pulls, pushes and the event stream, errors
/// included — is `Cache-Control: no-store`: no browser or proxy cache keeps a user's
/// rows where the next user could read them. The browser files are `no-cache`
/// (revalidated, see `assets`).
pub(crate) fn router<S>(engine: SyncEngine) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let prefix = engine.inner.options.prefix.clone();
    let data = Router::new()
        .route(&format!("{prefix}/events"), get(events::events))
        .route(
            &format!("{prefix}/{{entity}}"),
            get(pull::pull).post(push::push),
        )
        .route(&format!("{prefix}/{{entity}}/digest"), get(digest::digest))
        .route(&format!("{prefix}/{{entity}}/rows"), get(digest::rows))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    Router::new()
        .route(&format!("{prefix}/client.js"), get(assets::client_js))
        .route(&format!("{prefix}/sw.js"), get(assets::service_worker))
        .route(&format!("{prefix}/debug.js"), get(assets::debug_js))
        .merge(data)
        .with_state(engine)
}
