//! Blob hashes and verification: a blob (a chunk or a manifest) is addressed
//! by the BLAKE3 hash of its bytes, and nothing received is stored or
//! returned before its hash is checked against the key it was asked for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::NodeId;

/// Default chunk size: 256 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;

/// Largest chunk size a node accepts (and so the largest blob but a
/// manifest, which is bounded below this).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024;

/// The BLAKE3 hash of a blob: its key, displayed as 64 lowercase hex digits.
///
/// ```
/// use butter::content::Hash;
/// let h = Hash::of(b"hello");
/// assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
/// assert!(butter::content::verify(&h, b"hello").is_ok());
/// assert!(butter::content::verify(&h, b"hellp").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The DHT key the blob is placed under (the same 256-bit space as node
    /// ids: it lives on the nodes closest to it).
    pub fn to_key(&self) -> NodeId {
        NodeId::from_bytes(self.0)
    }

    /// The first 10 hex digits, for logs.
    pub fn short(&self) -> String {
        self.to_string()[..10].to_string()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl FromStr for Hash {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .map(Hash)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("not a content key (64 hex digits): {s:?}"))
            })
    }
}

/// Checks that `bytes` hash to `expected`: a typed error otherwise.
pub fn verify(expected: &Hash, bytes: &[u8]) -> Result<()> {
    let got = Hash::of(bytes);
    if got == *expected {
        Ok(())
    } else {
        Err(Error::Malformed(format!(
            "blob {} has the wrong content (hashes to {})",
            expected.short(),
            got.short()
        )))
    }
}
