//! The response side: buffering it for storage, what is kept, and how it is replayed.

use axum::body::{Body, Bytes, HttpBody};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LOCATION,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, LINK, LOCATION, VARY,
};
use axum::http::{response, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::{stream, StreamExt};
use http_body_util::BodyExt;

/// The header that marks a replayed response.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The header that marks a replay whose body was not kept.
const BODY_OMITTED: HeaderName = HeaderName::from_static("idempotent-body-omitted");
/// htmx's swap override: `none` leaves the page as it is.
const HX_RESWAP: HeaderName = HeaderName::from_static("hx-reswap");

/// A response body after trying to buffer it.
pub(super) enum Buffered {
    /// The whole body, within the limit: kept for replay.
    Kept(Bytes),
    /// Too large, or it failed part-way: the same bytes, to stream on; the replay will
    /// go without it.
    Omitted(Body),
}

/// Reads `body` whole if it fits in `limit` bytes; otherwise hands back an equivalent
/// body (what was read, then the rest) so the client still gets the full response.
pub(super) async fn buffer(mut body: Body, limit: usize) -> Buffered {
    if body.size_hint().lower() > limit as u64 {
        return Buffered::Omitted(body);
    }
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                // Trailers are not kept: htmx responses have none.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if read.len() + data.len() > limit {
                    let head = stream::iter([Ok(Bytes::from(read)), Ok(data)]);
                    return Buffered::Omitted(Body::from_stream(
                        head.chain(body.into_data_stream()),
                    ));
                }
                read.extend_from_slice(&data);
            }
            // Pass the failure on, so the client sees a broken response as it would
            // without the layer.
            Err(e) => {
                let items = stream::iter([Ok(Bytes::from(read)), Err(e)]);
                return Buffered::Omitted(Body::from_stream(items));
            }
        }
    }
    Buffered::Kept(Bytes::from(read))
}

/// A response as stored for replay.
#[derive(Debug)]
pub(super) struct Stored {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None` when the body was too large to keep, failed, or was dropped to keep the
    /// store within its budget.
    pub body: Option<Bytes>,
}

/// The headers a replay needs besides the `HX-*` ones (every htmx instruction:
/// `HX-Trigger`, `HX-Redirect`, `HX-Retarget`, ...): what the body is and how it is
/// encoded (a compressed body is stored compressed), where a create went or a redirect
/// points, and how the answer may be cached. Others, such as `Set-Cookie` or `Date`,
/// belong to the first exchange only; `Retry-After` never reaches the store, since an
/// answer that carries it is not final.
const KEPT: [HeaderName; 11] = [
    CONTENT_TYPE,
    CONTENT_ENCODING,
    CONTENT_LANGUAGE,
    CONTENT_DISPOSITION,
    CONTENT_LOCATION,
    LOCATION,
    LINK,
    CACHE_CONTROL,
    ETAG,
    LAST_MODIFIED,
    VARY,
];

fn kept(name: &HeaderName) -> bool {
    KEPT.contains(name) || name.as_str().starts_with("hx-")
}

impl Stored {
    /// What to store of a response whose body is `body` (`None`: not kept).
    pub(super) fn capture(parts: &response::Parts, body: Option<Bytes>) -> Stored {
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if kept(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Stored {
            status: parts.status,
            headers,
            body,
        }
    }

    /// The headers as a JSON array of `[name, value]` pairs, in order, repeats kept.
    /// A value that is not visible ASCII (rare, and invalid for the kept headers) is
    /// left out rather than altered.
    pub(super) fn headers_json(&self) -> String {
        let pairs: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter_map(|(name, value)| match value.to_str() {
                Ok(value) => Some((name.as_str(), value)),
                Err(_) => {
                    tracing::warn!(header = %name, "not replayed: the value is not ASCII");
                    None
                }
            })
            .collect();
        serde_json::json!(pairs).to_string()
    }

    /// Rebuilds a stored response from its columns.
    pub(super) fn decode(
        status: i64,
        headers: &str,
        body: Option<Vec<u8>>,
    ) -> crate::Result<Stored> {
        let bad = |what: String| sqlx::Error::Decode(what.into());
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| bad(format!("stored status {status} is not a status")))?;
        let pairs: Vec<(String, String)> =
            serde_json::from_str(headers).map_err(|e| sqlx::Error::Decode(e.into()))?;
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::try_from(name).map_err(|e| bad(e.to_string()))?;
            let value = HeaderValue::try_from(value).map_err(|e| bad(e.to_string()))?;
            map.append(name, value);
        }
        Ok(Stored {
            status,
            headers: map,
            body: body.map(Bytes::from),
        })
    }

    /// The response a retry gets, marked `Idempotent-Replayed: true`.
    ///
    /// Without its body it is the stored status and headers with an empty body, marked
    /// `Idempotent-Body-Omitted: true`, and `HX-Reswap: none` so htmx does not swap
    /// the empty body over the target; headers that describe the missing bytes
    /// (`Content-Encoding`, `ETag`) are left out.
    pub(super) fn replay(self) -> Response {
        let mut headers = self.headers;
        let body = match self.body {
            Some(body) => Body::from(body),
            None => {
                headers.remove(CONTENT_ENCODING);
                headers.remove(ETAG);
                headers.insert(HX_RESWAP, HeaderValue::from_static("none"));
                headers.insert(BODY_OMITTED, HeaderValue::from_static("true"));
                Body::empty()
            }
        };
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        *res.headers_mut() = headers;
        res.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
        res
    }
}
