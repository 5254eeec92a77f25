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
//!   the request: SHA-256 over method, path and query, media type and body. Forms are
//!   compared by their fields, not their bytes: a replay re-encodes them (`+` or `%20`,
//!   a `charset` parameter, a new multipart boundary) and is still the same request.
//! - The layer reads at most [`body_limit`](IdempotencyLayer::body_limit) (1 MiB) of
//!   the body before the route runs. A larger body is not refused: the route gets it
//!   whole, streamed, and its own limit (`DefaultBodyLimit`) decides, so adding the
//!   layer never changes what a route accepts. Only its beginning is fingerprinted
//!   then. If the client breaks off mid-body, the key is freed.
//! - A retry of a completed request gets the stored response with
//!   `Idempotent-Replayed: true`, and the handler is not called: the status, the body
//!   if it was kept, and the headers a client needs (`Content-Type`,
//!   `Content-Encoding`, `Content-Language`, `Content-Disposition`,
//!   `Content-Location`, `Location`, `Link`, `Cache-Control`, `ETag`,
//!   `Last-Modified`, `Vary` and every `HX-*`). The same key with a different request
//!   answers 422; while the first attempt is still running, 409 with `Retry-After: 1`.
//! - Only final answers are stored. A refusal for now frees the key, so the retry with
//!   the same key runs the handler again: 401, 403, 419, 408, 425, 429, every 5xx,
//!   any answer with `Retry-After`, and a redirect to a login page (3xx `Location`,
//!   `HX-Redirect`, `HX-Location`; see [`IdempotencyLayer::is_final`] and
//!   [`IdempotencyLayer::login_page`]). A `303 See Other` elsewhere, the usual answer
//!   to a successful form post, is final. A service error or a panic frees the key
//!   too. A handler that wrote and then answered with one of these will run again on
//!   the retry: that is what its answer asked for.
//! - A body over [`replay_body_limit`](IdempotencyLayer::replay_body_limit) (64 KiB),
//!   or one that fails part-way, is not kept, but its key is completed all the same:
//!   the replay gets the status and headers with an empty body,
//!   `Idempotent-Body-Omitted: true` and `HX-Reswap: none`, never a second run.
//! - A request whose client disconnects is not abandoned: it runs to completion in a
//!   task of its own and its response is stored (its handler may already have
//!   committed, so running it again could apply it twice). A server that dies
//!   mid-request leaves a claim whose lease (60 s by default) expires; the next retry
//!   takes it over.
//! - The store is bounded: [`max_bytes`](IdempotencyLayer::max_bytes) (64 MiB) and
//!   [`max_keys`](IdempotencyLayer::max_keys) (100 000). Over either, the oldest
//!   completed keys lose their bodies first (their key rows still stop a second run),
//!   and only if that is not enough are the oldest completed keys deleted, down to 90%
//!   of the budget; a replay of a deleted key runs again (logged as a warning). Keys in
//!   flight are never evicted. [`IdempotencyLayer::usage`] reports keys and bytes.
//! - Completed keys are kept for the retention window (24 h by default) and deleted by
//!   a request at most once a minute, so no background task is needed.
//!
//! The table lives in the engine's database, so every process serving that file shares
//! the keys. Keys are not scoped per user: whoever sends a stored key with the same
//! request gets its response, so keys must be unguessable (the client uses UUIDs).
//!
//! # What this guarantees, and what it does not
//!
//! Once a final response is stored, no replay with its key reaches the handler again
//! within its retention, whatever the size of the answer, unless the key budget forced
//! the key out: duplicate delivery (a response lost on the way back, a double submit,
//! two tabs replaying one queue) is applied once. Two different requests over the body
//! limit that share a key and their beginning are taken for one. What remains is a crash between the handler's
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
#[cfg(feature = "sqlite")]
pub(crate) use self::store::migrate;
#[cfg(feature = "postgres")]
pub(crate) use self::store::{Found, KeyRow};
