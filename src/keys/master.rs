//! The master key and the envelope that protects private keys at rest.
//!
//! Private keys are sealed with AES-256-GCM under a 32-byte master key that lives apart from the
//! database (`KEYHOST_MASTER_KEY`, or `keys/master.key`), so a copy of the database alone reveals
//! nothing. Each sealed blob is bound (as associated data) to the key's algorithm, kid and creation
//! time, so blobs cannot be swapped between rows. The master key's id (a keyed hash, not the key)
//! is recorded in the store; a server started with another master key refuses to run rather than
//! generating replacements.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::files::write_secret_file;

/// Name of the master key file inside the keys directory.
pub const MASTER_KEY_FILE: &str = "master.key";
const ENVELOPE_VERSION: u8 = 1;

/// The key that seals private keys (and, through a derived key, authenticates rows).
pub struct MasterKey {
    key: LessSafeKey,
    id: String,
    row_auth: std::sync::Arc<crate::integrity::RowAuth>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why the master key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The configured value is not base64 of 32 bytes.
    #[error(
        "{0} must hold the base64 encoding of exactly 32 random bytes (generate one with: head -c \
         32 /dev/urandom | base64)"
    )]
    Malformed(String),
    /// Reading or creating the file failed.
    #[error("cannot {0} {1}: {2}")]
    Io(&'static str, PathBuf, std::io::Error),
    /// The store holds keys sealed under a master key that is not available.
    #[error(
        "the store holds keys sealed under master key {expected}, but {found}; refusing to start. \
         Restore the original master key (KEYHOST_MASTER_KEY or {file}); keyhost never replaces \
         keys it cannot open"
    )]
    Mismatch {
        /// Id recorded in the store.
        expected: String,
        /// What was found instead.
        found: String,
        /// The file that was looked for.
        file: String,
    },
    /// A sealed blob failed authentication.
    #[error("a stored private key could not be decrypted (wrong master key or tampered database)")]
    Open,
}

impl MasterKey {
    /// A master key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES key"));
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"keyhost master key id v1",
        );
        let id = hex::encode(&tag.as_ref()[..8]);
        Self {
            key,
            id,
            row_auth: std::sync::Arc::new(crate::integrity::RowAuth::from_master(bytes)),
        }
    }

    /// A fresh random master key and its base64 text.
    pub fn generate() -> (Self, Zeroizing<String>) {
        let mut raw = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(raw.as_mut())
            .expect("the system RNG works");
        (
            Self::from_bytes(&raw),
            Zeroizing::new(STANDARD.encode(raw.as_ref())),
        )
    }

    /// Parses base64 text (surrounding whitespace ignored); `source` names it in errors.
    pub fn from_base64(text: &str, source: &str) -> Result<Self, MasterKeyError> {
        let raw = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| MasterKeyError::Malformed(source.to_owned()))?,
        );
        let raw: &[u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| MasterKeyError::Malformed(source.to_owned()))?;
        Ok(Self::from_bytes(raw))
    }

    /// A public identifier of this key (a keyed hash; reveals nothing about the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The authenticator of the rows keyhost trusts, keyed from this master key.
    pub fn row_auth(&self) -> &std::sync::Arc<crate::integrity::RowAuth> {
        &self.row_auth
    }

    /// Seals `plaintext`, bound to `context`.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system RNG works");
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .expect("AES-GCM sealing cannot fail for small inputs");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        out
    }

    /// Opens a blob made by [`MasterKey::seal`] with the same `context`.
    pub fn open(
        &self,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, MasterKeyError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != ENVELOPE_VERSION {
            return Err(MasterKeyError::Open);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| MasterKeyError::Open)?;
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(context), buf.as_mut_slice())
            .map_err(|_| MasterKeyError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `KEYHOST_MASTER_KEY`.
    Environment,
    /// An existing file.
    File(PathBuf),
    /// A file created now.
    Created(PathBuf),
}

