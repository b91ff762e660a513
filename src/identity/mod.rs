//! Node identity: an ed25519 keypair, persisted in the node's data dir.
//!
//! The identity of a peer is its public key ([`NodeId`]), never its IP address.
//! [`tls`] turns the key into the self-signed certificate and the rustls verifiers
//! that make every connection mutually authenticated.

/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod resume;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod tls;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the node key inside the data dir.
pub const KEY_FILE: &str = "node.key";

/// A node's identity: its ed25519 public key (32 bytes).
///
/// Displayed as lowercase hex; parsed from hex or from unpadded base32
/// (RFC 4648, either case).
///
/// ```
/// use butter::NodeId;
/// let id: NodeId = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29".parse()?;
/// assert_eq!(id.to_string().len(), 64);
/// assert_eq!(id.to_base32().parse::<NodeId>()?, id);
/// # Ok::<(), butter::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps raw key bytes. The bytes are not checked to be a valid curve point;
    /// a handshake with such an id can simply never succeed.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }

    /// The raw 32 key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase unpadded base32 (52 characters): fits in one DNS label, used as the
    /// TLS server name.
    pub fn to_base32(&self) -> String {
        data_encoding::BASE32_NOPAD
            .encode(&self.0)
            .to_ascii_lowercase()
    }

    /// The first 10 hex digits, for logs.
    pub fn short(&self) -> String {
        self.to_string()[..10].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let decoded = match s.len() {
            64 => data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok(),
            52 => data_encoding::BASE32_NOPAD
                .decode(s.to_ascii_uppercase().as_bytes())
                .ok(),
            _ => None,
        };
        decoded
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .map(NodeId)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "not a node id (64 hex or 52 base32 characters): {s:?}"
                ))
            })
    }
}

/// The node's keypair. Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.id().short())
    }
}

impl Identity {
    /// A fresh random identity (not persisted).
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Builds the identity from a 32-byte ed25519 secret seed.
    pub fn from_secret_bytes(seed: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// This identity's public key.
    pub fn id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The private key as PKCS#8 PEM (the format of the key file).
    pub fn to_pem(&self) -> Result<String> {
        self.key
            .to_pkcs8_pem(Default::default())
            .map(|pem| pem.to_string())
            .map_err(|e| Error::Config(format!("cannot encode key: {e}")))
    }

    /// Parses a PKCS#8 PEM ed25519 private key.
    pub fn from_pem(pem: &str) -> std::result::Result<Self, String> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Identity { key })
            .map_err(|e| format!("not a PKCS#8 ed25519 private key: {e}"))
    }

    /// Loads `DIR/node.key`, or generates and writes it (mode 0600) if it does not
    /// exist. A file that exists but cannot be read or parsed is an error: the
    /// identity is never silently replaced.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("butter-doc-{}", std::process::id()));
    /// let a = butter::Identity::load_or_generate(&dir)?;
    /// let b = butter::Identity::load_or_generate(&dir)?;
    /// assert_eq!(a.id(), b.id());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), butter::Error>(())
    /// ```
    pub fn load_or_generate(dir: &Path) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        let key_err = |reason: String| Error::KeyFile {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                warn_if_open_permissions(&path);
                Identity::from_pem(&pem).map_err(key_err)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                write_key_file(dir, &path, &identity.to_pem()?)
                    .map_err(|e| key_err(e.to_string()))?;
                tracing::info!(id = %identity.id(), path = %path.display(), "generated a new node identity");
                Ok(identity)
            }
            Err(e) => Err(key_err(e.to_string())),
        }
    }

    /// Signs a message with the node key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(msg).to_bytes()
    }

    /// The X25519 secret of this identity (its ed25519 key's scalar): what
    /// opens messages sealed to [`NodeId::x25519`]. Only messaging uses it.
    pub(crate) fn x25519_secret(&self) -> [u8; 32] {
        self.key.to_scalar_bytes()
    }

    pub(crate) fn pkcs8_der(&self) -> Result<Vec<u8>> {
        self.key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| Error::Config(format!("cannot encode key: {e}")))
    }
}

impl NodeId {
    /// This id's key as an X25519 public key (the Edwards point mapped to
    /// Montgomery form), for sealing messages to it; `None` when the bytes
    /// are not a valid ed25519 key.
    pub fn x25519(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0)
            .ok()
            .map(|k| k.to_montgomery().to_bytes())
    }

    /// Verifies an ed25519 signature made by this node.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.0)
            .map(|k| {
                k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

/// Writes the key via a temporary file and a rename, so a crash never leaves a
/// half-written key behind.
fn write_key_file(dir: &Path, path: &Path, pem: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(".{KEY_FILE}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn warn_if_open_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by others; chmod 600 it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_hex_and_base32() {
        let id = Identity::generate().id();
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.to_base32().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.to_base32().to_uppercase().parse::<NodeId>().unwrap(), id);
        assert!("abc".parse::<NodeId>().is_err());
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
    }

    #[test]
    fn pem_round_trip_and_signatures() {
        let a = Identity::generate();
        let b = Identity::from_pem(&a.to_pem().unwrap()).unwrap();
        assert_eq!(a.id(), b.id());
        let sig = a.sign(b"hello");
        assert!(a.id().verify(b"hello", &sig));
        assert!(!a.id().verify(b"hellp", &sig));
        assert!(Identity::from_pem("garbage").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private_and_corruption_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_generate(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Identity::load_or_generate(dir.path()).unwrap().id(), a.id());
        std::fs::write(
            dir.path().join(KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
        )
        .unwrap();
        let err = Identity::load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(err, Error::KeyFile { .. }), "{err}");
        // Never silently replaced.
        assert!(std::fs::read_to_string(dir.path().join(KEY_FILE))
            .unwrap()
            .contains("AAAA"));
    }
}
