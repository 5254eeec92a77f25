#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

extern crate self as rhtmx_sync;

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("rhtmx-sync needs a database: enable the `sqlite` feature, `postgres`, or both");

mod apply;
mod audit;
mod backend;
mod broadcast;
#[cfg(feature = "sqlite")]
mod capture;
mod causal;
mod compaction;
pub mod conflict;
mod cursor;
mod engine;
mod entity;
mod erasure;
mod error;
pub mod hlc;
mod http;
mod idempotency;
pub mod integrity;
mod log;
pub mod operator;
mod parked;
mod permission;
mod principal;
pub mod replication;
mod restore;
mod scope;
mod syncable;
mod wire;
mod write;

pub use self::backend::Pool;
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use self::capture::{drop_triggers, drop_triggers_for, DROP_TRIGGERS_PAUSE};
#[doc(inline)]
pub use self::compaction::{Compaction, CompactionReport};
#[doc(inline)]
pub use self::conflict::{Conflict, ConflictResolver};
#[cfg(feature = "sqlite")]
#[doc(inline)]
pub use self::engine::SyncConfig;
#[doc(inline)]
pub use self::engine::{SyncEngine, SyncEngineBuilder};
#[doc(inline)]
pub use self::erasure::Erased;
#[doc(inline)]
pub use self::error::{BuildError, Error, Result};
#[doc(inline)]
pub use self::hlc::{Hlc, HlcClock};
#[doc(inline)]
pub use self::idempotency::{Idempotency, IdempotencyLayer, IdempotencyUsage};
#[doc(inline)]
pub use self::operator::OperatorFigures;
#[doc(inline)]
pub use self::permission::{Forbidden, PushedChange, ValidatePush, FORBIDDEN_HEADER};
pub use self::principal::Principal;
#[doc(inline)]
pub use self::restore::begin_new_history;
#[doc(inline)]
pub use self::scope::{BoxError, Scope, ScopeKeys};
#[doc(inline)]
pub use self::syncable::{SyncStrategy, Syncable};
pub use self::wire::Action;
#[doc(inline)]
pub use self::write::{
    SyncContext, WriteOutcome, Writer, BASE_VERSION_HEADER, CLIENT_ID_HEADER, HLC_HEADER,
};

/// Derives [`Syncable`] for a sqlx model; see the trait for the attributes.
pub use rhtmx_sync_macro::Syncable;