/// Finds the master key: the configured value, else `keys_dir/master.key`, else (only when the
/// store has never sealed anything, `recorded_id` is `None`) a new key written 0600 to that file.
pub fn resolve(
    configured: Option<&SecretString>,
    keys_dir: &Path,
    recorded_id: Option<&str>,
) -> Result<(MasterKey, MasterKeySource), MasterKeyError> {
    let file = keys_dir.join(MASTER_KEY_FILE);
    let (key, source) = if let Some(value) = configured {
        (
            MasterKey::from_base64(value.expose_secret(), "KEYHOST_MASTER_KEY")?,
            MasterKeySource::Environment,
        )
    } else if file.exists() {
        (read_key_file(&file)?, MasterKeySource::File(file.clone()))
    } else if let Some(expected) = recorded_id {
        return Err(MasterKeyError::Mismatch {
            expected: expected.to_owned(),
            found: "KEYHOST_MASTER_KEY is unset and the key file is missing".into(),
            file: file.display().to_string(),
        });
    } else {
        let (key, text) = MasterKey::generate();
        match write_secret_file(&file, text.as_bytes()) {
            Ok(()) => (key, MasterKeySource::Created(file.clone())),
            // Another process (a CLI command beside the starting server) created it first: the
            // first file wins, and every process uses it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (read_key_file(&file)?, MasterKeySource::File(file.clone()))
            }
            Err(e) => return Err(MasterKeyError::Io("create", file.clone(), e)),
        }
    };
    if let Some(expected) = recorded_id
        && expected != key.id()
    {
        return Err(MasterKeyError::Mismatch {
            expected: expected.to_owned(),
            found: format!("the configured master key is {}", key.id()),
            file: file.display().to_string(),
        });
    }
    Ok((key, source))
}

fn read_key_file(file: &Path) -> Result<MasterKey, MasterKeyError> {
    let text = Zeroizing::new(
        fs::read_to_string(file).map_err(|e| MasterKeyError::Io("read", file.to_owned(), e))?,
    );
    MasterKey::from_base64(&text, &file.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_open_only_with_the_same_key_and_context() {
        let (k, _) = MasterKey::generate();
        let sealed = k.seal(b"ctx", b"secret bytes");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open(b"ctx", &sealed).unwrap().as_slice(), b"secret bytes");
        assert!(k.open(b"other", &sealed).is_err());
        let (other, _) = MasterKey::generate();
        assert!(other.open(b"ctx", &sealed).is_err());
    }

    #[test]
    fn first_start_creates_a_0600_file_and_later_starts_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let (k1, src) = resolve(None, &keys, None).unwrap();
        assert!(matches!(src, MasterKeySource::Created(_)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(keys.join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, src) = resolve(None, &keys, Some(k1.id())).unwrap();
        assert_eq!(src, MasterKeySource::File(keys.join(MASTER_KEY_FILE)));
        assert_eq!(k1.id(), k2.id());
    }

    #[test]
    fn processes_starting_together_on_an_empty_install_agree_on_one_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| resolve(None, &keys_dir, None).unwrap().0.id().to_owned()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = resolve(None, &keys_dir, None).unwrap().0.id().to_owned();
        assert!(ids.iter().all(|id| *id == on_disk), "{ids:?} vs {on_disk}");
        let leftovers: Vec<_> = fs::read_dir(&keys_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(MASTER_KEY_FILE)]);
    }

    #[test]
    fn a_missing_file_for_a_store_with_sealed_keys_is_refused_not_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(None, dir.path(), Some("0011223344556677")).unwrap_err();
        assert!(matches!(err, MasterKeyError::Mismatch { .. }));
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
    }

    #[test]
    fn a_different_configured_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, text) = MasterKey::generate();
        let secret = SecretString::from(text.to_string());
        let err = resolve(Some(&secret), dir.path(), Some("0011223344556677")).unwrap_err();
        assert!(err.to_string().contains("0011223344556677"), "{err}");
    }

    #[test]
    fn malformed_master_keys_say_how_to_make_one() {
        let err = MasterKey::from_base64("c2hvcnQ=", "KEYHOST_MASTER_KEY").unwrap_err();
        assert!(err.to_string().contains("32"), "{err}");
    }
}
