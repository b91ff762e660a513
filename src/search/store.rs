//! The index entries a node stores for others, plain data: bounded per key
//! (a hot band value spills to salted keys, see [`spill_key`]), per source
//! address and prefix, and in all; an entry lives until its expiry unless
//! its publisher renews it; only an entry whose key derives from its own
//! signature is taken (the index is no free store for anything else).
//!
//! ```
//! use butter::search::bands::Bands;
//! use butter::search::entry::{Entry, Fields, Subject};
//! use butter::search::signature::Signature;
//! use butter::search::store::{IndexLimits, IndexStore};
//! use butter::Identity;
//!
//! let now = 1_800_000_000;
//! let me = Identity::generate();
//! let sig = Signature(0xfeed);
//! let e = Entry::sign(&me, Fields::new(Subject::Peer, sig, now + 60)).unwrap();
//! let mut store = IndexStore::new(IndexLimits::default(), Bands::DEFAULT);
//! let key = Bands::DEFAULT.keys(sig)[0];
//! store.put(key, e.clone(), "192.0.2.1".parse().unwrap(), now).unwrap();
//! assert_eq!(store.get(&key, 10, now).entries, vec![e]);
//! assert!(store.get(&key, 10, now + 61).entries.is_empty(), "expired");
//! ```

use std::collections::HashMap;
use std::net::IpAddr;

use super::bands::{term_key, Bands};
use super::entry::{Entry, EntryError};
use crate::identity::NodeId;
use crate::source::SourceCounts;

/// Salted keys a band key spills to at most.
pub const MAX_SPILL: u8 = 4;

/// The key of `key`'s `salt`-th spill (`salt` 0 is `key` itself).
pub fn spill_key(key: &NodeId, salt: u8) -> NodeId {
    if salt == 0 {
        return *key;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"butter/sim/spill/v1");
    h.update(key.as_bytes());
    h.update(&[salt]);
    NodeId::from_bytes(*h.finalize().as_bytes())
}

/// Bounds of an index store.
#[derive(Debug, Clone)]
pub struct IndexLimits {
    /// Entries under one key (then publishers spill to the next salt).
    pub per_key: usize,
    /// Entries in all.
    pub max_entries: usize,
    /// Entries from one source address (twice that per /24 or /64).
    pub per_source: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            per_key: 64,
            max_entries: 200_000,
            per_source: 20_000,
        }
    }
}

/// Why an entry was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The entry itself is refused.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The key does not derive from the entry's signature.
    #[error("index entry does not belong under this key")]
    WrongKey,
    /// This key holds as many entries as it may: the next salt.
    #[error("index key full (spill to the next salt)")]
    KeyFull,
    /// A bound of the store or of the source.
    #[error("index store full: {0}")]
    Full(&'static str),
}

/// What a read of one key gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Live entries.
    pub entries: Vec<Entry>,
    /// Whether the key is full (more may be under its next salt).
    pub full: bool,
}

#[derive(Debug)]
struct Held {
    entry: Entry,
    /// Who sent it (`None`: this node's own).
    source: Option<IpAddr>,
}

/// Index entries held for others.
#[derive(Debug)]
pub struct IndexStore {
    limits: IndexLimits,
    bands: Bands,
    keys: HashMap<NodeId, Vec<Held>>,
    entries: usize,
    per_source: SourceCounts,
}

