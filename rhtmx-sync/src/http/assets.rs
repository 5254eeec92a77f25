//! The embedded browser files: `client.js`, the opt-in service worker `sw.js` and the
//! developer overlay `debug.js` (fetched by the client only with `data-debug="true"`),
//! served with an ETag and revalidated on every load (their URLs carry no content hash).

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The client source, shipped inside the crate so `cargo publish` keeps it.
const CLIENT_JS: &str = include_str!("../js/rhtmx-sync.js");
const SW_JS: &str = include_str!("../js/sw.js");
const DEBUG_JS: &str = include_str!("../js/debug.js");

/// A file and its validator.
struct Asset {
    body: String,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: String) -> Asset {
        let etag = HeaderValue::from_str(&format!("\"{}\"", short_hash(&body)))
            .expect("hex is a valid header value");
        Asset { body, etag }
    }
}

fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

static CLIENT: LazyLock<Asset> = LazyLock::new(|| Asset::new(CLIENT_JS.to_owned()));
static DEBUG: LazyLock<Asset> = LazyLock::new(|| Asset::new(DEBUG_JS.to_owned()));
// The worker names its cache after its own content, so an update starts a fresh cache
// and deletes the old ones.
static SW: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(format!(
        "const VERSION = \"{}\";\n{SW_JS}",
        short_hash(&format!("{SW_JS}{CLIENT_JS}"))
    ))
});

pub(crate) async fn client_js(headers: HeaderMap) -> Response {
    serve(&CLIENT, &headers, None)
}

pub(crate) async fn debug_js(headers: HeaderMap) -> Response {
    serve(&DEBUG, &headers, None)
}

pub(crate) async fn service_worker(headers: HeaderMap) -> Response {
    // Served under the sync prefix, the worker may still control the whole app.
    let allowed = (
        HeaderName::from_static("service-worker-allowed"),
        HeaderValue::from_static("/"),
    );
    serve(&SW, &headers, Some(allowed))
}

fn serve(asset: &Asset, headers: &HeaderMap, extra: Option<(HeaderName, HeaderValue)>) -> Response {
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let etag = (header::ETAG, asset.etag.clone());
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.as_bytes() == asset.etag.as_bytes());
    let mut response = if fresh {
        (StatusCode::NOT_MODIFIED, [etag, cache]).into_response()
    } else {
        let kind = (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        ([kind, etag, cache], asset.body.clone()).into_response()
    };
    if let Some((name, value)) = extra {
        response.headers_mut().insert(name, value);
    }
    response
}
