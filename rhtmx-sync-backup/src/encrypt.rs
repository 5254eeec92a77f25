//! age encryption over any [`ObjectStore`]: names stay readable, contents are encrypted
//! and authenticated.
//!
//! A store opened with a passphrase holds its keys under `keys/`: each an age X25519
//! identity, itself encrypted with the passphrase (age's scrypt recipient), named
//! `keys/{UUIDv7}.age`. Objects are encrypted to the oldest key (the first by name), so
//! scrypt (about a second of work by design) runs once per key when the store is
//! opened, not once per object, and a wrong passphrase is told apart at once from a
//! damaged object. Two processes opening a fresh store at once each write a key; both
//! stay, and every reader opens both, so no object is ever encrypted to a key the store
//! does not hold.
//!
//! age to an X25519 key says who may read, not who wrote: anyone who learned the public
//! key could encrypt an object to it. So each object ends with an HMAC-SHA256 of its
//! name and ciphertext under a key derived from the secret identity: only a holder of
//! the passphrase (or the identity) can write an object a reader accepts, and an object
//! moved under another name is refused.

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::store::ObjectStore;
use crate::{Error, Result};

/// Where a store's keys are: `keys/{UUIDv7}.age` (passphrase) or `keys/{UUIDv7}.check`
/// (an age identity the operator keeps; the object only tells that identity apart).
pub const KEYS: &str = "keys/";

/// The prefixes of the objects encryption protects.
const DATA: [&str; 2] = ["snapshots/", "bundles/"];

/// Bytes of the HMAC at the end of every object.
const TAG: usize = 32;

/// One key: the identity, and the HMAC key derived from it.
#[derive(Clone)]
struct Key {
    identity: x25519::Identity,
    mac: [u8; 32],
}

impl Key {
    fn new(identity: x25519::Identity) -> Key {
        let mut h = Sha256::new();
        h.update(b"rhtmx-sync-backup object mac\0");
        h.update(identity.to_string().expose_secret().as_bytes());
        Key {
            identity,
            mac: h.finalize().into(),
        }
    }

    fn tag(&self, name: &str, body: &[u8]) -> [u8; TAG] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    fn verifies(&self, name: &str, body: &[u8], tag: &[u8]) -> bool {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac).expect("any key length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(body);
        mac.verify_slice(tag).is_ok()
    }
}

/// An [`ObjectStore`] whose objects are age-encrypted and authenticated before they
/// reach `S`.
///
/// Each object is an age file (binary: ChaCha20-Poly1305 in 64 KiB chunks) followed by
/// a 32-byte HMAC-SHA256 of its name and the file. A truncated, altered, forged or
/// moved object is reported as [`Error::Corrupt`], never returned. Names are not
/// encrypted.
pub struct Encrypted<S> {
    inner: S,
    /// The key new objects are written with.
    writer: Key,
    /// Every key of the store (the writer's among them).
    keys: Vec<Key>,
}

