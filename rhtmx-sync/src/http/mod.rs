//! The HTTP face of the engine: pull, push, the event stream and the client script.

mod client_js;
mod events;
mod pull;
mod push;

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
        .route(&format!("{prefix}/client.js"), get(client_js::client_js))
        .route(
            &format!("{prefix}/{{entity}}"),
            get(pull::pull).post(push::push),
        )
        .with_state(engine)
}
