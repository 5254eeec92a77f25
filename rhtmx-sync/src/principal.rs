//! Who a request is from, as the app knows it.
//!
//! The app tells the engine with an axum extractor of its own
//! ([`SyncEngineBuilder::authenticate`](crate::SyncEngineBuilder::authenticate)): its
//! session or auth crate's type, or a header. Today the idempotency layer uses it to
//! refuse a replayed write made by another user than the request's (the browser client
//! names the user a queued write was made by in `X-Rhtmx-Principal`), and the engine's
//! routes read and write within the principal's scopes ([`crate::scope`]).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use futures_util::future::BoxFuture;

/// Who a request is from: a user and, in multi-tenant apps, their tenant. Both `None`
/// is anonymous.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The signed-in user's id, as the app names it in its pages
    /// (`<meta name="rhtmx-principal">`).
    pub user: Option<String>,
    /// The user's tenant (organisation, team), if the app has them.
    pub tenant: Option<String>,
}

impl Principal {
    /// Nobody signed in.
    pub fn anonymous() -> Principal {
        Principal::default()
    }

    /// The signed-in user `id`.
    pub fn user(id: impl Into<String>) -> Principal {
        Principal {
            user: Some(id.into()),
            tenant: None,
        }
    }

    /// The same principal in `tenant`.
    pub fn in_tenant(mut self, tenant: impl Into<String>) -> Principal {
        self.tenant = Some(tenant.into());
        self
    }
}

/// Runs the app's extractor on a request's parts; a rejection is anonymous.
pub(crate) type Authenticator =
    Arc<dyn for<'a> Fn(&'a mut Parts) -> BoxFuture<'a, Principal> + Send + Sync>;

pub(crate) fn authenticator<E>() -> Authenticator
where
    E: FromRequestParts<()> + Into<Principal> + 'static,
{
    Arc::new(|parts: &mut Parts| {
        Box::pin(async move {
            E::from_request_parts(parts, &())
                .await
                .map_or_else(|_| Principal::anonymous(), Into::into)
        })
    })
}

/// [`Authenticator`] with a `Debug` for the types that carry it.
#[derive(Clone)]
pub(crate) struct Authenticate(pub Authenticator);

impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticate")
    }
}

/// The user a replayed write says it was made by (`X-Rhtmx-Principal`, percent-encoded
/// by the client), if it says.
pub(crate) fn made_by(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get("x-rhtmx-principal")?.to_str().ok()?;
    // encodeURIComponent never writes `+`, so form decoding is percent decoding here.
    let pair = format!("p={value}");
    let (_, decoded) = form_urlencoded::parse(pair.as_bytes()).next()?;
    Some(decoded.into_owned())
}

/// Who a request to the engine's routes is from (anonymous when the app gave no
/// extractor), with what they may read.
pub(crate) struct Asking(pub crate::scope::Access);

impl FromRequestParts<crate::SyncEngine> for Asking {
    type Rejection = crate::Error;

    async fn from_request_parts(
        parts: &mut Parts,
        engine: &crate::SyncEngine,
    ) -> Result<Self, Self::Rejection> {
        let principal = principal_of(engine, parts).await;
        Ok(Asking(engine.access(principal).await?))
    }
}

/// Runs the app's extractor, if it gave one, on a request's parts.
pub(crate) async fn principal_of(engine: &crate::SyncEngine, parts: &mut Parts) -> Principal {
    match &engine.inner.authenticate {
        Some(Authenticate(authenticate)) => authenticate(parts).await,
        None => Principal::anonymous(),
    }
}

/// What binding adds before a client id: 8 hex digits and `~`.
pub(crate) const BOUND_PREFIX: usize = 9;

/// A client id as the engine records it: bound to the principal that sent it, so that
/// no request can make its writes count as another user's client (a client's own
/// earlier writes are never its conflicts, see `conflict::merge`). An anonymous
/// request's id is kept as sent.
pub(crate) fn bind_client_id(principal: &Principal, client_id: &str) -> String {
    if principal.user.is_none() && principal.tenant.is_none() {
        return client_id.to_owned();
    }
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [&principal.user, &principal.tenant] {
        let part = part.as_deref().unwrap_or("");
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let tag: String = hash.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{tag}~{client_id}")
}

/// Rewrites a write's `X-Rhtmx-Client-Id` to the id bound to its principal (see
/// [`bind_client_id`]), for the app's handlers ([`SyncContext`](crate::SyncContext)).
pub(crate) async fn bind_request(
    authenticate: &Authenticate,
    req: axum::http::Request<axum::body::Body>,
) -> axum::http::Request<axum::body::Body> {
    let (mut parts, body) = req.into_parts();
    let principal = (authenticate.0)(&mut parts).await;
    bind_header(
        &principal,
        &mut parts.headers,
        axum::http::HeaderName::from_static(crate::CLIENT_ID_HEADER),
    );
    axum::http::Request::from_parts(parts, body)
}

/// Binds the one value of header `name`, if it has exactly one, to `principal` (see
/// [`bind_client_id`]); several values are left for the reader to refuse.
pub(crate) fn bind_header(
    principal: &Principal,
    headers: &mut axum::http::HeaderMap,
    name: axum::http::HeaderName,
) {
    let mut values = headers.get_all(&name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return;
    };
    let Ok(sent) = value.to_str() else { return };
    if let Ok(bound) = axum::http::HeaderValue::from_str(&bind_client_id(principal, sent)) {
        headers.insert(name, bound);
    }
}
