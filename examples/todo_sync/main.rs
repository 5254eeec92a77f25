//! The rhtmx-sync showcase: a todo list that works offline and refreshes live.
//!
//! Run with: `cargo run --example todo_sync`, then open http://127.0.0.1:3000.
//! `PORT` and `DATABASE_URL` (default `sqlite://todo_sync.db`; `postgres://...` runs it on
//! PostgreSQL, where any number of instances can share the database) override the
//! defaults. `KEEP_HISTORY_MS` and `COMPACT_EVERY_MS` set how much history the change
//! log keeps whole and how often it is compacted (default: 7 days, hourly), to watch
//! browsers resync after a compaction.

mod app;
#[path = "../shared/headers.rs"]
mod headers;
#[path = "../shared/serve.rs"]
mod serve;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use tower_http::timeout::TimeoutLayer;

/// The compaction settings, from `KEEP_HISTORY_MS` and `COMPACT_EVERY_MS` if set.
fn compaction_from_env() -> Result<rhtmx_sync::Compaction, std::num::ParseIntError> {
    let ms = |name: &str| -> Result<Option<Duration>, std::num::ParseIntError> {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().map(Duration::from_millis))
            .transpose()
    };
    let mut compaction = rhtmx_sync::Compaction::new();
    if let Some(keep) = ms("KEEP_HISTORY_MS")? {
        compaction = compaction.keep_history(keep);
    }
    if let Some(every) = ms("COMPACT_EVERY_MS")? {
        compaction = compaction.every(Some(every));
    }
    Ok(compaction)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rhtmx_sync=debug".into()),
        )
        .init();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://todo_sync.db".into());
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse()?,
        Err(_) => 3000,
    };
    let pool = app::open(&url).await?;
    let compaction = compaction_from_env()?;
    let engine = app::engine_with(pool, |b| b.compaction(compaction)).await?;
    // Replayed offline writes carry an Idempotency-Key: applied once, answered again.
    // The app's own requests get 30 s in all, body included, else 408 (a per-read
    // timeout would let a body trickle in a byte at a time forever); the engine's
    // routes time their bodies themselves and hold event streams open.
    let router = headers::protective_headers(
        app::app(engine.clone())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ))
            .merge(engine.routes())
            .layer(engine.idempotency_layer()),
    );

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("todo_sync listening on http://{}", listener.local_addr()?);
    // Header read timeout and a connection budget (see `shared/serve.rs`): 1000 places,
    // under a common `ulimit -n` of 1024; the engine's 512 event streams leave the rest
    // to pages.
    serve::serve(listener, router, 1000, async move {
        let _ = tokio::signal::ctrl_c().await;
        // Open event streams would otherwise keep the server up until every tab
        // closes; the browsers reconnect once the app is back.
        engine.shutdown();
    })
    .await?;
    Ok(())
}
