//! Signed records: a value a publisher puts under a name. The DHT key is
//! derived from the publisher's id and the name (`BLAKE3`), so nobody can
//! squat another publisher's key, and a record can only be replaced by its
//! publisher, with a higher sequence number. The signature covers every
//! field, including when the record expires (absolute time: a replayed old
//! copy is refused once its time is up).
//!
//! ```
//! use butter::dht::record::Record;
//! use butter::Identity;
//!
//! let me = Identity::generate();
//! let now = 1_800_000_000; // unix seconds
//! let record = Record::sign(&me, b"profile", b"hello".to_vec(), 1, now + 3600).unwrap();
//! assert_eq!(record.key(), Record::key_for(&me.id(), b"profile"));
//! record.verify(now).unwrap();
//! ```

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, NodeId};

/// Largest value a record carries.
pub const MAX_VALUE: usize = 16 * 1024;

/// Longest name.
pub const MAX_NAME: usize = 256;

/// Longest lifetime a record may claim.
pub const MAX_LIFETIME_SECS: u64 = 48 * 3600;

/// A signed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The publisher's name for it (with the publisher, it makes the key).
    pub name: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Who published it (an ed25519 public key).
    pub publisher: NodeId,
    /// Higher replaces lower.
    pub seq: u64,
    /// Unix seconds after which nobody serves it.
    pub expires: u64,
    /// The publisher's ed25519 signature over all the fields above.
    pub signature: Vec<u8>,
}

/// Why a record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A field is over its limit.
    #[error("record {0} over its limit")]
    TooLarge(&'static str),
    /// The signature does not verify against the publisher's key.
    #[error("record signature does not verify")]
    BadSignature,
    /// It expired, or claims to live longer than allowed.
    #[error("record expired or lives too long")]
    BadExpiry,
    /// A record with this sequence number or a higher one is held.
    #[error("record sequence {got} is not above {held}")]
    Stale {
        /// The sequence offered.
        got: u64,
        /// The sequence held.
        held: u64,
    },
    /// Stored under a key it does not derive.
    #[error("record does not belong under this key")]
    WrongKey,
}

impl Record {
    /// The DHT key of `publisher`'s record `name`.
    pub fn key_for(publisher: &NodeId, name: &[u8]) -> NodeId {
        let mut h = blake3::Hasher::new();
        h.update(b"butter/dht/record\0");
        h.update(publisher.as_bytes());
        h.update(name);
        NodeId::from_bytes(*h.finalize().as_bytes())
    }

    /// This record's key.
    pub fn key(&self) -> NodeId {
        Self::key_for(&self.publisher, &self.name)
    }

    /// A record signed by `identity`.
    pub fn sign(
        identity: &Identity,
        name: &[u8],
        value: Vec<u8>,
        seq: u64,
        expires: u64,
    ) -> Result<Record, RecordError> {
        let mut record = Record {
            name: name.to_vec(),
            value,
            publisher: identity.id(),
            seq,
            expires,
            signature: Vec::new(),
        };
        record.check_sizes()?;
        record.signature = identity.sign(&record.signed_bytes()).to_vec();
        Ok(record)
    }

    fn check_sizes(&self) -> Result<(), RecordError> {
        if self.name.len() > MAX_NAME {
            return Err(RecordError::TooLarge("name"));
        }
        if self.value.len() > MAX_VALUE {
            return Err(RecordError::TooLarge("value"));
        }
        Ok(())
    }

    /// What the signature covers: a domain tag, then every field.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.name.len() + self.value.len());
        out.extend_from_slice(b"butter/dht/record/v1\0");
        out.extend_from_slice(self.publisher.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.value);
        out
    }

    /// Checks sizes, lifetime (against `now`, unix seconds) and signature.
    pub fn verify(&self, now: u64) -> Result<(), RecordError> {
        self.check_sizes()?;
        if self.expires <= now || self.expires > now.saturating_add(MAX_LIFETIME_SECS) {
            return Err(RecordError::BadExpiry);
        }
        let Ok(sig) = <[u8; 64]>::try_from(self.signature.as_slice()) else {
            return Err(RecordError::BadSignature);
        };
        if !self.publisher.verify(&self.signed_bytes(), &sig) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }

    /// Bytes it takes to hold.
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + self.signature.len() + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_changed_field_or_a_foreign_key_breaks_the_signature() {
        let me = Identity::generate();
        let good = Record::sign(&me, b"n", b"v".to_vec(), 3, NOW + 60).unwrap();
        good.verify(NOW).unwrap();
        let mut changed = good.clone();
        changed.value = b"w".to_vec();
        assert_eq!(changed.verify(NOW), Err(RecordError::BadSignature));
        let mut bumped = good.clone();
        bumped.seq = 4;
        assert_eq!(bumped.verify(NOW), Err(RecordError::BadSignature));
        // Signed by another key under our name.
        let other = Identity::generate();
        let mut forged = Record::sign(&other, b"n", b"v".to_vec(), 9, NOW + 60).unwrap();
        forged.publisher = me.id();
        assert_eq!(forged.verify(NOW), Err(RecordError::BadSignature));
        let mut short = good.clone();
        short.signature.truncate(10);
        assert_eq!(short.verify(NOW), Err(RecordError::BadSignature));
    }

    #[test]
    fn lifetimes_and_sizes_are_bounded() {
        let me = Identity::generate();
        let expired = Record::sign(&me, b"n", vec![], 1, NOW).unwrap();
        assert_eq!(expired.verify(NOW), Err(RecordError::BadExpiry));
        let forever = Record::sign(&me, b"n", vec![], 1, NOW + MAX_LIFETIME_SECS + 1).unwrap();
        assert_eq!(forever.verify(NOW), Err(RecordError::BadExpiry));
        assert_eq!(
            Record::sign(&me, b"n", vec![0; MAX_VALUE + 1], 1, NOW + 1),
            Err(RecordError::TooLarge("value"))
        );
        assert_eq!(
            Record::sign(&me, &[0; MAX_NAME + 1], vec![], 1, NOW + 1),
            Err(RecordError::TooLarge("name"))
        );
    }

    #[test]
    fn keys_belong_to_their_publisher() {
        let (a, b) = (Identity::generate(), Identity::generate());
        assert_ne!(
            Record::key_for(&a.id(), b"name"),
            Record::key_for(&b.id(), b"name")
        );
        assert_ne!(
            Record::key_for(&a.id(), b"name"),
            Record::key_for(&a.id(), b"name2")
        );
    }
}
