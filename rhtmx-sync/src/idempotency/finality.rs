//! Which answers are final, and so stored for replay.
//!
//! A stored answer is what every retry with the key gets for the retention window, so
//! only an answer the same request would get again may be stored. "Log in again",
//! "slow down" and "try later" are answers about the moment, not the request: storing
//! them would refuse the write for a day after the user logged in again.

use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, StatusCode};

/// htmx's client-side redirects: a full page load, or an AJAX one (a path or JSON
/// `{"path": ...}`).
const HX_REDIRECT: HeaderName = HeaderName::from_static("hx-redirect");
const HX_LOCATION: HeaderName = HeaderName::from_static("hx-location");

/// The word a login page's path has after a `/`, as in the browser client's default
/// `data-login-pattern` (`/(login|signin|sign-in|auth)\b`).
const LOGIN_WORDS: [&str; 4] = ["login", "signin", "sign-in", "auth"];

/// Whether the answer `status` + `headers` is final; `is_login` recognises a login
/// page's path.
pub(super) fn is_final(
    status: StatusCode,
    headers: &HeaderMap,
    is_login: fn(&str) -> bool,
) -> bool {
    if retry_later(status) || headers.contains_key(RETRY_AFTER) {
        return false;
    }
    !redirect_targets(status, headers).any(|path| is_login(&path))
}

/// Statuses that ask for the same request again later: after logging in again (401,
/// 403, Laravel's 419 "page expired"), after a pause (408, 425, 429), or after the
/// server recovers (5xx).
fn retry_later(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 408 | 419 | 425 | 429) || status.is_server_error()
}

/// The paths the answer sends the browser to: `Location` of a 3xx, `HX-Redirect`,
/// `HX-Location`.
fn redirect_targets<'a>(
    status: StatusCode,
    headers: &'a HeaderMap,
) -> impl Iterator<Item = String> + 'a {
    let location = status
        .is_redirection()
        .then(|| headers.get_all(LOCATION).iter())
        .into_iter()
        .flatten();
    let hx_redirect = headers.get_all(HX_REDIRECT).iter();
    let hx_location = headers.get_all(HX_LOCATION).iter().map(|value| {
        // `HX-Location` is a path, or JSON whose `path` is one.
        let text = value.to_str().unwrap_or_default().trim();
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(json) if json.is_object() => json["path"].as_str().unwrap_or_default().to_owned(),
            _ => text.to_owned(),
        }
    });
    location
        .chain(hx_redirect)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .chain(hx_location)
        .map(|target| path_of(&target))
}

/// The path of a URL or reference: `http://h/login?x` and `/login?x` give `/login`. A
/// relative reference (`login`) is read as if it began with `/`, since the page it is
/// resolved against is not known here.
fn path_of(target: &str) -> String {
    let target = target.trim();
    // `Uri` reads `login` as a host, so only absolute URLs go through it.
    let path = match target.parse::<axum::http::Uri>() {
        Ok(uri) if uri.scheme().is_some() => uri.path().to_owned(),
        _ => target
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

/// The default login-page rule: some `/` in `path` is followed by `login`, `signin`,
/// `sign-in` or `auth` (any case) and then by the end or a character that is not a
/// letter, digit or `_` — the browser client's default `data-login-pattern`, so
/// server and client agree on what "log in again" looks like.
pub(super) fn is_login_page(path: &str) -> bool {
    path.match_indices('/').any(|(at, _)| {
        let rest = &path.as_bytes()[at + 1..];
        LOGIN_WORDS.iter().any(|word| {
            rest.len() >= word.len()
                && rest[..word.len()].eq_ignore_ascii_case(word.as_bytes())
                && rest
                    .get(word.len())
                    .is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_pages_are_recognised_like_the_browser_client_does() {
        for path in [
            "/login",
            "/Login?next=/",
            "/auth/sign-in",
            "/users/signin",
            "/sign-in.html",
            "/a/auth",
        ] {
            assert!(is_login_page(&path_of(path)), "{path}");
        }
        for path in [
            "/",
            "/loginhelp",
            "/blog/authors",
            "/oauth2/callback",
            "/todos",
            "/logins",
        ] {
            assert!(!is_login_page(&path_of(path)), "{path}");
        }
        assert_eq!(path_of("https://example.com/login?next=/x#top"), "/login");
        assert_eq!(path_of("login"), "/login");
    }

    #[test]
    fn a_see_other_after_a_post_is_final_and_a_redirect_to_log_in_is_not() {
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            headers
        };
        let see_other = StatusCode::SEE_OTHER;
        assert!(is_final(
            see_other,
            &with("location", "/todos"),
            is_login_page
        ));
        assert!(!is_final(
            see_other,
            &with("location", "/login"),
            is_login_page
        ));
        // A `Location` on a 201 names the created resource; it is not a redirect.
        assert!(is_final(
            StatusCode::CREATED,
            &with("location", "/auth/1"),
            is_login_page
        ));
        assert!(!is_final(
            StatusCode::OK,
            &with("hx-redirect", "/login"),
            is_login_page
        ));
        assert!(!is_final(
            StatusCode::OK,
            &with("hx-location", r#"{"path": "/signin"}"#),
            is_login_page
        ));
        assert!(!is_final(
            StatusCode::CONFLICT,
            &with("retry-after", "1"),
            is_login_page
        ));
        assert!(is_final(
            StatusCode::CONFLICT,
            &HeaderMap::new(),
            is_login_page
        ));
    }
}
