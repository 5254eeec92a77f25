//! Serving an app with the limits a deployment needs, shared by the examples.
//!
//! `axum::serve` sets no read timeouts: a client that sends its request headers one byte
//! a second holds a connection (and a file descriptor) for as long as it likes, and a
//! few thousand such clients exhaust the process's descriptors. Here, with hyper-util
//! directly:
//!
//! - **Header read timeout** (10 s): a connection whose request headers have not arrived
//!   by then is closed, and so is one that sends nothing at all within it (hyper's own
//!   timer starts at the first byte). HTTP/1 only: an HTTP/2 connection in clear text
//!   would escape the timer. (An idle keep-alive connection between two requests is
//!   hyper's to close; a reverse proxy in front bounds those too.) (Bodies get their own timeouts: the engine's `body_timeout` on
//!   its routes, a tower-http `TimeoutLayer` on the app's — a total one: tower-http's
//!   `RequestBodyTimeoutLayer` waits per read, and a byte a second never trips it.)
//! - **Connection budget**: at most `max_connections` open at once; the next waits in
//!   the kernel's accept queue until one closes, so the process never runs out of
//!   descriptors. Keep it well under `ulimit -n` (the database files, the log and the
//!   engine's own connections need some), and event streams (`max_event_streams`) well
//!   under it, so the app's pages always find a place.
//! - `TCP_NODELAY`, and a graceful shutdown that waits for open requests (call
//!   `engine.shutdown()` in `shutdown`, so event streams end too).
//!
//! One client can still take every place with slow requests: per-client limits belong
//! to the reverse proxy in front (nginx `limit_conn`, `client_header_timeout`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` with at most `max_connections` connections open, until
/// `shutdown` completes; then waits for the open requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let places = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: the header read timeout is HTTP/1's (an HTTP/2 connection opened in
    // clear text would not be timed).
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before accept: try again.
                Err(error) => {
                    eprintln!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper times a request's headers from their first byte: a connection that
            // sends nothing at all is timed here, before it is handed over.
            let mut first = [0u8; 1];
            if tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first))
                .await
                .is_err()
            {
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            let _ = watcher.watch(connection).await;
            drop(place);
        });
    }
    graceful.shutdown().await;
    Ok(())
}
