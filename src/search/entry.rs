//! Index entries: what a holder publishes under the band keys of a
//! signature. An entry names what it points at (a content item by its key,
//! or the publishing peer itself, by the profile of what it holds), carries
//! the full signature (so a query ranks candidates exactly), a name and
//! keywords to show, and is signed by its publisher, who is also the
//! holder a hit leads to: a node that stores index entries cannot forge
//! one, and one it alters or makes up fails verification and is dropped.
//!
//! ```
//! use butter::search::entry::{Entry, Fields, Subject};
//! use butter::search::signature::Signature;
//! use butter::Identity;
//!
//! let me = Identity::generate();
//! let now = 1_800_000_000;
//! let entry = Entry::sign(
//!     &me,
//!     Fields {
//!         name: "notes.txt".into(),
//!         keywords: vec!["butter".into()],
//!         terms: vec!["butter".into(), "notes".into()],
//!         ..Fields::new(Subject::Item { key: [7; 32], size: 1234 }, Signature(42), now + 3600)
//!     },
//! )
//! .unwrap();
//! entry.verify(now).unwrap();
//! let bytes = entry.encode();
//! assert_eq!(Entry::decode(&bytes).unwrap(), entry);
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::signature::Signature;
use crate::identity::{Identity, NodeId};

/// Longest name, in bytes.
pub const MAX_NAME: usize = 256;
/// Keywords per entry at most.
pub const MAX_KEYWORDS: usize = 16;
/// Longest keyword, in bytes.
pub const MAX_KEYWORD: usize = 64;
/// Index terms per entry at most.
pub const MAX_TERMS: usize = 16;
/// Holder addresses per entry at most.
pub const MAX_ADDRS: usize = 4;
/// Longest lifetime an entry may claim (a holder republishes sooner).
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// Largest encoded entry.
pub const MAX_ENTRY: usize = 4096;

/// What an entry points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// A content item: its key (the root manifest's hash) and size.
    Item {
        /// The key `get` takes.
        key: [u8; 32],
        /// Bytes.
        size: u64,
    },
    /// The publisher itself: the signature is the profile of what it holds.
    Peer,
}

/// A signed index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What it points at.
    pub subject: Subject,
    /// The signature of the subject.
    pub signature: Signature,
    /// A name to show (a file's name).
    pub name: String,
    /// Keywords to show.
    pub keywords: Vec<String>,
    /// Normalised words it is also published under (a query of a few
    /// words finds it by them; see [`term_key`](super::bands::term_key)).
    pub terms: Vec<String>,
    /// Who published it: the holder a hit leads to.
    pub publisher: NodeId,
    /// Where the publisher listens.
    pub addrs: Vec<SocketAddr>,
    /// Unix seconds after which nobody serves it.
    pub expires: u64,
    /// The publisher's ed25519 signature over every field above.
    pub proof: Vec<u8>,
}

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A field over its limit, or the whole entry.
    #[error("index entry {0} over its limit")]
    TooLarge(&'static str),
    /// Not an entry at all.
    #[error("malformed index entry: {0}")]
    Malformed(String),
    /// The proof does not verify against the publisher's key.
    #[error("index entry signature does not verify")]
    BadProof,
    /// Expired, or claims to live longer than allowed.
    #[error("index entry expired or lives too long")]
    BadExpiry,
}

/// What an entry says, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// What it points at.
    pub subject: Subject,
    /// The subject's signature.
    pub signature: Signature,
    /// A name to show.
    pub name: String,
    /// Keywords to show.
    pub keywords: Vec<String>,
    /// Words it is also published under.
    pub terms: Vec<String>,
    /// Where the publisher listens.
    pub addrs: Vec<SocketAddr>,
    /// Unix seconds after which nobody serves it.
    pub expires: u64,
}

impl Fields {
    /// The fields of an entry with no name, keywords, terms or addresses.
    pub fn new(subject: Subject, signature: Signature, expires: u64) -> Fields {
        Fields {
            subject,
            signature,
            name: String::new(),
            keywords: Vec::new(),
            terms: Vec::new(),
            addrs: Vec::new(),
            expires,
        }
    }
}

impl Entry {
    /// An entry signed by `identity`.
    pub fn sign(identity: &Identity, f: Fields) -> Result<Entry, EntryError> {
        let mut e = Entry {
            subject: f.subject,
            signature: f.signature,
            name: f.name,
            keywords: f.keywords,
            terms: f.terms,
            publisher: identity.id(),
            addrs: f.addrs,
            expires: f.expires,
            proof: Vec::new(),
        };
        e.check_sizes()?;
        e.proof = identity.sign(&e.signed_bytes()).to_vec();
        Ok(e)
    }

    /// Which entry this is for its publisher: a newer one with the same
    /// identity replaces it.
    pub fn identity(&self) -> (NodeId, Subject) {
        (self.publisher, self.subject)
    }

    fn check_sizes(&self) -> Result<(), EntryError> {
        if self.name.len() > MAX_NAME {
            return Err(EntryError::TooLarge("name"));
        }
        if self.keywords.len() > MAX_KEYWORDS {
            return Err(EntryError::TooLarge("keyword list"));
        }
        if self.keywords.iter().any(|k| k.len() > MAX_KEYWORD) {
            return Err(EntryError::TooLarge("keyword"));
        }
        if self.terms.len() > MAX_TERMS {
            return Err(EntryError::TooLarge("term list"));
        }
        if self.terms.iter().any(|k| k.len() > MAX_KEYWORD) {
            return Err(EntryError::TooLarge("term"));
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(EntryError::TooLarge("address list"));
        }
        Ok(())
    }

