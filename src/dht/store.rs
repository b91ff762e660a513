//! What a node holds for others: records and provider records, in memory,
//! bounded in all, per key, per publisher and per source address and prefix
//! (identities are free, addresses are not). Plain data driven by `now`
//! (unix seconds); a node keeps a snapshot of both in its persistent store
//! ([`held`](RecordStore::held), [`restore`](ProviderStore::restore)).
//!
//! ```
//! use butter::dht::record::Record;
//! use butter::dht::store::{Put, RecordStore, StoreLimits};
//! use butter::Identity;
//!
//! let me = Identity::generate();
//! let now = 1_800_000_000;
//! let mut store = RecordStore::new(StoreLimits::default());
//! let v1 = Record::sign(&me, b"name", b"one".to_vec(), 1, now + 60).unwrap();
//! let from = "192.0.2.7".parse().unwrap();
//! assert_eq!(store.put(v1.clone(), from, now), Ok(Put::Stored));
//! let v2 = Record::sign(&me, b"name", b"two".to_vec(), 2, now + 60).unwrap();
//! assert_eq!(store.put(v2, from, now), Ok(Put::Replaced));
//! assert!(store.put(v1, from, now).is_err()); // an older copy never comes back
//! assert_eq!(store.get(&Record::key_for(&me.id(), b"name"), now).unwrap().value, b"two");
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::record::{Record, RecordError};
use crate::addr::NodeAddr;
use crate::identity::NodeId;
use crate::source::SourceCounts;

/// How much a node holds for others.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Records in all.
    pub max_records: usize,
    /// Bytes of records in all.
    pub max_record_bytes: usize,
    /// Records of one publisher.
    pub per_publisher: usize,
    /// Records (and provider entries) stored by one source address; twice
    /// that per /24 or /64.
    pub per_source: usize,
    /// Keys with provider records.
    pub max_provider_keys: usize,
    /// Providers kept per key.
    pub providers_per_key: usize,
    /// How long a provider record lives unless renewed (seconds).
    pub provider_ttl_secs: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_records: 4096,
            max_record_bytes: 16 << 20,
            per_publisher: 64,
            per_source: 256,
            max_provider_keys: 16_384,
            providers_per_key: 20,
            provider_ttl_secs: 24 * 3600,
        }
    }
}

/// Why something was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record itself is refused.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A bound is reached.
    #[error("store full: {0}")]
    Full(&'static str),
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new key.
    Stored,
    /// A newer record of the same publisher replaced the one held.
    Replaced,
    /// The same record again (its lifetime is unchanged: it is signed).
    Unchanged,
}

struct Held {
    record: Record,
    source: IpAddr,
}

/// Records held for others.
pub struct RecordStore {
    limits: StoreLimits,
    records: HashMap<NodeId, Held>,
    bytes: usize,
    per_publisher: HashMap<NodeId, usize>,
    per_source: SourceCounts,
}

impl RecordStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        RecordStore {
            per_source: SourceCounts::new(
                limits.per_source as u64,
                limits.per_source as u64 * 2,
                limits.max_records.max(1),
            ),
            limits,
            records: HashMap::new(),
            bytes: 0,
            per_publisher: HashMap::new(),
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Stores `record` (sent from `source`) under its key, if it verifies, is
    /// newer than what is held, and fits every bound.
    pub fn put(&mut self, record: Record, source: IpAddr, now: u64) -> Result<Put, StoreError> {
        record.verify(now)?;
        // Expired records are swept (a pass over the store) only when a
        // bound refuses, not on every put.
        match self.try_put(&record, source, now) {
            Err(StoreError::Full(_)) => {
                self.expire(now);
                self.try_put(&record, source, now)
            }
            other => other,
        }
    }

