//! Manifests: what a key stands for. A manifest lists either the chunks of
//! up to [`MAX_ENTRIES`] × chunk size bytes, or up to [`MAX_ENTRIES`] child
//! manifests; the root may carry a name and keywords. Every manifest is
//! bounded (at most ~168 KiB encoded), so no message grows with the file:
//! two levels cover 4 TiB at the default chunk size, three 16 PiB.

use serde::{Deserialize, Serialize};

use super::chunk::{Hash, MAX_CHUNK_SIZE};
use crate::error::{Error, Result};

/// Entries of one manifest at most.
pub const MAX_ENTRIES: usize = 4096;

/// Longest name, in bytes.
pub const MAX_NAME: usize = 255;

/// Keywords per manifest at most, and the longest keyword in bytes.
pub const MAX_KEYWORDS: usize = 32;
/// See [`MAX_KEYWORDS`].
pub const MAX_KEYWORD: usize = 64;

/// Levels of manifests at most (the root's depth): enough for any file a
/// u64 can size.
pub const MAX_DEPTH: usize = 6;

/// Format version, first in every manifest.
pub const VERSION: u8 = 1;

/// A child manifest: its hash and the bytes under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Child {
    /// The child manifest's hash.
    pub hash: Hash,
    /// Bytes of content under it.
    pub size: u64,
}

/// What a manifest lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entries {
    /// Chunks, in order (all `chunk_size` bytes but the last).
    Chunks(Vec<Hash>),
    /// Child manifests, in order.
    Manifests(Vec<Child>),
}

/// A manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`VERSION`].
    pub version: u8,
    /// Bytes of content under this manifest.
    pub size: u64,
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Chunks or child manifests.
    pub entries: Entries,
    /// A name for the content (the root only, optional).
    pub name: Option<String>,
    /// Keywords (the root only, optional): what similarity search indexes.
    pub keywords: Vec<String>,
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(format!("manifest: {}", what.into()))
}

impl Manifest {
    /// Encodes the manifest (postcard), after checking its bounds.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check()?;
        postcard::to_allocvec(self).map_err(|e| malformed(e.to_string()))
    }

    /// Decodes and checks a manifest.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        if bytes.len() > MAX_CHUNK_SIZE {
            return Err(malformed("larger than a chunk may be"));
        }
        let m: Manifest = postcard::from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// The manifest's own hash (its key).
    pub fn hash(&self) -> Result<Hash> {
        Ok(Hash::of(&self.encode()?))
    }

    /// Checks every bound and that the sizes add up.
    pub fn check(&self) -> Result<()> {
        if self.version != VERSION {
            return Err(malformed(format!("unknown version {}", self.version)));
        }
        let chunk = self.chunk_size as u64;
        if chunk == 0 || chunk > MAX_CHUNK_SIZE as u64 {
            return Err(malformed(format!("chunk size {chunk}")));
        }
        if self.name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
            return Err(malformed("name too long"));
        }
        if self.keywords.len() > MAX_KEYWORDS || self.keywords.iter().any(|k| k.len() > MAX_KEYWORD)
        {
            return Err(malformed("too many or too long keywords"));
        }
        match &self.entries {
            Entries::Chunks(chunks) => {
                if chunks.len() > MAX_ENTRIES {
                    return Err(malformed("too many chunks"));
                }
                let n = chunks.len() as u64;
                // All chunks full but the last, which holds at least a byte.
                let fits = match n {
                    0 => self.size == 0,
                    n => self.size > (n - 1) * chunk && self.size <= n * chunk,
                };
                if !fits {
                    return Err(malformed(format!(
                        "{n} chunks of {chunk} bytes cannot hold {} bytes",
                        self.size
                    )));
                }
            }
            Entries::Manifests(children) => {
                if children.is_empty() || children.len() > MAX_ENTRIES {
                    return Err(malformed("no or too many children"));
                }
                let sum = children
                    .iter()
                    .try_fold(0u64, |acc, c| acc.checked_add(c.size));
                if sum != Some(self.size) {
                    return Err(malformed("children's sizes do not add up"));
                }
                // Every child but the last is full (a whole number of
                // chunks), so offsets follow from the sizes alone.
                if children[..children.len() - 1]
                    .iter()
                    .any(|c| c.size == 0 || c.size % chunk != 0)
                {
                    return Err(malformed("a child before the last is not whole chunks"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(chunks: usize, size: u64) -> Manifest {
        Manifest {
            version: VERSION,
            size,
            chunk_size: 4,
            entries: Entries::Chunks(vec![Hash([1; 32]); chunks]),
            name: None,
            keywords: vec![],
        }
    }

    #[test]
    fn sizes_must_add_up_and_bounds_hold() {
        assert!(leaf(3, 9).check().is_ok());
        assert!(leaf(3, 12).check().is_ok());
        assert!(leaf(3, 8).check().is_err(), "a chunk too many");
        assert!(leaf(3, 13).check().is_err(), "a chunk too few");
        assert!(leaf(0, 0).check().is_ok());
        assert!(leaf(MAX_ENTRIES + 1, 4 * (MAX_ENTRIES as u64 + 1))
            .check()
            .is_err());
        let mut named = leaf(1, 1);
        named.name = Some("x".repeat(MAX_NAME + 1));
        assert!(named.check().is_err());
        let parent = Manifest {
            entries: Entries::Manifests(vec![
                Child {
                    hash: Hash([2; 32]),
                    size: 8,
                },
                Child {
                    hash: Hash([3; 32]),
                    size: 3,
                },
            ]),
            size: 11,
            ..leaf(0, 0)
        };
        assert!(parent.check().is_ok());
        assert!(Manifest {
            size: 12,
            ..parent.clone()
        }
        .check()
        .is_err());
        let ragged = Manifest {
            entries: Entries::Manifests(vec![
                Child {
                    hash: Hash([2; 32]),
                    size: 7,
                },
                Child {
                    hash: Hash([3; 32]),
                    size: 4,
                },
            ]),
            ..parent
        };
        assert!(ragged.check().is_err());
    }

    #[test]
    fn the_largest_manifest_fits_in_a_chunk_and_garbage_is_an_error() {
        let m = Manifest {
            version: VERSION,
            size: u64::MAX,
            chunk_size: MAX_CHUNK_SIZE as u32,
            entries: Entries::Manifests(
                (0..MAX_ENTRIES)
                    .map(|i| Child {
                        hash: Hash([0xff; 32]),
                        size: if i + 1 == MAX_ENTRIES {
                            u64::MAX - (MAX_ENTRIES as u64 - 1) * (1 << 40)
                        } else {
                            1 << 40
                        },
                    })
                    .collect(),
            ),
            name: Some("n".repeat(MAX_NAME)),
            keywords: vec!["k".repeat(MAX_KEYWORD); MAX_KEYWORDS],
        };
        let bytes = m.encode().unwrap();
        assert!(bytes.len() < 200 * 1024, "{}", bytes.len());
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert!(Manifest::decode(b"garbage").is_err());
        assert!(Manifest::decode(&bytes[..bytes.len() / 2]).is_err());
    }
}
