//! The HTTP face of the engine: pull, push, the event stream and the browser files.

mod assets;
mod events;
mod pull;
mod push;

pub(crate) use self::push::CLIENT_ID_HEADER;

use axum::routing::get;
use axum::Router;

use crate::SyncEngine;

/// Builds the routes with the engine as their state, leaving the app's state open.
pub(crate) fn router<S>(engine: SyncEngine) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let prefix = engine.inner.options.prefix.clone();
    Router::new()
        .route(&format!("{prefix}/events"), get(events::events))
        .route(&format!("{prefix}/client.js"), get(assets::client_js))
        .route(&format!("{prefix}/sw.js"), get(assets::service_worker))
        .route(
            &format!("{prefix}/{{entity}}"),
            get(pull::pull).post(push::push),
        )
        .with_state(engine)
}
