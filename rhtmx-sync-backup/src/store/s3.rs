//! A store in an S3 bucket (AWS or any S3-compatible server), through `aws-sdk-s3`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use bytes::Bytes;

use super::{check_name, ObjectStore};
use crate::{Error, Result};

/// Where an [`S3Store`] keeps its objects, and how it signs in. Everything is given:
/// nothing is read from the environment or `~/.aws` (the command line reads the
/// standard `AWS_*` variables itself).
#[derive(Clone)]
pub struct S3Config {
    /// The server's URL, e.g. `http://127.0.0.1:9000` or `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// Objects are stored under `{prefix}/`; empty for the bucket's root.
    pub prefix: String,
    /// The region requests are signed for (SigV4), e.g. `us-east-1`.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key; never printed (see the `Debug` impl).
    pub secret_access_key: String,
    /// A session token, for temporary credentials; never printed.
    pub session_token: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers
    /// need; `false` for virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("path_style", &self.path_style)
            .finish()
    }
}

/// Objects in an S3 bucket under a prefix.
///
/// Requests are signed with SigV4 and sent over one TLS stack (rustls on ring), or plain
/// HTTP for an `http://` endpoint. Throttling, 5xx answers and cut connections are retried
/// by the SDK with exponential backoff (6 attempts in all); a body that breaks off while
/// it is read is fetched again, up to 6 times. Each attempt times out after 120 s.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// Attempts per request, the SDK's and the re-reads of a broken body alike.
const ATTEMPTS: u32 = 6;

impl S3Store {
    /// A store for `config`. Nothing is sent until the first operation.
    pub fn new(config: S3Config) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let sdk = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region))
            .endpoint_url(config.endpoint)
            .force_path_style(config.path_style)
            .credentials_provider(Credentials::new(
                config.access_key_id,
                config.secret_access_key,
                config.session_token,
                None,
                "rhtmx-sync",
            ))
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            .build();
        let prefix = config.prefix.trim_matches('/');
        Self {
            client: aws_sdk_s3::Client::from_conf(sdk),
            bucket: config.bucket,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    fn key(&self, name: &str) -> Result<String> {
        check_name(name)?;
        Ok(format!("{}{name}", self.prefix))
    }
}

fn failed<'a, E, R>(
    operation: &'static str,
    name: &'a str,
) -> impl FnOnce(SdkError<E, R>) -> Error + 'a
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: fmt::Debug + 'static,
{
    move |e| {
        // The server's own words when it answered (`AccessDenied: …`); else what broke.
        let reason = match (e.code(), e.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => match &e {
                SdkError::DispatchFailure(f) if f.is_io() || f.is_timeout() => {
                    format!("cannot reach the server: {}", chain(&e))
                }
                _ => chain(&e),
            },
        };
        Error::Store {
            operation,
            name: name.to_owned(),
            reason,
        }
    }
}

/// Whether the SDK found the body's checksum (CRC32 or the like, stored at upload)
/// differs from the bytes that came.
fn checksum_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<aws_smithy_checksums::body::validate::Error>()
            .is_some()
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        let key = self.key(name)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(failed("put", name))?;
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let key = self.key(name)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(res) => res,
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    return Ok(None)
                }
                Err(e) => return Err(failed("get", name)(e)),
            };
            // The SDK retries the request, not the body: a connection cut while the
            // body streams (or a body shorter than its length) is read again here.
            let expected = res.content_length();
            match res.body.collect().await {
                Ok(body) => {
                    let body = body.into_bytes();
                    let whole = expected.is_none_or(|n| n == body.len() as i64);
                    if whole {
                        return Ok(Some(body));
                    }
                    if attempt >= ATTEMPTS {
                        return Err(Error::corrupt(name, "the body is shorter than its length"));
                    }
                }
                Err(e) if attempt >= 2 && checksum_mismatch(&e) => {
                    // Twice other bytes than were stored: damaged at rest, not in transit.
                    return Err(Error::corrupt(name, chain(&e)));
                }
                Err(e) if attempt >= ATTEMPTS => {
                    return Err(Error::Store {
                        operation: "get",
                        name: name.to_owned(),
                        reason: chain(&e),
                    })
                }
                Err(e) => tracing::debug!(name, attempt, error = %e, "object body broke off"),
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(failed("list", prefix))?;
            for object in page.contents() {
                if let Some(name) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(failed("delete", name))?;
        Ok(())
    }
}