impl IndexStore {
    /// An empty store for the band scheme `bands`.
    pub fn new(limits: IndexLimits, bands: Bands) -> Self {
        IndexStore {
            per_source: SourceCounts::new(
                limits.per_source as u64,
                limits.per_source as u64 * 2,
                limits.max_entries.max(1),
            ),
            limits,
            bands,
            keys: HashMap::new(),
            entries: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether `key` is a key (or a spill of one) of `entry`'s signature
    /// or of one of its terms.
    pub fn belongs(&self, key: &NodeId, entry: &Entry) -> bool {
        self.bands
            .keys(entry.signature)
            .into_iter()
            .chain(entry.terms.iter().map(|t| term_key(t)))
            .any(|k| (0..=MAX_SPILL).any(|salt| spill_key(&k, salt) == *key))
    }

    /// Stores `entry` under `key`, sent from `source` (verified here);
    /// a newer entry of the same publisher and subject replaces the older.
    pub fn put(
        &mut self,
        key: NodeId,
        entry: Entry,
        source: IpAddr,
        now: u64,
    ) -> Result<(), IndexError> {
        self.put_from(key, entry, Some(source), now)
    }

    /// [`put`](Self::put) of this node's own entry: no source's share.
    pub fn put_own(&mut self, key: NodeId, entry: Entry, now: u64) -> Result<(), IndexError> {
        self.put_from(key, entry, None, now)
    }

    fn put_from(
        &mut self,
        key: NodeId,
        entry: Entry,
        source: Option<IpAddr>,
        now: u64,
    ) -> Result<(), IndexError> {
        entry.verify(now)?;
        if !self.belongs(&key, &entry) {
            return Err(IndexError::WrongKey);
        }
        if let Some(list) = self.keys.get_mut(&key) {
            if let Some(h) = list
                .iter_mut()
                .find(|h| h.entry.identity() == entry.identity())
            {
                if entry.expires >= h.entry.expires {
                    h.entry = entry;
                }
                return Ok(());
            }
        }
        let first = self.try_add(key, entry.clone(), source, now);
        if matches!(first, Err(IndexError::Full(_)) | Err(IndexError::KeyFull)) {
            // Expired entries are swept only when a bound refuses.
            self.expire(now);
            return self.try_add(key, entry, source, now);
        }
        first
    }

    fn try_add(
        &mut self,
        key: NodeId,
        entry: Entry,
        source: Option<IpAddr>,
        _now: u64,
    ) -> Result<(), IndexError> {
        if self
            .keys
            .get(&key)
            .is_some_and(|l| l.len() >= self.limits.per_key)
        {
            return Err(IndexError::KeyFull);
        }
        if self.entries >= self.limits.max_entries {
            return Err(IndexError::Full("entries"));
        }
        if let Some(source) = source {
            if !self.per_source.try_add(source, 1) {
                return Err(IndexError::Full("entries from this address"));
            }
        }
        self.keys
            .entry(key)
            .or_default()
            .push(Held { entry, source });
        self.entries += 1;
        Ok(())
    }

    /// The live entries under `key`, at most `max`.
    pub fn get(&self, key: &NodeId, max: usize, now: u64) -> Found {
        let Some(list) = self.keys.get(key) else {
            return Found::default();
        };
        Found {
            entries: list
                .iter()
                .filter(|h| h.entry.expires > now)
                .take(max)
                .map(|h| h.entry.clone())
                .collect(),
            full: list.len() >= self.limits.per_key,
        }
    }

    /// Every entry under `key`, live or not (what a repair pushes).
    pub fn all(&self, key: &NodeId) -> Vec<Entry> {
        self.keys
            .get(key)
            .map(|l| l.iter().map(|h| h.entry.clone()).collect())
            .unwrap_or_default()
    }

    /// Every entry held: (key, entry, source; `None` for this node's
    /// own), what a snapshot keeps.
    pub fn held(&self) -> impl Iterator<Item = (NodeId, &Entry, Option<IpAddr>)> {
        self.keys
            .iter()
            .flat_map(|(k, l)| l.iter().map(move |h| (*k, &h.entry, h.source)))
    }

    /// Takes back an entry from a snapshot (verified and bounded like a
    /// new one).
    pub fn restore(
        &mut self,
        key: NodeId,
        entry: Entry,
        source: Option<IpAddr>,
        now: u64,
    ) -> Result<(), IndexError> {
        self.put_from(key, entry, source, now)
    }

    /// Every key with entries.
    pub fn keys(&self) -> Vec<NodeId> {
        self.keys.keys().copied().collect()
    }

    /// Drops expired entries.
    pub fn expire(&mut self, now: u64) {
        let per_source = &mut self.per_source;
        let mut dropped = 0;
        self.keys.retain(|_, list| {
            list.retain(|h| {
                let live = h.entry.expires > now;
                if !live {
                    if let Some(source) = h.source {
                        per_source.remove(source, 1);
                    }
                    dropped += 1;
                }
                live
            });
            !list.is_empty()
        });
        self.entries -= dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::search::entry::{Fields, Subject};
    use crate::search::signature::Signature;

    const NOW: u64 = 1_800_000_000;

    fn item(me: &Identity, n: u8, sig: u64, expires: u64) -> Entry {
        Entry::sign(
            me,
            Fields {
                name: format!("item {n}"),
                terms: vec![format!("term{n}")],
                ..Fields::new(
                    Subject::Item {
                        key: [n; 32],
                        size: 1,
                    },
                    Signature(sig),
                    expires,
                )
            },
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_verified_entries_under_their_own_keys() {
        let me = Identity::generate();
        let mut s = IndexStore::new(IndexLimits::default(), Bands::DEFAULT);
        let e = item(&me, 1, 0xabcd, NOW + 60);
        let key = Bands::DEFAULT.keys(e.signature)[3];
        let other = Bands::DEFAULT.keys(Signature(0x1234_5678_9abc_def0))[3];
        assert_eq!(
            s.put(other, e.clone(), ip("192.0.2.1"), NOW),
            Err(IndexError::WrongKey)
        );
        let mut forged = e.clone();
        forged.name = "changed".into();
        assert!(matches!(
            s.put(key, forged, ip("192.0.2.1"), NOW),
            Err(IndexError::Entry(EntryError::BadProof))
        ));
        s.put(key, e.clone(), ip("192.0.2.1"), NOW).unwrap();
        // Under a spill of its key, too, and under its terms' keys.
        s.put(spill_key(&key, 2), e.clone(), ip("192.0.2.1"), NOW)
            .unwrap();
        assert_eq!(s.len(), 2);
        s.put(term_key("term1"), e.clone(), ip("192.0.2.1"), NOW)
            .unwrap();
        assert_eq!(
            s.put(term_key("term2"), e.clone(), ip("192.0.2.1"), NOW),
            Err(IndexError::WrongKey)
        );
        assert_eq!(s.len(), 3);
        // Renewed, not duplicated.
        let renewed = item(&me, 1, 0xabcd, NOW + 120);
        s.put(key, renewed.clone(), ip("192.0.2.1"), NOW).unwrap();
        assert_eq!(s.get(&key, 10, NOW).entries, vec![renewed]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn bounded_per_key_per_source_and_in_all() {
        let limits = IndexLimits {
            per_key: 3,
            max_entries: 10,
            per_source: 4,
        };
        let mut s = IndexStore::new(limits, Bands::DEFAULT);
        let sig = 0x77;
        let key = Bands::DEFAULT.keys(Signature(sig))[0];
        // A flood of fresh identities from one address.
        let ids: Vec<Identity> = (0..12).map(|_| Identity::generate()).collect();
        for (n, id) in ids.iter().take(3).enumerate() {
            s.put(key, item(id, n as u8, sig, NOW + 60), ip("192.0.2.1"), NOW)
                .unwrap();
        }
        assert_eq!(
            s.put(key, item(&ids[3], 3, sig, NOW + 60), ip("192.0.2.9"), NOW),
            Err(IndexError::KeyFull)
        );
        assert!(s.get(&key, 10, NOW).full);
        let spill = spill_key(&key, 1);
        s.put(spill, item(&ids[3], 3, sig, NOW + 60), ip("192.0.2.1"), NOW)
            .unwrap();
        assert_eq!(
            s.put(spill, item(&ids[4], 4, sig, NOW + 60), ip("192.0.2.1"), NOW),
            Err(IndexError::Full("entries from this address"))
        );
        // Same /24: 8 in all.
        for (n, id) in ids.iter().enumerate().skip(4).take(4) {
            let k = Bands::DEFAULT.keys(Signature(sig))[n % 8];
            s.put(k, item(id, n as u8, sig, NOW + 60), ip("192.0.2.2"), NOW)
                .unwrap();
        }
        let k = Bands::DEFAULT.keys(Signature(sig))[7];
        assert_eq!(
            s.put(k, item(&ids[8], 8, sig, NOW + 60), ip("192.0.2.3"), NOW),
            Err(IndexError::Full("entries from this address"))
        );
        // Another network: up to the store's total.
        let k = Bands::DEFAULT.keys(Signature(sig))[1];
        s.put(k, item(&ids[9], 9, sig, NOW + 60), ip("198.51.100.1"), NOW)
            .unwrap();
        s.put(
            k,
            item(&ids[10], 10, sig, NOW + 60),
            ip("198.51.100.1"),
            NOW,
        )
        .unwrap();
        assert_eq!(s.len(), 10);
        assert_eq!(
            s.put(k, item(&ids[11], 11, sig, NOW + 60), ip("203.0.113.1"), NOW),
            Err(IndexError::Full("entries"))
        );
        // Once they expire, room again (swept when a bound refuses).
        let later = NOW + 61;
        s.put(
            k,
            item(&ids[11], 11, sig, later + 60),
            ip("203.0.113.1"),
            later,
        )
        .unwrap();
        assert_eq!(s.len(), 1);
    }
}