impl<S> std::fmt::Debug for Encrypted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not even the public key: it is the store's to keep.
        f.debug_struct("Encrypted")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<S: ObjectStore> Encrypted<S> {
    /// Opens `inner` with `passphrase`: decrypts its keys, or, in a store with neither
    /// keys nor data, makes one.
    ///
    /// # Errors
    ///
    /// [`Error::WrongPassphrase`] if the passphrase opens none of its keys;
    /// [`Error::Encryption`] if it is empty, if the store holds keys of another
    /// passphrase too, data without keys (plain backups, or its keys were removed), or
    /// is encrypted to an age identity; [`Error::Store`] if the store fails.
    pub async fn with_passphrase(inner: S, passphrase: &str) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::Encryption("the passphrase is empty".into()));
        }
        let passphrase = SecretString::from(passphrase.to_owned());
        let (mut sealed, checks) = keys(&inner).await?;
        if !checks.is_empty() {
            return Err(Error::Encryption(
                "this store is encrypted to an age identity, not a passphrase".into(),
            ));
        }
        if sealed.is_empty() {
            refuse_data_without_keys(&inner).await?;
            let fresh = x25519::Identity::generate();
            let secret = fresh.to_string();
            let pass = passphrase.clone();
            let body = tokio::task::spawn_blocking(move || {
                age::encrypt(
                    &age::scrypt::Recipient::new(pass),
                    secret.expose_secret().as_bytes(),
                )
            })
            .await
            .expect("encryption does not panic")
            .map_err(|e| Error::Encryption(format!("cannot encrypt the key: {e}")))?;
            let name = format!("{KEYS}{}.age", uuid::Uuid::now_v7());
            inner.put(&name, body.into()).await?;
            // Another process may have made one meanwhile: use the oldest of all.
            sealed = keys(&inner).await?.0;
        }
        let mut opened = Vec::new();
        let mut refused = 0;
        for name in &sealed {
            let Some(body) = inner.get(name).await? else {
                continue;
            };
            let pass = passphrase.clone();
            let plain = tokio::task::spawn_blocking(move || {
                age::decrypt(&age::scrypt::Identity::new(pass), &body)
            })
            .await
            .expect("decryption does not panic");
            match plain {
                Ok(plain) => {
                    let identity = std::str::from_utf8(&plain)
                        .ok()
                        .and_then(|s| s.parse::<x25519::Identity>().ok())
                        .ok_or_else(|| Error::corrupt(name, "not an age identity"))?;
                    opened.push(Key::new(identity));
                }
                Err(
                    age::DecryptError::DecryptionFailed
                    | age::DecryptError::KeyDecryptionFailed
                    | age::DecryptError::NoMatchingKeys,
                ) => refused += 1,
                Err(e) => return Err(Error::corrupt(name, e.to_string())),
            }
        }
        match (opened.is_empty(), refused) {
            (true, _) => Err(Error::WrongPassphrase),
            (false, 0) => Ok(Self {
                inner,
                writer: opened[0].clone(),
                keys: opened,
            }),
            (false, _) => Err(Error::Encryption(
                "this store holds keys of another passphrase too: use one passphrase \
                 per store"
                    .into(),
            )),
        }
    }

    /// Encrypts to and decrypts with `identity` (an `AGE-SECRET-KEY-1…`), kept by the
    /// operator. The store keeps only `keys/{UUIDv7}.check`, which tells this identity
    /// apart from another without revealing it.
    ///
    /// # Errors
    ///
    /// [`Error::Encryption`] if the store is encrypted with a passphrase or to another
    /// identity, or holds plain backups; [`Error::Store`] if the store fails.
    pub async fn with_identity(inner: S, identity: x25519::Identity) -> Result<Self> {
        let key = Key::new(identity);
        let check = key.tag("check", b"");
        let (sealed, checks) = keys(&inner).await?;
        if !sealed.is_empty() {
            return Err(Error::Encryption(
                "this store is encrypted with a passphrase, not an age identity".into(),
            ));
        }
        let mut known = false;
        for name in &checks {
            if let Some(body) = inner.get(name).await? {
                if body.as_ref() != check {
                    return Err(Error::Encryption(
                        "this store is encrypted to another age identity".into(),
                    ));
                }
                known = true;
            }
        }
        if !known {
            refuse_data_without_keys(&inner).await?;
            let name = format!("{KEYS}{}.check", uuid::Uuid::now_v7());
            inner.put(&name, Bytes::copy_from_slice(&check)).await?;
        }
        Ok(Self {
            inner,
            writer: key.clone(),
            keys: vec![key],
        })
    }

    /// The store underneath, whose objects are the encrypted ones.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// The store's passphrase keys and identity checks, each sorted by name.
async fn keys<S: ObjectStore + ?Sized>(store: &S) -> Result<(Vec<String>, Vec<String>)> {
    let names = store.list(KEYS).await?;
    let sealed = names
        .iter()
        .filter(|n| n.ends_with(".age"))
        .cloned()
        .collect();
    let checks = names
        .iter()
        .filter(|n| n.ends_with(".check"))
        .cloned()
        .collect();
    Ok((sealed, checks))
}

async fn refuse_data_without_keys<S: ObjectStore + ?Sized>(store: &S) -> Result<()> {
    for prefix in DATA {
        if !store.list(prefix).await?.is_empty() {
            return Err(Error::Encryption(
                "this store holds backups but no key: they were made without encryption \
                 (use another prefix), or its keys/ were removed"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Refuses a plain (unencrypted) store's use of a store that holds keys.
pub(crate) async fn refuse_if_encrypted<S: ObjectStore + ?Sized>(store: &S) -> Result<()> {
    if !store.encrypted() && !store.list(KEYS).await?.is_empty() {
        return Err(Error::Encryption(
            "this store is encrypted: give its passphrase (or age identity)".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Encrypted<S> {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        let recipient = self.writer.identity.to_public();
        let mut sealed = tokio::task::spawn_blocking(move || age::encrypt(&recipient, &body))
            .await
            .expect("encryption does not panic")
            .map_err(|e| Error::Encryption(format!("cannot encrypt {name:?}: {e}")))?;
        let tag = self.writer.tag(name, &sealed);
        sealed.extend_from_slice(&tag);
        self.inner.put(name, sealed.into()).await
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let Some(stored) = self.inner.get(name).await? else {
            return Ok(None);
        };
        let Some(split) = stored.len().checked_sub(TAG) else {
            return Err(Error::corrupt(name, "shorter than its authentication tag"));
        };
        let (sealed, tag) = stored.split_at(split);
        let Some(key) = self.keys.iter().find(|k| k.verifies(name, sealed, tag)) else {
            return Err(Error::corrupt(
                name,
                "not written under this name by a holder of the key",
            ));
        };
        let identity = key.identity.clone();
        let sealed = stored.slice(..split);
        let plain = tokio::task::spawn_blocking(move || age::decrypt(&identity, &sealed))
            .await
            .expect("decryption does not panic")
            .map_err(|e| Error::corrupt(name, format!("does not decrypt: {e}")))?;
        Ok(Some(plain.into()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = self.inner.list(prefix).await?;
        names.retain(|n| !n.starts_with(KEYS));
        Ok(names)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }

    fn encrypted(&self) -> bool {
        true
    }
}
