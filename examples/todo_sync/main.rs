//! The rhtmx-sync showcase: a todo list that works offline and refreshes live.
//!
//! Run with: `cargo run --example todo_sync`, then open http://127.0.0.1:3000.
//! `PORT` and `DATABASE_URL` (default `sqlite://todo_sync.db`) override the defaults.

mod app;

use std::net::SocketAddr;

use axum::serve::ListenerExt;

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
    let pool = app::open_db(&url).await?;
    let engine = app::engine(&pool).await?;
    // Replayed offline writes carry an Idempotency-Key: applied once, answered again.
    let router = app::protective_headers(
        app::app(engine.clone())
            .merge(engine.routes())
            .layer(engine.idempotency_layer()),
    );

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("todo_sync listening on http://{}", listener.local_addr()?);
    // Small last chunks of streamed pulls must not wait for the client's delayed ACK
    // (Nagle): measured 4–5× faster pulls, see BENCHMARKS.md.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Open event streams would otherwise keep the server up until every tab
            // closes; the browsers reconnect once the app is back.
            engine.shutdown();
        })
        .await?;
    Ok(())
}
