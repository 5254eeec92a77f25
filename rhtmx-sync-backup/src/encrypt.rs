//! age encryption over any [`ObjectStore`]: names stay readable, contents are encrypted
//! and authenticated.
//!
//! A store opened with a passphrase holds one extra object, [`KEY`]: an age X25519
//! identity, itself encrypted with the passphrase (age's scrypt recipient). Every other
//! object is encrypted to that identity's public key. So scrypt (about a second of work
//! by design) runs once when the store is opened, not once per object, and a wrong
//! passphrase is told apart at once from a damaged object.

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use async_trait::async_trait;
use bytes::Bytes;

use crate::store::ObjectStore;
use crate::{Error, Result};

/// The name of the store's key object: an age identity encrypted with the passphrase.
pub const KEY: &str = "key.age";

/// An [`ObjectStore`] whose objects are age-encrypted before they reach `S`.
///
/// Each object is an age file (binary, not armored): ChaCha20-Poly1305 in 64 KiB chunks,
/// so a truncated, altered or swapped-in foreign object fails to decrypt and is
/// reported as [`Error::Corrupt`], never returned. Names are not encrypted.
pub struct Encrypted<S> {
    inner: S,
    identity: x25519::Identity,
    recipient: x25519::Recipient,
}

impl<S> std::fmt::Debug for Encrypted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted")
            .field("recipient", &self.recipient.to_string())
            .finish_non_exhaustive()
    }
}

impl<S: ObjectStore> Encrypted<S> {
    /// Opens `inner` with `passphrase`: reads its key ([`KEY`]) and decrypts it, or, in a
    /// store that has none and no backups yet, makes one.
    ///
    /// # Errors
    ///
    /// [`Error::WrongPassphrase`] if the passphrase does not open the key;
    /// [`Error::Encryption`] if the store already holds backups made without
    /// encryption; [`Error::Store`] if the store cannot be read or written.
    pub async fn with_passphrase(inner: S, passphrase: &str) -> Result<Self> {
        let passphrase = SecretString::from(passphrase.to_owned());
        if inner.get(KEY).await?.is_none() {
            if !inner.list(crate::manifest::SNAPSHOTS).await?.is_empty() {
                return Err(Error::Encryption(
                    "this store holds backups made without encryption: use another prefix \
                     for encrypted backups"
                        .into(),
                ));
            }
            let fresh = x25519::Identity::generate();
            let secret = fresh.to_string();
            let pass = passphrase.clone();
            let sealed = tokio::task::spawn_blocking(move || {
                let recipient = age::scrypt::Recipient::new(pass);
                age::encrypt(&recipient, secret.expose_secret().as_bytes())
            })
            .await
            .expect("encryption does not panic")
            .map_err(|e| Error::Encryption(format!("cannot encrypt the key: {e}")))?;
            inner.put(KEY, sealed.into()).await?;
        }
        // Read back what is stored: of two processes making a key at once, both then
        // use the one that was written last.
        let sealed = inner
            .get(KEY)
            .await?
            .ok_or_else(|| Error::corrupt(KEY, "the key vanished while it was made"))?;
        let identity = tokio::task::spawn_blocking(move || {
            let scrypt = age::scrypt::Identity::new(passphrase);
            age::decrypt(&scrypt, &sealed)
        })
        .await
        .expect("decryption does not panic")
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed
            | age::DecryptError::KeyDecryptionFailed
            | age::DecryptError::NoMatchingKeys => Error::WrongPassphrase,
            e => Error::corrupt(KEY, e.to_string()),
        })?;
        let identity = std::str::from_utf8(&identity)
            .ok()
            .and_then(|s| s.parse::<x25519::Identity>().ok())
            .ok_or_else(|| Error::corrupt(KEY, "not an age identity"))?;
        Ok(Self::with_identity(inner, identity))
    }

    /// Encrypts to and decrypts with `identity` (an `AGE-SECRET-KEY-1…`), kept by the
    /// caller; the store holds no key object.
    pub fn with_identity(inner: S, identity: x25519::Identity) -> Self {
        Self {
            recipient: identity.to_public(),
            identity,
            inner,
        }
    }

    /// The store underneath, whose objects are the encrypted ones.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Encrypted<S> {
    async fn put(&self, name: &str, body: Bytes) -> Result<()> {
        let recipient = self.recipient.clone();
        let sealed = tokio::task::spawn_blocking(move || age::encrypt(&recipient, &body))
            .await
            .expect("encryption does not panic")
            .map_err(|e| Error::Encryption(format!("cannot encrypt {name:?}: {e}")))?;
        self.inner.put(name, sealed.into()).await
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let Some(sealed) = self.inner.get(name).await? else {
            return Ok(None);
        };
        let identity = self.identity.clone();
        let plain = tokio::task::spawn_blocking(move || age::decrypt(&identity, &sealed))
            .await
            .expect("decryption does not panic")
            .map_err(|e| Error::corrupt(name, format!("does not decrypt: {e}")))?;
        Ok(Some(plain.into()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = self.inner.list(prefix).await?;
        names.retain(|n| n != KEY);
        Ok(names)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }

    fn encrypted(&self) -> bool {
        true
    }
}
