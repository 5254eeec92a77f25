//! The operator routes: the page, and the same figures as JSON.

use axum::extract::rejection::NestedPathRejection;
use axum::extract::{NestedPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::Result;
use crate::SyncEngine;

/// `GET /` (HTML, or JSON by `Accept`) and `GET /figures.json`, relative: the app
/// places them with `Router::nest`. Nothing is cached anywhere: the figures are of now,
/// and they name users.
pub(crate) fn router<S>(engine: SyncEngine) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/", get(view))
        .route("/figures.json", get(json))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(engine)
}

/// The page; JSON for a client that asks for it (see [`wants_json`]).
async fn view(
    State(engine): State<SyncEngine>,
    nested: Result<NestedPath, NestedPathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let figures = engine.figures().await?;
    let mut response = if wants_json(&headers) {
        Json(figures).into_response()
    } else {
        // The JSON's address, wherever the app nested the routes.
        let base = nested.as_ref().map_or("", |n| n.as_str());
        let href = format!("{}/figures.json", base.trim_end_matches('/'));
        let mut page = Html(super::page::render(&figures, &href).into_string()).into_response();
        // A page with no script, no frame and no image: nothing else may load in it.
        page.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
        page
    };
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(response)
}

async fn json(State(engine): State<SyncEngine>) -> Result<Json<super::OperatorFigures>> {
    Ok(Json(engine.figures().await?))
}

/// Whether `Accept` names `application/json` and not `text/html` (a browser names
/// HTML; `curl -H 'Accept: application/json'` does not).
fn wants_json(headers: &HeaderMap) -> bool {
    let mut json = false;
    for value in headers.get_all(header::ACCEPT) {
        for range in value.to_str().unwrap_or_default().split(',') {
            let essence = range.split(';').next().unwrap_or_default().trim();
            if essence.eq_ignore_ascii_case("text/html") {
                return false;
            }
            json |= essence.eq_ignore_ascii_case("application/json");
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_a_client_asking_for_json_and_not_html_gets_json() {
        assert!(wants_json(&accept("application/json")));
        assert!(wants_json(&accept("Application/JSON; q=1, */*;q=0.1")));
        assert!(!wants_json(&HeaderMap::new()));
        assert!(!wants_json(&accept("*/*")));
        assert!(!wants_json(&accept(
            "text/html,application/xhtml+xml,application/json;q=0.9"
        )));
    }
}
