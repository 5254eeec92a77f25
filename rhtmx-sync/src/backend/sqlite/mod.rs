//! SQLite: starting the engine on one database file (the log, the capture triggers and
//! the broadcaster themselves live in `crate::log`, `crate::capture` and
//! `crate::broadcast`, which predate the other backend).

pub(crate) mod audit;
mod compact;
mod write;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, SqliteConnection, SqlitePool};
use tracing::Instrument;

use super::Started;
use crate::broadcast::{self, Hub};
use crate::capture;
use crate::engine::Registry;
use crate::entity::{Entity, EntitySpec};
use crate::error::BuildError;
use crate::log;

/// Creates the engine's tables, resolves `specs`, installs their triggers and starts
/// the broadcaster on a connection of its own (it must not hold one of the app's).
pub(crate) async fn start(
    pool: &SqlitePool,
    specs: Vec<EntitySpec>,
    hub: Arc<Hub>,
    poll: Duration,
) -> Result<Started, BuildError> {
    let options = pool.connect_options();
    let mut conn = SqliteConnection::connect_with(&options).await?;
    log::migrate(&mut conn).await?;
    crate::idempotency::migrate(&mut conn).await?;
    let mut entities = Vec::with_capacity(specs.len());
    for spec in &specs {
        entities.push(Arc::new(Entity::resolve(&mut conn, spec.clone()).await?));
    }
    let generation = capture::claim(&mut conn, &entities).await?;
    let head = log::head(&mut conn).await?;
    let log_id: Arc<str> = log::log_id(&mut conn).await?.into();
    let registry = Arc::new(Registry::new(specs, entities));
    let tailer = tokio::spawn(
        broadcast::tail(
            (*options).clone(),
            conn,
            hub,
            broadcast::Follow {
                registry: registry.clone(),
                generation,
                log_id: log_id.clone(),
            },
            poll,
            head,
        )
        .instrument(tracing::info_span!("rhtmx_sync_broadcaster")),
    );
    Ok(Started {
        registry,
        log_id,
        tailer,
    })
}