    fn try_put(&mut self, record: &Record, source: IpAddr, now: u64) -> Result<Put, StoreError> {
        if self
            .records
            .get(&record.key())
            .is_some_and(|h| h.record.expires <= now)
        {
            // An expired copy is no rival: it goes.
            self.remove(&record.key());
        }
        let record = record.clone();
        let key = record.key();
        let size = record.size();
        if let Some(held) = self.records.get(&key) {
            // Same key: same publisher and name (the key derives from them).
            if held.record == record {
                return Ok(Put::Unchanged);
            }
            if record.seq <= held.record.seq {
                return Err(RecordError::Stale {
                    got: record.seq,
                    held: held.record.seq,
                }
                .into());
            }
            let old = held.record.size();
            if self.bytes - old + size > self.limits.max_record_bytes {
                return Err(StoreError::Full("record bytes"));
            }
            // The newer copy counts for whoever sent it.
            let old_source = held.source;
            if old_source != source {
                if !self.per_source.try_add(source, 1) {
                    return Err(StoreError::Full("records from this address"));
                }
                self.per_source.remove(old_source, 1);
            }
            self.bytes = self.bytes - old + size;
            self.records.insert(key, Held { record, source });
            return Ok(Put::Replaced);
        }
        if self.records.len() >= self.limits.max_records {
            return Err(StoreError::Full("records"));
        }
        if self.bytes + size > self.limits.max_record_bytes {
            return Err(StoreError::Full("record bytes"));
        }
        let mine = self
            .per_publisher
            .get(&record.publisher)
            .copied()
            .unwrap_or(0);
        if mine >= self.limits.per_publisher {
            return Err(StoreError::Full("records of this publisher"));
        }
        if !self.per_source.try_add(source, 1) {
            return Err(StoreError::Full("records from this address"));
        }
        *self.per_publisher.entry(record.publisher).or_default() += 1;
        self.bytes += size;
        self.records.insert(key, Held { record, source });
        Ok(Put::Stored)
    }

    /// The record under `key`, unless it expired.
    pub fn get(&self, key: &NodeId, now: u64) -> Option<&Record> {
        self.records
            .get(key)
            .map(|h| &h.record)
            .filter(|r| r.expires > now)
    }

    /// Every record held (live or not yet swept), with the address it came
    /// from: what a snapshot keeps.
    pub fn held(&self) -> impl Iterator<Item = (&Record, IpAddr)> {
        self.records.values().map(|h| (&h.record, h.source))
    }

    /// Drops expired records.
    pub fn expire(&mut self, now: u64) {
        let gone: Vec<NodeId> = self
            .records
            .iter()
            .filter(|(_, h)| h.record.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &NodeId) {
        let Some(held) = self.records.remove(key) else {
            return;
        };
        self.bytes -= held.record.size();
        self.per_source.remove(held.source, 1);
        if let Some(n) = self.per_publisher.get_mut(&held.record.publisher) {
            *n -= 1;
            if *n == 0 {
                self.per_publisher.remove(&held.record.publisher);
            }
        }
    }
}

/// Provider records: which nodes say they hold a key's content.
pub struct ProviderStore {
    limits: StoreLimits,
    keys: HashMap<NodeId, Vec<Provider>>,
    per_source: SourceCounts,
}

#[derive(Debug, Clone)]
struct Provider {
    addr: NodeAddr,
    source: IpAddr,
    expires: u64,
}

/// Addresses kept per provider.
pub const PROVIDER_ADDRS: usize = 4;

impl ProviderStore {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        ProviderStore {
            per_source: SourceCounts::new(
                limits.per_source as u64,
                limits.per_source as u64 * 2,
                limits.max_provider_keys.max(1),
            ),
            limits,
            keys: HashMap::new(),
        }
    }

    /// Keys with providers.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Records that `provider` (the authenticated caller, reached from
    /// `source`) holds `key`, at `addrs` (at most [`PROVIDER_ADDRS`] kept).
    /// A provider that says so again renews its record.
    pub fn add(
        &mut self,
        key: NodeId,
        provider: NodeId,
        addrs: &[SocketAddr],
        source: IpAddr,
        now: u64,
    ) -> Result<(), StoreError> {
        let expires = now.saturating_add(self.limits.provider_ttl_secs);
        let addr = NodeAddr::new(provider, addrs.iter().copied().take(PROVIDER_ADDRS));
        if let Some(list) = self.keys.get_mut(&key) {
            if let Some(p) = list.iter_mut().find(|p| p.addr.id == provider) {
                p.addr = addr;
                p.expires = expires;
                return Ok(());
            }
        }
        match self.try_add(key, addr, source, expires) {
            Err(StoreError::Full(_)) => {
                // Swept only when a bound refuses, not on every add.
                self.expire(now);
                let addr = NodeAddr::new(provider, addrs.iter().copied().take(PROVIDER_ADDRS));
                self.try_add(key, addr, source, expires)
            }
            other => other,
        }
    }

