//! Exactly-once handling of replayed writes: a tower layer keyed by `Idempotency-Key`.
//!
//! The browser client queues htmx form submissions made offline and replays them when
//! the network returns, with an `Idempotency-Key` generated before the first attempt and
//! reused on every replay. [`IdempotencyLayer`] makes the app's own routes honour it,
//! following draft-ietf-httpapi-idempotency-key-header and Stripe:
//!
//! - Only `POST`, `PUT`, `PATCH` and `DELETE` requests that carry the header are
//!   handled; everything else passes straight through, its body untouched.
//! - The key (1 to 255 visible ASCII characters, else 400) is claimed in the table
//!   `_rhtmx_sync_idempotency` before the handler runs, together with a fingerprint of
//!   the request: SHA-256 over method, path and query, media type and body (the body
//!   is buffered up to the limit, 1 MiB by default; larger answers 413). Forms are
//!   compared by their fields, not their bytes: a replay re-encodes them (`+` or `%20`,
//!   a `charset` parameter, a new multipart boundary) and is still the same request.
//! - A retry of a completed request gets the stored response (status, `Content-Type`,
//!   `Location`, `Vary`, every `HX-*` header, body) with `Idempotent-Replayed: true`,
//!   and the handler is not called. The same key with a different request answers 422;
//!   while the first attempt is still running, 409 with `Retry-After: 1`.
//! - A 5xx, a service error, a panic and a response larger than the limit release the
//!   key: the retry runs the handler again. A request whose client disconnects is not
//!   abandoned: it runs to completion in a task of its own and its response is stored
//!   (its handler may already have committed, so running it again could apply it
//!   twice). A server that dies mid-request leaves a claim whose lease
//!   (60 s by default) expires; the next retry takes it over.
//! - Completed keys are kept for the retention window (24 h by default) and deleted by
//!   a request at most once a minute, so no background task is needed.
//!
//! The table lives in the engine's database, so every process serving that file shares
//! the keys. Keys are not scoped per user: whoever sends a stored key with the same
//! request gets its response, so keys must be unguessable (the client uses UUIDs).
//!
//! # What this guarantees, and what it does not
//!
//! Once a response is stored, no replay with its key reaches the handler again:
//! duplicate delivery (a response lost on the way back, a double submit, two tabs
//! replaying one queue) is applied once. What remains is a crash between the handler's
//! commit and the stored response, which are two transactions: the claim expires and
//! the retry runs the handler a second time. Creates close that window themselves with
//! client-generated UUIDv7 ids and `ON CONFLICT DO NOTHING`; `PUT` and `DELETE` are
//! idempotent by nature. A non-idempotent `POST`, such as a toggle, is protected only
//! against duplicate delivery, not against that crash. Likewise a handler that runs
//! longer than the lease can be run concurrently by a retry: keep the lease above the
//! slowest handler.

mod budget;
mod finality;
mod layer;
mod request;
mod response;
mod service;
mod store;

pub use self::budget::IdempotencyUsage;
pub use self::layer::IdempotencyLayer;
pub use self::service::Idempotency;
pub(crate) use self::store::migrate;
