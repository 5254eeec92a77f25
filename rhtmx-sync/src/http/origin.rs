//! Cross-site writes are refused: a push is applied only when the browser says it comes
//! from the app's own origin (or one the app allows).
//!
//! Browsers send `Sec-Fetch-Site` with every request (Fetch Metadata) and `Origin` with
//! every cross-origin or unsafe one; either is enough to tell where a request comes
//! from. A request with neither is not from a browser page (curl, a server, a test) and
//! carries no ambient credentials a forged page could abuse, so it passes. This is the
//! check OWASP recommends next to tokens; it does not replace the app's CSRF protection
//! of its own routes.

use axum::http::{header, HeaderMap};

use crate::error::{Error, Result};

/// Refuses (403) an unsafe request from another site or origin not in `allowed`
/// (origins as `scheme://host[:port]`, see
/// [`SyncEngineBuilder::allowed_origins`](crate::SyncEngineBuilder::allowed_origins)).
pub(crate) fn same_origin(headers: &HeaderMap, allowed: &[String]) -> Result<()> {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = get(header::ORIGIN);
    let listed = origin.is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
    let from_here = match get(header::HeaderName::from_static("sec-fetch-site")) {
        // A user typing the address, or a page of this very origin.
        Some(site) => matches!(site, "same-origin" | "none"),
        None => match origin {
            None => true,
            // The origin's authority against the one the request was sent to.
            Some(origin) => origin
                .split_once("://")
                .is_some_and(|(_, authority)| Some(authority) == get(header::HOST)),
        },
    };
    if from_here || listed {
        Ok(())
    } else {
        Err(Error::CrossSite)
    }
}
