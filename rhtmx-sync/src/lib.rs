#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

extern crate self as rhtmx_sync;

mod broadcast;
mod capture;
mod engine;
mod entity;
mod error;
mod http;
mod idempotency;
mod log;
mod syncable;
mod wire;

#[doc(inline)]
pub use self::engine::{SyncConfig, SyncEngine, SyncEngineBuilder};
#[doc(inline)]
pub use self::error::{Error, Result};
#[doc(inline)]
pub use self::idempotency::{Idempotency, IdempotencyLayer};
#[doc(inline)]
pub use self::syncable::{SyncStrategy, Syncable};
#[doc(inline)]
pub use self::wire::Action;

/// Derives [`Syncable`] for a sqlx model; see the trait for the attributes.
pub use rhtmx_sync_macro::Syncable;
