#![doc = include_str!("../README.md")]

mod bundles;
pub mod encrypt;
mod error;
mod manifest;
mod restore;
mod snapshot;
pub mod store;

#[doc(inline)]
pub use self::bundles::{Bundles, SyncReport};
#[doc(inline)]
pub use self::encrypt::Encrypted;
#[doc(inline)]
pub use self::error::{Error, Result};
#[doc(inline)]
pub use self::manifest::Backup;
#[doc(inline)]
pub use self::restore::{Progress, RestoreOptions, Restored};
#[doc(inline)]
pub use self::snapshot::{Backups, PART_SIZE};
#[doc(inline)]
pub use self::store::{DirStore, MemoryStore, ObjectStore, S3Config, S3Store};
