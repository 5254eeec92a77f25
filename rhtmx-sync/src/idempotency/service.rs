//! [`Idempotency`]: claims the key, runs the inner service once, stores or releases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::RETRY_AFTER;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tower_service::Service;

use super::finality;
use super::layer::Config;
use super::request;
use super::response::{self, Buffered, Stored};
use super::store::{now_ms, Claim, Store};
use crate::error::Error;
use crate::principal::{self, Authenticate};

/// The service [`IdempotencyLayer`](super::IdempotencyLayer) wraps around a route:
/// applies each `Idempotency-Key` once and replays the stored response to retries.
#[derive(Debug, Clone)]
pub struct Idempotency<S> {
    pub(super) inner: S,
    pub(super) store: Store,
    pub(super) config: Config,
    pub(super) authenticate: Option<Authenticate>,
}

impl<S> Service<Request<Body>> for Idempotency<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // `poll_ready` readied `self.inner`: use that one and keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // A write's client id is bound to who sends it (see `principal::bind_client_id`).
        let binds = self.authenticate.is_some()
            && !req.method().is_safe()
            && req.headers().contains_key(crate::CLIENT_ID_HEADER);
        if !binds && !request::applies(&req) {
            return Box::pin(inner.call(req));
        }
        let authenticate = self.authenticate.clone();
        let (store, config) = (self.store.clone(), self.config);
        if !request::applies(&req) {
            // Not keyed: only the client id to bind.
            return Box::pin(async move {
                let req = match &authenticate {
                    Some(authenticate) => principal::bind_request(authenticate, req).await,
                    None => req,
                };
                inner.call(req).await
            });
        }
        Box::pin(handle(inner, store, config, authenticate, req))
    }
}

/// One keyed request: admit it, run the inner service, keep or release the key.
///
/// All of it runs in a task of its own, so it finishes even if the client goes away:
/// dropped between claiming the key and settling it, the request would leave the key
/// "in flight" until its lease ran out; dropped after the handler committed, releasing
/// the key would let the replay apply it a second time. The response is stored for
/// the replay instead.
async fn handle<S>(
    inner: S,
    store: Store,
    config: Config,
    authenticate: Option<Authenticate>,
    req: Request<Body>,
) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    match tokio::spawn(run(inner, store, config, authenticate, req)).await {
        Ok(result) => result,
        // The handler panicked: let the panic carry on as it would without the layer
        // (the claim was released while unwinding).
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Ok(StatusCode::SERVICE_UNAVAILABLE.into_response()),
    }
}

async fn run<S>(
    mut inner: S,
    store: Store,
    config: Config,
    authenticate: Option<Authenticate>,
    mut req: Request<Body>,
) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = Response>,
{
    if let Some(authenticate) = authenticate {
        let (mut parts, body) = req.into_parts();
        let asking = (authenticate.0)(&mut parts).await;
        // A write queued for one user, replayed while another is signed in: refused
        // before the key is claimed, so the right user's replay still runs it.
        if let Some(by) = principal::made_by(&parts.headers) {
            if asking.user.as_deref() != Some(by.as_str()) {
                return Ok(request::reject(
                    StatusCode::FORBIDDEN,
                    "this write was made by another user than the one signed in",
                ));
            }
        }
        // A key names one principal's request: the same key from another principal is
        // another request, never answered with the first one's stored response.
        principal::bind_header(&asking, &mut parts.headers, request::IDEMPOTENCY_KEY);
        principal::bind_header(
            &asking,
            &mut parts.headers,
            axum::http::HeaderName::from_static(crate::CLIENT_ID_HEADER),
        );
        req = Request::from_parts(parts, body);
    }
    let broken = Arc::new(AtomicBool::new(false));
    let (claim, req) = match admit(store, config, req, broken.clone()).await {
        Admission::Answer(res) => return Ok(res),
        Admission::Run(claim, req) => (claim, req),
    };
    match inner.call(req).await {
        // The client broke off mid-body, so the route answered a request it never saw
        // whole (with a 400, typically): free the key for the client's retry.
        Ok(res) if broken.load(Ordering::Relaxed) => {
            claim.release().await;
            Ok(res)
        }
        Ok(res) => Ok(finish(claim, res, config).await),
        Err(e) => {
            claim.release().await;
            Err(e)
        }
    }
}

/// What to do with a keyed request.
enum Admission {
    /// Answer at once: a rejection, a 409 or 422, or a replay.
    Answer(Response),
    /// The key is claimed: run the request (its body buffered back in).
    Run(Held, Request<Body>),
}

