//! What identifies a request: which requests are handled, their key and fingerprint.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::{request, HeaderMap, HeaderName, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

/// The request header carrying the client's key.
pub(super) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest key accepted, as in the IETF draft's examples and Stripe.
const MAX_KEY: usize = 255;

/// Whether the layer handles `req`: an unsafe method with a key. Safe methods are
/// idempotent already, and requests without a key opt out.
pub(super) fn applies<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && req.headers().contains_key(IDEMPOTENCY_KEY)
}

/// The key, or why it is refused (a 400): exactly one header of 1 to 255 visible ASCII
/// characters.
pub(super) fn key(headers: &HeaderMap) -> Result<String, &'static str> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("send exactly one Idempotency-Key header");
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err("Idempotency-Key must be 1 to 255 visible ASCII characters");
    }
    Ok(bytes.iter().map(|&b| char::from(b)).collect())
}

/// A keyed request's body, read up to the layer's limit.
pub(super) enum Incoming {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// A body larger than the limit: what was read (at least `limit + 1` bytes), and
    /// the rest, not read yet.
    Large {
        /// The bytes read so far.
        head: Bytes,
        /// The rest of the body.
        rest: Body,
    },
}

/// Reads `body` whole if it fits in `limit` bytes; otherwise stops past the limit and
/// hands back what was read and the rest, so the route still gets the whole body and
/// its own limit decides. A body the client broke off within the limit answers 400.
pub(super) async fn read(mut body: Body, limit: usize) -> Result<Incoming, Response> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            ));
        };
        // Trailers are not part of the request a form or upload makes.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read.extend_from_slice(&data);
        if read.len() > limit {
            return Ok(Incoming::Large {
                head: Bytes::from(read),
                rest: body,
            });
        }
    }
    Ok(Incoming::Whole(Bytes::from(read)))
}

impl Incoming {
    /// The body for the route: the same bytes, in order. A failure of the rest (the
    /// client broke off mid-upload) is passed on to the route as it would be without
    /// the layer, and recorded in `broken`.
    pub(super) fn into_body(self, broken: Arc<AtomicBool>) -> Body {
        match self {
            Incoming::Whole(bytes) => Body::from(bytes),
            Incoming::Large { head, rest } => {
                let rest = rest.into_data_stream().inspect(move |frame| {
                    if frame.is_err() {
                        broken.store(true, Ordering::Relaxed);
                    }
                });
                Body::from_stream(stream::once(async { Ok(head) }).chain(rest))
            }
        }
    }
}

/// SHA-256 (hex) over what makes two requests "the same": method, path and query,
/// media type and body. Other headers (cookies, user agent) may differ on a replay.
///
/// A body over `limit` is not held whole, so only its beginning counts: the first
/// `limit / 8` bytes of the canonical form of its first `limit` bytes. The margin is
/// for forms: a re-encoded form (`%20` or `+`, another multipart boundary) covers less
/// or more content in the same number of bytes, but at least an eighth as much, and
/// only the last few canonical bytes of a cut prefix can differ. Two large requests
/// that differ only further on are taken as the same request.
pub(super) fn fingerprint(parts: &request::Parts, body: &Incoming, limit: usize) -> String {
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (extent, media_type, canonical_body) = match body {
        Incoming::Whole(bytes) => {
            let (media_type, body) = canonical(content_type, bytes);
            ("whole", media_type, body)
        }
        Incoming::Large { head, .. } => {
            let (media_type, body) = canonical(content_type, &head[..limit]);
            let kept = body.len().min(limit / 8);
            let body = match body {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..kept]),
                Cow::Owned(mut b) => {
                    b.truncate(kept);
                    Cow::Owned(b)
                }
            };
            ("head", media_type, body)
        }
    };
    let mut hash = Sha256::new();
    for field in [
        parts.method.as_str().as_bytes(),
        target.as_bytes(),
        media_type.as_bytes(),
        // A whole body never matches the head of a larger one.
        extent.as_bytes(),
        &canonical_body,
    ] {
        // Length-prefixed, so moving bytes from one field to the next changes the hash.
        hash.update((field.len() as u64).to_be_bytes());
        hash.update(field);
    }
    format!("{:x}", hash.finalize())
}

/// A replayed form is encoded anew by the browser: spaces as `+` or `%20`, a `charset`
/// parameter or none, a fresh multipart boundary. None of that makes it a different
/// request, so forms are compared by their fields.
fn canonical<'a>(content_type: &str, body: &'a [u8]) -> (String, Cow<'a, [u8]>) {
    let mut params = content_type.split(';');
    let media_type = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let body = match media_type.as_str() {
        "application/x-www-form-urlencoded" => Cow::Owned(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form_urlencoded::parse(body))
                .finish()
                .into_bytes(),
        ),
        "multipart/form-data" => {
            let boundary = params.find_map(|p| {
                let (name, value) = p.split_once('=')?;
                let value = value.trim().trim_matches('"');
                (name.trim().eq_ignore_ascii_case("boundary") && !value.is_empty()).then_some(value)
            });
            match boundary {
                Some(b) => Cow::Owned(replace_all(body, b.as_bytes(), b"rhtmx-boundary")),
                None => Cow::Borrowed(body),
            }
        }
        _ => return (content_type.trim().to_owned(), Cow::Borrowed(body)),
    };
    (media_type, body)
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// A status with the crate's usual `{"error": "..."}` body.
pub(super) fn reject(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(content_type: &str, body: &str) -> String {
        let (parts, ()) = axum::http::Request::post("/todos")
            .header(CONTENT_TYPE, content_type)
            .body(())
            .unwrap()
            .into_parts();
        fingerprint(
            &parts,
            &Incoming::Whole(Bytes::from(body.to_owned())),
            1 << 20,
        )
    }

    #[test]
    fn a_re_encoded_form_is_the_same_request() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            fp(form, "title=a%20b&id=1"),
            fp(&format!("{form};charset=UTF-8"), "title=a+b&id=1")
        );
        assert_ne!(fp(form, "title=a+b"), fp(form, "title=a+c"));
        let multipart = |b: &str| {
            fp(
                &format!("multipart/form-data; boundary={b}"),
                &format!(
                    "--{b}\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\nx\r\n--{b}--\r\n"
                ),
            )
        };
        assert_eq!(
            multipart("AaB03x"),
            multipart("----WebKitFormBoundary7MA4YWxk")
        );
        assert_ne!(fp("application/json", "{}"), fp("text/plain", "{}"));
    }
}