    fn try_add(
        &mut self,
        key: NodeId,
        addr: NodeAddr,
        source: IpAddr,
        expires: u64,
    ) -> Result<(), StoreError> {
        let known_key = self.keys.contains_key(&key);
        if !known_key && self.keys.len() >= self.limits.max_provider_keys {
            return Err(StoreError::Full("provider keys"));
        }
        if self
            .keys
            .get(&key)
            .is_some_and(|l| l.len() >= self.limits.providers_per_key)
        {
            return Err(StoreError::Full("providers of this key"));
        }
        if !self.per_source.try_add(source, 1) {
            return Err(StoreError::Full("provider records from this address"));
        }
        self.keys.entry(key).or_default().push(Provider {
            addr,
            source,
            expires,
        });
        Ok(())
    }

    /// The live providers of `key`, at most `max`.
    pub fn get(&self, key: &NodeId, max: usize, now: u64) -> Vec<NodeAddr> {
        self.keys
            .get(key)
            .map(|l| {
                l.iter()
                    .filter(|p| p.expires > now)
                    .take(max)
                    .map(|p| p.addr.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every provider record held: (key, provider, source, expiry), what a
    /// snapshot keeps.
    pub fn held(&self) -> impl Iterator<Item = (NodeId, &NodeAddr, IpAddr, u64)> {
        self.keys
            .iter()
            .flat_map(|(k, l)| l.iter().map(move |p| (*k, &p.addr, p.source, p.expires)))
    }

    /// Takes back a provider record from a snapshot, with the expiry it had
    /// (through every bound, like [`add`](Self::add)); an expired one is
    /// refused.
    pub fn restore(
        &mut self,
        key: NodeId,
        provider: &NodeAddr,
        source: IpAddr,
        expires: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        if expires <= now {
            return Err(StoreError::Full("expired"));
        }
        if self
            .get(&key, usize::MAX, now)
            .iter()
            .any(|p| p.id == provider.id)
        {
            return Ok(());
        }
        let expires = expires.min(now.saturating_add(self.limits.provider_ttl_secs));
        let addr = NodeAddr::new(
            provider.id,
            provider.addrs.iter().copied().take(PROVIDER_ADDRS),
        );
        self.try_add(key, addr, source, expires)
    }

    /// Drops expired provider records.
    pub fn expire(&mut self, now: u64) {
        let per_source = &mut self.per_source;
        self.keys.retain(|_, list| {
            list.retain(|p| {
                let live = p.expires > now;
                if !live {
                    per_source.remove(p.source, 1);
                }
                live
            });
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const NOW: u64 = 1_800_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rec(id: &Identity, name: &str, seq: u64) -> Record {
        Record::sign(id, name.as_bytes(), b"value".to_vec(), seq, NOW + 600).unwrap()
    }

    #[test]
    fn only_the_publisher_replaces_and_only_with_a_higher_sequence() {
        let me = Identity::generate();
        let mut s = RecordStore::new(StoreLimits::default());
        let from = ip("192.0.2.1");
        assert_eq!(s.put(rec(&me, "a", 5), from, NOW), Ok(Put::Stored));
        assert_eq!(s.put(rec(&me, "a", 5), from, NOW), Ok(Put::Unchanged));
        assert_eq!(
            s.put(rec(&me, "a", 4), from, NOW),
            Err(StoreError::Record(RecordError::Stale { got: 4, held: 5 }))
        );
        // Another key signing "a" lands under another key: ours is untouched.
        let other = Identity::generate();
        assert_eq!(s.put(rec(&other, "a", 99), from, NOW), Ok(Put::Stored));
        let mine = Record::key_for(&me.id(), b"a");
        assert_eq!(s.get(&mine, NOW).unwrap().seq, 5);
        // A forgery claiming our key is refused by its signature.
        let mut forged = rec(&other, "a", 100);
        forged.publisher = me.id();
        assert_eq!(
            s.put(forged, from, NOW),
            Err(StoreError::Record(RecordError::BadSignature))
        );
        assert_eq!(s.put(rec(&me, "a", 6), from, NOW), Ok(Put::Replaced));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn one_address_cannot_fill_the_store_with_fresh_identities() {
        let limits = StoreLimits {
            per_source: 10,
            ..Default::default()
        };
        let mut s = RecordStore::new(limits);
        let mut stored = 0;
        for i in 0..100 {
            let id = Identity::generate();
            // Many addresses of one /24: the prefix holds twice an address's share.
            let from = ip(&format!("198.51.100.{}", i % 50));
            stored += usize::from(s.put(rec(&id, "x", 1), from, NOW).is_ok());
        }
        assert_eq!(stored, 20);
        // Another network still gets in.
        let id = Identity::generate();
        assert_eq!(
            s.put(rec(&id, "x", 1), ip("203.0.113.9"), NOW),
            Ok(Put::Stored)
        );
    }

    #[test]
    fn bounds_hold_and_expiry_frees_them() {
        let limits = StoreLimits {
            max_records: 5,
            per_publisher: 3,
            ..Default::default()
        };
        let mut s = RecordStore::new(limits);
        let me = Identity::generate();
        for i in 0..3 {
            s.put(rec(&me, &i.to_string(), 1), ip("10.0.0.1"), NOW)
                .unwrap();
        }
        assert_eq!(
            s.put(rec(&me, "3", 1), ip("10.0.0.1"), NOW),
            Err(StoreError::Full("records of this publisher"))
        );
        for _ in 0..2 {
            let id = Identity::generate();
            s.put(rec(&id, "y", 1), ip("10.0.1.1"), NOW).unwrap();
        }
        let late = Identity::generate();
        assert_eq!(
            s.put(rec(&late, "y", 1), ip("10.0.2.1"), NOW),
            Err(StoreError::Full("records"))
        );
        // Everything expires at NOW + 600: room again, and counts released.
        let later = NOW + 601;
        let fresh = Record::sign(&late, b"y", vec![], 1, later + 60).unwrap();
        assert_eq!(s.put(fresh, ip("10.0.2.1"), later), Ok(Put::Stored));
        assert_eq!(s.len(), 1);
        assert!(s.get(&Record::key_for(&me.id(), b"0"), later).is_none());
        let big = Record::sign(&me, b"big", vec![0; 16 * 1024], 1, later + 60).unwrap();
        let tight = StoreLimits {
            max_record_bytes: 1024,
            ..Default::default()
        };
        assert_eq!(
            RecordStore::new(tight).put(big, ip("10.0.0.1"), later),
            Err(StoreError::Full("record bytes"))
        );
    }

    #[test]
    fn providers_are_bounded_renewed_and_expire() {
        let limits = StoreLimits {
            providers_per_key: 3,
            max_provider_keys: 2,
            provider_ttl_secs: 100,
            ..Default::default()
        };
        let mut s = ProviderStore::new(limits);
        let key = NodeId::from_bytes([1; 32]);
        let addr: SocketAddr = "192.0.2.1:7400".parse().unwrap();
        let p = |i: u8| NodeId::from_bytes([i; 32]);
        for i in 10..13 {
            s.add(key, p(i), &[addr; 9], ip("192.0.2.1"), NOW).unwrap();
        }
        assert_eq!(
            s.add(key, p(13), &[addr], ip("192.0.2.1"), NOW),
            Err(StoreError::Full("providers of this key"))
        );
        // Saying it again renews, and takes no new room.
        s.add(key, p(10), &[addr], ip("192.0.2.1"), NOW + 90)
            .unwrap();
        let got = s.get(&key, 20, NOW + 95);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|a| a.addrs.len() <= PROVIDER_ADDRS));
        s.add(
            NodeId::from_bytes([2; 32]),
            p(10),
            &[addr],
            ip("192.0.2.1"),
            NOW,
        )
        .unwrap();
        assert_eq!(
            s.add(
                NodeId::from_bytes([3; 32]),
                p(10),
                &[addr],
                ip("192.0.2.1"),
                NOW
            ),
            Err(StoreError::Full("provider keys"))
        );
        let after = s.get(&key, 20, NOW + 150);
        assert_eq!(after.len(), 1, "only the renewed one lives");
        s.expire(NOW + 150);
        assert_eq!(s.keys(), 1);
    }
}