/// Checks the key, reads and fingerprints the body (up to the limit), and claims the
/// key. The request to run gets the whole body back; `broken` is set if its unread
/// rest fails.
async fn admit(
    store: Store,
    config: Config,
    req: Request<Body>,
    broken: Arc<AtomicBool>,
) -> Admission {
    let key = match request::key(req.headers()) {
        Ok(key) => key,
        Err(why) => return Admission::Answer(request::reject(StatusCode::BAD_REQUEST, why)),
    };
    let (parts, body) = req.into_parts();
    let read = request::read(body, config.body_limit);
    let body = match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return Admission::Answer(rejection),
        Err(_) => {
            let mut res = request::reject(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            );
            // The rest may never come: do not wait for it on this connection.
            res.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return Admission::Answer(res);
        }
    };
    let fingerprint = request::fingerprint(&parts, &body, config.body_limit);
    let now = now_ms();
    store.prune_if_due(now, config.retention).await;
    let answer = match store.claim(&key, &fingerprint, now, config.lease).await {
        Ok(Claim::Won(attempt)) => {
            let claim = Held {
                store,
                key,
                attempt,
                armed: true,
            };
            return Admission::Run(claim, Request::from_parts(parts, body.into_body(broken)));
        }
        Ok(Claim::Completed(stored)) => stored.replay(),
        Ok(Claim::Mismatch) => {
            Error::invalid("this Idempotency-Key was already used for a different request")
                .into_response()
        }
        Ok(Claim::InFlight) => in_flight(),
        Err(e) => e.into_response(),
    };
    Admission::Answer(answer)
}

/// Stores the response for replay, or releases the key when a retry must run again
/// (the answer is not final). A body over the replay limit, or one that fails part-way,
/// is not kept, but the key is completed all the same: the handler has run, and a
/// replay must not run it again.
async fn finish(claim: Held, res: Response, config: Config) -> Response {
    // A refusal for now (log in again, slow down, server error) is no answer to the
    // request: the retry, with the same key, must run the handler again.
    if !finality::is_final(res.status(), res.headers(), config.login_page) {
        claim.release().await;
        return res;
    }
    let (parts, body) = res.into_parts();
    let (kept, body) = match response::buffer(body, config.replay_body_limit).await {
        Buffered::Kept(body) => (Some(body.clone()), Body::from(body)),
        Buffered::Omitted(body) => (None, body),
    };
    let store = claim.store.clone();
    claim.complete(Stored::capture(&parts, kept)).await;
    store.keep_within(config.budget).await;
    Response::from_parts(parts, body)
}

/// 409: the first attempt with this key has not finished yet.
fn in_flight() -> Response {
    let mut res = request::reject(
        StatusCode::CONFLICT,
        "a request with this Idempotency-Key is still in progress",
    );
    res.headers_mut()
        .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    res
}

/// A claimed key, released unless its response gets stored — also when the handler
/// panics, so the key never stays stuck until its lease runs out.
struct Held {
    store: Store,
    key: String,
    attempt: i64,
    armed: bool,
}

impl Held {
    /// Stores the response for replay. If that fails the key is released instead, so a
    /// retry runs again rather than waiting for the lease.
    async fn complete(mut self, stored: Stored) {
        match self.store.complete(&self.key, self.attempt, &stored).await {
            Ok(true) => self.disarm(),
            Ok(false) => {
                // Our lease ran out and a retry took the key over; its response counts.
                tracing::warn!(key = %self.key, "key taken over by a retry; response not stored");
                self.disarm();
            }
            Err(e) => {
                tracing::error!(error = %e, "storing the idempotent response failed");
                self.release().await;
            }
        }
    }

    /// Frees the key now. Disarmed only afterwards: if this future is dropped mid-way,
    /// `drop` still frees it.
    async fn release(mut self) {
        if let Err(e) = self.store.release(&self.key, self.attempt).await {
            tracing::error!(error = %e, "releasing an idempotency key failed");
        }
        self.disarm();
    }

    /// The key is settled (stored or released): nothing left for `drop` to do.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // No runtime means the process is shutting down; the lease covers that case.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, attempt) = (self.store.clone(), self.key.clone(), self.attempt);
        runtime.spawn(async move {
            if let Err(e) = store.release(&key, attempt).await {
                tracing::error!(error = %e, "releasing an abandoned idempotency key failed");
            }
        });
    }
}
