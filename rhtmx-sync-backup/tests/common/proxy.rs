//! A proxy between the store and the S3 server that breaks requests on a schedule:
//! answers 500 without forwarding, cuts the connection after forwarding, or forwards
//! and cuts the answer's body off halfway.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, std::io::Error>;

/// What the proxy did, by kind.
#[derive(Default, Debug)]
pub struct Faults {
    pub requests: AtomicUsize,
    pub errors_500: AtomicUsize,
    pub cut: AtomicUsize,
    pub truncated: AtomicUsize,
    /// A truncation was due on a response without a body (an upload's): the next
    /// response with one is cut instead, so every run truncates whatever its order.
    pub truncation_due: std::sync::atomic::AtomicBool,
}

pub struct Proxy {
    pub endpoint: String,
    pub faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy to `upstream` that breaks every `every`-th request (cycling through the
    /// three faults) and passes the others through.
    pub async fn start(upstream: &str, every: usize) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Faults::default());
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.to_owned();
        let counted = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (client, upstream, faults) =
                    (client.clone(), upstream.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (client, upstream, faults) =
                            (client.clone(), upstream.clone(), faults.clone());
                        async move { handle(req, &client, &upstream, &faults, every).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy {
            endpoint,
            faults,
            task,
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &str,
    faults: &Faults,
    every: usize,
) -> Result<Response<Body>, std::io::Error> {
    let n = faults.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = if n.is_multiple_of(every) {
        (n / every) % 3
    } else {
        3
    };
    if fault == 0 {
        faults.errors_500.fetch_add(1, Ordering::SeqCst);
        let body = Full::new(Bytes::from_static(
            b"<Error><Code>InternalError</Code><Message>injected</Message></Error>",
        ))
        .map_err(|e: Infallible| match e {})
        .boxed();
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(body)
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let uri = format!(
        "{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut forward = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let res = client
        .request(forward.body(Full::new(body)).unwrap())
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if fault == 1 {
        // Done upstream, but the answer never arrives.
        faults.cut.fetch_add(1, Ordering::SeqCst);
        return Err(std::io::Error::other("injected: connection cut"));
    }
    let truncate = match fault {
        2 if body.len() <= 1 => {
            faults.truncation_due.store(true, Ordering::SeqCst);
            false
        }
        2 => true,
        _ => body.len() > 1 && faults.truncation_due.swap(false, Ordering::SeqCst),
    };
    if truncate {
        faults.truncated.fetch_add(1, Ordering::SeqCst);
        let half = body.slice(..body.len() / 2);
        let frames = futures_util::stream::iter(vec![
            Ok(Frame::data(half)),
            Err(std::io::Error::other("injected: body cut off")),
        ]);
        return Ok(Response::from_parts(parts, StreamBody::new(frames).boxed()));
    }
    Ok(Response::from_parts(
        parts,
        Full::new(body).map_err(|e: Infallible| match e {}).boxed(),
    ))
}