    /// What the proof covers: a domain tag, then every field.
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Entry {
            proof: Vec::new(),
            ..self.clone()
        };
        let mut out = b"butter/sim/entry/v1\0".to_vec();
        // Postcard of the fields (the proof empty): deterministic.
        out.extend_from_slice(&postcard::to_stdvec(&unsigned).unwrap_or_default());
        out
    }

    /// Checks sizes, lifetime (against `now`, unix seconds) and proof.
    pub fn verify(&self, now: u64) -> Result<(), EntryError> {
        self.check_sizes()?;
        if self.expires <= now || self.expires > now.saturating_add(MAX_LIFETIME_SECS) {
            return Err(EntryError::BadExpiry);
        }
        let Ok(proof) = <[u8; 64]>::try_from(self.proof.as_slice()) else {
            return Err(EntryError::BadProof);
        };
        if !self.publisher.verify(&self.signed_bytes(), &proof) {
            return Err(EntryError::BadProof);
        }
        Ok(())
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// From the wire form (bounded; not verified: see
    /// [`verify`](Self::verify)).
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY {
            return Err(EntryError::TooLarge("entry"));
        }
        let e: Entry =
            postcard::from_bytes(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        e.check_sizes()?;
        Ok(e)
    }

    /// Bytes it takes to hold (roughly).
    pub fn size(&self) -> usize {
        160 + self.name.len()
            + self.keywords.iter().map(|k| k.len() + 8).sum::<usize>()
            + self.terms.iter().map(|k| k.len() + 8).sum::<usize>()
            + self.addrs.len() * 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn entry(me: &Identity) -> Entry {
        Entry::sign(
            me,
            Fields {
                name: "a".into(),
                keywords: vec!["b".into()],
                terms: vec!["c".into()],
                addrs: vec!["127.0.0.1:1".parse().unwrap()],
                ..Fields::new(
                    Subject::Item {
                        key: [1; 32],
                        size: 10,
                    },
                    Signature(99),
                    NOW + 60,
                )
            },
        )
        .unwrap()
    }

    #[test]
    fn a_changed_or_forged_entry_does_not_verify() {
        let me = Identity::generate();
        let e = entry(&me);
        e.verify(NOW).unwrap();
        let mut changed = e.clone();
        changed.name = "other".into();
        assert_eq!(changed.verify(NOW), Err(EntryError::BadProof));
        let mut moved = e.clone();
        moved.signature = Signature(100);
        assert_eq!(moved.verify(NOW), Err(EntryError::BadProof));
        // Someone else's name on it.
        let mut forged = e.clone();
        forged.publisher = Identity::generate().id();
        assert_eq!(forged.verify(NOW), Err(EntryError::BadProof));
        let mut cut = e.clone();
        cut.proof.truncate(10);
        assert_eq!(cut.verify(NOW), Err(EntryError::BadProof));
        assert_eq!(e.verify(NOW + 61), Err(EntryError::BadExpiry));
    }

    #[test]
    fn oversized_and_malformed_entries_are_refused() {
        let me = Identity::generate();
        let peer = Fields::new(Subject::Peer, Signature(1), NOW + 60);
        let long = Entry::sign(
            &me,
            Fields {
                name: "x".repeat(MAX_NAME + 1),
                ..peer.clone()
            },
        );
        assert_eq!(long, Err(EntryError::TooLarge("name")));
        let many = Entry::sign(
            &me,
            Fields {
                keywords: vec!["k".into(); MAX_KEYWORDS + 1],
                ..peer.clone()
            },
        );
        assert_eq!(many, Err(EntryError::TooLarge("keyword list")));
        let terms = Entry::sign(
            &me,
            Fields {
                terms: vec!["t".into(); MAX_TERMS + 1],
                ..peer.clone()
            },
        );
        assert_eq!(terms, Err(EntryError::TooLarge("term list")));
        let far = Entry::sign(
            &me,
            Fields {
                expires: NOW + MAX_LIFETIME_SECS + 10,
                ..peer.clone()
            },
        )
        .unwrap();
        assert_eq!(far.verify(NOW), Err(EntryError::BadExpiry));
        assert!(matches!(
            Entry::decode(&[1, 2, 3]),
            Err(EntryError::Malformed(_))
        ));
        assert_eq!(
            Entry::decode(&vec![0; MAX_ENTRY + 1]),
            Err(EntryError::TooLarge("entry"))
        );
        // The largest legal entry fits the wire bound.
        let big = Entry::sign(
            &me,
            Fields {
                name: "n".repeat(MAX_NAME),
                keywords: vec!["k".repeat(MAX_KEYWORD); MAX_KEYWORDS],
                terms: vec!["t".repeat(MAX_KEYWORD); MAX_TERMS],
                addrs: vec!["[ffff::1]:65535".parse().unwrap(); MAX_ADDRS],
                ..Fields::new(
                    Subject::Item {
                        key: [9; 32],
                        size: u64::MAX,
                    },
                    Signature(u64::MAX),
                    NOW + 60,
                )
            },
        )
        .unwrap();
        assert!(big.encode().len() <= MAX_ENTRY, "{}", big.encode().len());
        assert_eq!(Entry::decode(&big.encode()).unwrap(), big);
    }
}
