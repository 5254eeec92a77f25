//! The htmx the example pages load, chosen at start by the `HTMX` environment variable:
//! htmx 2.0.11 by default, htmx 4.0.1 with `HTMX=4`, and htmx 4 with its htmx-2-compat
//! extension with `HTMX=4-compat`. Pinned copies, served by the app itself so a page
//! works offline; the browser tests check they are npm's files byte for byte.

use axum::{http::header, response::IntoResponse, routing::get, Router};

const HTMX_2: &str = include_str!("../todo_sync/assets/htmx-2.0.11.min.js");
const HTMX_4: &str = include_str!("../todo_sync/assets/htmx-4.0.1.min.js");
const COMPAT_4: &str = include_str!("../todo_sync/assets/htmx-2-compat-4.0.1.min.js");

/// The script paths a page loads, in order, for the htmx chosen by `HTMX`.
///
/// # Panics
/// On an `HTMX` value other than `2`, `4` and `4-compat`: a typo would otherwise test
/// htmx 2 while claiming to test htmx 4.
pub fn scripts() -> &'static [&'static str] {
    match std::env::var("HTMX").as_deref() {
        Err(_) | Ok("" | "2") => &["/assets/htmx-2.0.11.min.js"],
        Ok("4") => &["/assets/htmx-4.0.1.min.js"],
        Ok("4-compat") => &[
            "/assets/htmx-4.0.1.min.js",
            "/assets/htmx-2-compat-4.0.1.min.js",
        ],
        Ok(other) => panic!("HTMX={other}: expected 2, 4 or 4-compat"),
    }
}

/// htmx's configuration for the example pages: an answer of 4xx or 5xx swaps nothing,
/// under htmx 4 as under htmx 2 (htmx 4 swaps them by default; a refused write would
/// replace the list with its error text). htmx 2 ignores the key it does not know.
pub const CONFIG: &str = r#"{"noSwap":[204,304,"4xx","5xx"]}"#;

/// [`CONFIG`] as the `<meta>` tag htmx reads at load.
#[allow(dead_code)] // not every example writes its page by hand
pub fn config_tag() -> String {
    format!(r#"<meta name="htmx-config" content='{CONFIG}'>"#)
}

/// The page's `<script>` tags for [`scripts`], as HTML.
#[allow(dead_code)] // not every example writes its page by hand
pub fn script_tags() -> String {
    scripts()
        .iter()
        .map(|src| format!(r#"<script src="{src}"></script>"#))
        .collect()
}

/// Serves every pinned copy (a page cached offline under one version keeps working after
/// the app switches): immutable, since each path names its version.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let js = |source: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                ],
                source,
            )
                .into_response()
        })
    };
    Router::new()
        .route("/assets/htmx-2.0.11.min.js", js(HTMX_2))
        .route("/assets/htmx-4.0.1.min.js", js(HTMX_4))
        .route("/assets/htmx-2-compat-4.0.1.min.js", js(COMPAT_4))
}
