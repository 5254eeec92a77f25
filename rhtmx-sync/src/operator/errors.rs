//! The errors the engine's routes answered with lately: a bounded ring, fed by a
//! middleware on [`SyncEngine::routes`](crate::SyncEngine::routes).
//!
//! [`Error`](crate::Error)'s `IntoResponse` attaches its full message to the response
//! as an extension ([`Failure`]), never sent to the client; the middleware reads it on
//! the way out. The operator view may show what the client was not told (a database
//! error's text): it is behind the app's own auth. The ring keeps the last
//! [`KEPT`] errors and their total since the engine was built; nothing is written to
//! the database, so an error storm costs a few hundred bytes each at most.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::figures::ErrorFigure;

/// How many recent errors are kept.
pub(crate) const KEPT: usize = 50;

/// The longest message kept, in bytes.
const MAX_MESSAGE: usize = 300;

/// An error's full message, attached to its response for [`record`]; not sent.
#[derive(Debug, Clone)]
pub(crate) struct Failure(pub String);

/// The last [`KEPT`] errors of one engine's routes, and how many there were in all.
#[derive(Debug, Default)]
pub(crate) struct RecentErrors {
    total: AtomicU64,
    ring: Mutex<VecDeque<ErrorFigure>>,
}

impl RecentErrors {
    /// Keeps `error`, forgetting the oldest beyond [`KEPT`].
    pub(crate) fn push(&self, mut error: ErrorFigure) {
        if error.message.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE)
                .rev()
                .find(|&i| error.message.is_char_boundary(i))
                .unwrap_or(0);
            error.message.truncate(cut);
            error.message.push('…');
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(error);
    }

    /// The errors kept, newest first, and the total since the engine was built.
    pub(crate) fn read(&self) -> (Vec<ErrorFigure>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        (
            ring.iter().rev().cloned().collect(),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// The middleware: keeps the error a response carries, if any. The path is kept
/// without its query (a cursor, an entity list: not needed to see what failed).
pub(crate) async fn record(
    State(errors): State<Arc<RecentErrors>>,
    request: Request,
    next: Next,
) -> Response {
    // Cheap clones (a `Uri` shares its bytes): this runs on every request.
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    if let Some(Failure(message)) = response.extensions().get::<Failure>() {
        errors.push(ErrorFigure {
            at_ms: crate::hlc::system_ms(),
            status: response.status().as_u16(),
            method: method.to_string(),
            path: uri.path().to_owned(),
            message: message.clone(),
        });
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(n: usize) -> ErrorFigure {
        ErrorFigure {
            at_ms: n as u64,
            status: 404,
            method: "GET".into(),
            path: format!("/api/sync/t{n}"),
            message: "é".repeat(n),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_counts_them_all() {
        let errors = RecentErrors::default();
        for n in 0..KEPT + 5 {
            errors.push(error(n));
        }
        let (kept, total) = errors.read();
        assert_eq!(total, (KEPT + 5) as u64);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].at_ms, (KEPT + 4) as u64);
        assert_eq!(kept[KEPT - 1].at_ms, 5);
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let errors = RecentErrors::default();
        errors.push(error(400));
        let (kept, _) = errors.read();
        assert!(kept[0].message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(kept[0].message.ends_with('…'));
    }
}
