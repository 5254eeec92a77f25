//! The usual protective headers, shared by the examples.

use axum::Router;

/// The usual protective headers on every answer, set only where a handler set none.
///
/// The content security policy allows what the page and rhtmx-sync's client need and
/// nothing else: scripts, the event stream (`connect-src`) and the offline service
/// worker (`worker-src`) from this origin only; inline styles (the page's own, htmx's
/// indicator style). No `eval`, so no `hx-on` attributes: the page's behaviour lives in
/// `assets/app.js`.
pub fn protective_headers(router: Router) -> Router {
    use axum::http::{header, HeaderName, HeaderValue};
    use tower_http::set_header::SetResponseHeaderLayer;
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    router
        .layer(set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; worker-src 'self'; \
             frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        ))
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(header::REFERRER_POLICY, "same-origin"))
}
