//! The known-hosts table, which is the Kademlia routing table, built for
//! hostile networks (plain data, no sockets):
//!
//! - a host enters only its own bucket; a full bucket evicts nobody outright:
//!   its least recently seen host is pinged first and stays if it answers
//!   ([`Insert::PingFirst`], then [`KBuckets::ping_result`]), the newcomer
//!   waiting in the bucket's replacement cache;
//! - IP diversity: at most `per_bucket_site` hosts of one /24 (IPv4) or /48
//!   (IPv6) per bucket and `per_table_site` per table, counted on the
//!   address a handshake proved;
//! - ties are broken only on what this node measured (how long it has seen
//!   a host, its round trip, its failures), never on what a host says;
//! - buckets untouched for a while are listed for refresh lookups.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use butter::peers::table::{Insert, KBuckets, Limits};
//! use butter::{NodeAddr, NodeId};
//!
//! let mut table = KBuckets::new(NodeId::from_bytes([0; 32]), Limits::default());
//! let peer = NodeAddr::new(NodeId::from_bytes([1; 32]), ["192.0.2.1:7400".parse().unwrap()]);
//! let now = Instant::now();
//! assert_eq!(table.insert(peer.clone(), Duration::from_millis(3), now), Insert::Added);
//! assert_eq!(table.closest(&NodeId::from_bytes([1; 32]), 1)[0].addr, peer);
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::addr::NodeAddr;
use crate::identity::NodeId;
use crate::source::site_of;

/// Index of the k-bucket of `id` relative to `local`: the number of leading bits
/// the two ids share (0: the far half of the id space).
pub fn bucket_index(local: &NodeId, id: &NodeId) -> usize {
    let (a, b) = (local.as_bytes(), id.as_bytes());
    for i in 0..32 {
        let x = a[i] ^ b[i];
        if x != 0 {
            return i * 8 + x.leading_zeros() as usize;
        }
    }
    255
}

/// XOR distance between two ids, as a big-endian number.
pub fn distance(a: &NodeId, b: &NodeId) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = a.as_bytes()[i] ^ b.as_bytes()[i];
    }
    d
}

/// A random id in bucket `bucket` of `local` (sharing exactly `bucket`
/// leading bits with it): the target of a refresh lookup.
pub fn random_id_in_bucket(local: &NodeId, bucket: usize, rng: &mut impl rand::Rng) -> NodeId {
    use rand::RngExt;
    let bucket = bucket.min(255);
    let mut bytes: [u8; 32] = rng.random();
    let l = local.as_bytes();
    for bit in 0..=bucket {
        let (i, m) = (bit / 8, 0x80u8 >> (bit % 8));
        let want = if bit == bucket { !l[i] & m } else { l[i] & m };
        bytes[i] = (bytes[i] & !m) | want;
    }
    NodeId::from_bytes(bytes)
}

/// The table's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Hosts per bucket (Kademlia's k).
    pub k: usize,
    /// Hosts of one /24 or /48 per bucket.
    pub per_bucket_site: usize,
    /// Hosts of one /24 or /48 in the whole table.
    pub per_table_site: usize,
    /// Newcomers waiting per bucket for a place.
    pub replacements: usize,
    /// Hosts in all (the memory the user allows).
    pub capacity: usize,
    /// Whether private addresses (loopback, RFC 1918, CGNAT, link-local,
    /// IPv6 unique-local) are free of the site limits, as in geth: a LAN is
    /// one operator's network, and a limit of 10 per table would cap a LAN
    /// or a container network at 10 known hosts. A hostile peer on the
    /// LAN is bounded by `k` and `capacity` only.
    pub lan_exempt: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            k: 20,
            per_bucket_site: 2,
            per_table_site: 10,
            replacements: 8,
            capacity: 256 * 20,
            lan_exempt: true,
        }
    }
}

/// A host in the table, with what this node measured about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id and the address a handshake proved (first).
    pub addr: NodeAddr,
    /// When this node first saw it answer.
    pub first_seen: Instant,
    /// When it last answered.
    pub last_seen: Instant,
    /// The last round trip measured.
    pub rtt: Duration,
    /// Failed checks since it last answered.
    pub failures: u32,
}

impl Entry {
    /// Better to keep: seen for longer, fewer failures, faster.
    fn keep_key(&self) -> (u32, std::cmp::Reverse<Instant>, Duration) {
        (self.failures, std::cmp::Reverse(self.first_seen), self.rtt)
    }
}

/// What an insertion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insert {
    /// Taken in.
    Added,
    /// Known already: its address and round trip were refreshed.
    Updated,
    /// Its bucket is full: ping this host (its least recently seen); the
    /// newcomer waits in the replacement cache meanwhile.
    PingFirst(NodeId),
    /// Its bucket is full and a ping of its oldest host is outstanding: it
    /// waits in the replacement cache.
    Waiting,
    /// Refused.
    Refused(Refusal),
}

/// Why a host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is this node.
    Local,
    /// Its site holds its share of the bucket or the table already.
    Diversity,
    /// No proven address.
    NoAddress,
    /// The table is at its capacity and the bucket cannot make room.
    Full,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Newcomers waiting, most recent last.
    replacements: Vec<Entry>,
    /// A ping of the oldest entry is outstanding.
    pinging: Option<NodeId>,
    touched: Option<Instant>,
}

/// The routing table.
#[derive(Debug, Clone)]
pub struct KBuckets {
    local: NodeId,
    limits: Limits,
    buckets: Vec<Bucket>,
    sites: HashMap<IpAddr, usize>,
    len: usize,
}

impl KBuckets {
    /// An empty table around `local`.
    pub fn new(local: NodeId, mut limits: Limits) -> Self {
        limits.k = limits.k.max(1);
        limits.capacity = limits.capacity.max(1);
        KBuckets {
            local,
            limits,
            buckets: Vec::new(),
            sites: HashMap::new(),
            len: 0,
        }
    }

    /// Hosts held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no host is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id the table is centred on.
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// The entry of `id`.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.bucket_of(id)
            .and_then(|b| self.buckets[b].entries.iter().find(|e| e.addr.id == *id))
    }

    /// Every host.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| &b.entries)
    }

    /// The `n` hosts closest to `target`.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<&Entry> {
        let mut all: Vec<&Entry> = self.entries().collect();
        if n == 0 {
            return Vec::new();
        }
        if all.len() > n {
            all.select_nth_unstable_by_key(n - 1, |e| distance(&e.addr.id, target));
            all.truncate(n);
        }
        all.sort_by_key(|e| distance(&e.addr.id, target));
        all
    }

    /// The bucket of `id`, if it exists yet (buckets are made as hosts
    /// arrive: a table holds about log2(network size) of the 256).
    fn bucket_of(&self, id: &NodeId) -> Option<usize> {
        let b = self.index_of(id)?;
        (b < self.buckets.len()).then_some(b)
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        (*id != self.local).then(|| bucket_index(&self.local, id))
    }

    /// The site `ip` counts against, or `None` when it is free of limits.
    fn limited(&self, ip: IpAddr) -> Option<IpAddr> {
        let free =
            self.limits.lan_exempt && (ip.is_loopback() || crate::nat::scope::is_private(ip));
        (!free).then(|| site_of(ip))
    }

    fn entry_site(&self, e: &Entry) -> Option<IpAddr> {
        e.addr.addrs.first().and_then(|a| self.limited(a.ip()))
    }

    fn site_room(&self, bucket: usize, site: Option<IpAddr>) -> bool {
        let Some(site) = site else { return true };
        let in_bucket = self.buckets.get(bucket).map_or(0, |b| {
            b.entries
                .iter()
                .filter(|e| self.entry_site(e) == Some(site))
                .count()
        });
        in_bucket < self.limits.per_bucket_site
            && self.sites.get(&site).copied().unwrap_or(0) < self.limits.per_table_site
    }

    /// Whether a host not yet known, reached at `at`, is worth verifying:
    /// its site has room in its bucket and the table, and its bucket has
    /// room or is full (then it would wait for a ping of the oldest).
    pub fn would_consider(&self, id: &NodeId, at: std::net::SocketAddr) -> bool {
        let Some(b) = self.index_of(id) else {
            return false;
        };
        if self.get(id).is_some() || !self.site_room(b, self.limited(at.ip())) {
            return false;
        }
        let held = self.buckets.get(b).map_or(0, |b| b.entries.len());
        held >= self.limits.k || self.len < self.limits.capacity
    }

    /// Offers a host whose key a handshake proved at `addr.addrs[0]`, with
    /// the round trip just measured.
    pub fn insert(&mut self, addr: NodeAddr, rtt: Duration, now: Instant) -> Insert {
        let Some(b) = self.index_of(&addr.id) else {
            return Insert::Refused(Refusal::Local);
        };
        let Some(first) = addr.addrs.first() else {
            return Insert::Refused(Refusal::NoAddress);
        };
        let site = self.limited(first.ip());
        if self.buckets.len() <= b {
            self.buckets.resize_with(b + 1, Bucket::default);
        }
        self.buckets[b].touched = Some(now);
        if let Some(pos) = self.buckets[b]
            .entries
            .iter()
            .position(|e| e.addr.id == addr.id)
        {
            let old_site = self.entry_site(&self.buckets[b].entries[pos]);
            if old_site != site {
                // A move to another network counts against that one.
                if !self.site_room(b, site) {
                    return Insert::Refused(Refusal::Diversity);
                }
                if let Some(s) = old_site {
                    self.release_site(s);
                }
                self.claim_site(site);
            }
            let mut e = self.buckets[b].entries.remove(pos);
            e.addr = addr;
            e.rtt = rtt;
            e.last_seen = now;
            e.failures = 0;
            self.buckets[b].entries.push(e);
            return Insert::Updated;
        }
        if !self.site_room(b, site) {
            return Insert::Refused(Refusal::Diversity);
        }
        let entry = Entry {
            addr,
            first_seen: now,
            last_seen: now,
            rtt,
            failures: 0,
        };
        let bucket_full = self.buckets[b].entries.len() >= self.limits.k;
        if !bucket_full && self.len < self.limits.capacity {
            self.claim_site(site);
            self.buckets[b].entries.push(entry);
            self.len += 1;
            return Insert::Added;
        }
        if !bucket_full {
            // Room in the bucket but not in the table: nothing is evicted
            // from other buckets.
            return Insert::Refused(Refusal::Full);
        }
        self.cache(b, entry);
        let bucket = &mut self.buckets[b];
        match bucket.pinging {
            Some(_) => Insert::Waiting,
            None => {
                let oldest = bucket.entries[0].addr.id;
                bucket.pinging = Some(oldest);
                Insert::PingFirst(oldest)
            }
        }
    }

    fn cache(&mut self, b: usize, entry: Entry) {
        let max = self.limits.replacements;
        let cache = &mut self.buckets[b].replacements;
        cache.retain(|e| e.addr.id != entry.addr.id);
        cache.push(entry);
        if cache.len() > max {
            cache.remove(0);
        }
    }

    fn claim_site(&mut self, site: Option<IpAddr>) {
        if let Some(site) = site {
            *self.sites.entry(site).or_default() += 1;
        }
    }

    fn release_site(&mut self, site: IpAddr) {
        if let Some(n) = self.sites.get_mut(&site) {
            *n -= 1;
            if *n == 0 {
                self.sites.remove(&site);
            }
        }
    }

    /// The outcome of a [`Insert::PingFirst`] ping (or any liveness check) of
    /// `id`: alive, it becomes the most recently seen; dead, it leaves and
    /// the best waiting newcomer takes its place. Returns who came in.
    pub fn ping_result(&mut self, id: &NodeId, alive: bool, now: Instant) -> Option<NodeId> {
        let b = self.bucket_of(id)?;
        if self.buckets[b].pinging == Some(*id) {
            self.buckets[b].pinging = None;
        }
        if alive {
            if let Some(pos) = self.buckets[b]
                .entries
                .iter()
                .position(|e| e.addr.id == *id)
            {
                let mut e = self.buckets[b].entries.remove(pos);
                e.last_seen = now;
                e.failures = 0;
                self.buckets[b].entries.push(e);
            }
            return None;
        }
        self.remove(id)
    }

    /// A host answered (a liveness check, or a call): it becomes the most
    /// recently seen of its bucket, with the round trip just measured.
    pub fn seen(&mut self, id: &NodeId, rtt: Duration, now: Instant) {
        self.ping_result(id, true, now);
        if let Some(e) = self.get_mut(id) {
            e.rtt = rtt;
        }
    }

    fn get_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        let b = self.bucket_of(id)?;
        self.buckets[b]
            .entries
            .iter_mut()
            .find(|e| e.addr.id == *id)
    }

    /// Takes a host out (it failed, or said goodbye); the best waiting
    /// newcomer of its bucket that fits takes its place. Returns who came in.
    pub fn remove(&mut self, id: &NodeId) -> Option<NodeId> {
        let b = self.bucket_of(id)?;
        let pos = self.buckets[b]
            .entries
            .iter()
            .position(|e| e.addr.id == *id)?;
        let gone = self.buckets[b].entries.remove(pos);
        self.len -= 1;
        if let Some(s) = self.entry_site(&gone) {
            self.release_site(s);
        }
        // Most recent first among the waiting, if its site has room.
        let waiting = std::mem::take(&mut self.buckets[b].replacements);
        let mut promoted = None;
        let mut rest = Vec::new();
        for e in waiting.into_iter().rev() {
            let fits = promoted.is_none()
                && !e.addr.addrs.is_empty()
                && self.site_room(b, self.entry_site(&e))
                && self.len < self.limits.capacity;
            if fits {
                self.claim_site(self.entry_site(&e));
                promoted = Some(e.addr.id);
                self.buckets[b].entries.push(e);
                self.len += 1;
            } else {
                rest.push(e);
            }
        }
        rest.reverse();
        self.buckets[b].replacements = rest;
        promoted
    }

    /// A failed check of `id` that does not remove it yet.
    pub fn failed(&mut self, id: &NodeId) {
        if let Some(e) = self.get_mut(id) {
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// Buckets that hold hosts (or lie below the farthest that does) and
    /// were not touched for `interval`: each deserves a lookup for a random
    /// id in it.
    pub fn stale_buckets(&self, now: Instant, interval: Duration) -> Vec<usize> {
        let deepest = self
            .buckets
            .iter()
            .rposition(|b| !b.entries.is_empty())
            .unwrap_or(0);
        (0..=deepest)
            .filter(|i| {
                self.buckets[*i]
                    .touched
                    .is_none_or(|t| now.saturating_duration_since(t) >= interval)
            })
            .collect()
    }

    /// Marks a bucket refreshed (a lookup ran in it).
    pub fn touch(&mut self, bucket: usize, now: Instant) {
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.touched = Some(now);
        }
    }

    /// Bytes the table takes in memory (entries, their addresses, buckets,
    /// replacement caches, site counts): about what a node spends on it.
    pub fn memory_bytes(&self) -> usize {
        let entry = |e: &Entry| {
            std::mem::size_of::<Entry>()
                + e.addr.addrs.capacity() * std::mem::size_of::<std::net::SocketAddr>()
        };
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self
                .buckets
                .iter()
                .map(|b| {
                    b.entries.iter().map(entry).sum::<usize>()
                        + (b.entries.capacity() - b.entries.len()) * std::mem::size_of::<Entry>()
                        + b.replacements.iter().map(entry).sum::<usize>()
                })
                .sum::<usize>()
            + self.sites.capacity() * (std::mem::size_of::<(IpAddr, usize)>() + 8)
    }

    /// The hosts to drop first when memory is short: the worst by what this
    /// node measured.
    pub fn worst(&self) -> Option<&Entry> {
        self.entries().max_by_key(|e| e.keep_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::net::SocketAddr;

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 7400)
    }

    fn node(rng: &mut StdRng, ip: &str) -> NodeAddr {
        NodeAddr::new(NodeId::from_bytes(rng.random()), [at(ip)])
    }

    /// An id in bucket `b` of `local` (shares exactly `b` leading bits).
    fn in_bucket(local: &NodeId, b: usize, rng: &mut StdRng) -> NodeId {
        let id = random_id_in_bucket(local, b, rng);
        assert_eq!(bucket_index(local, &id), b);
        id
    }

    fn random_ip(rng: &mut StdRng) -> String {
        format!(
            "{}.{}.{}.{}",
            rng.random_range(1..224),
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random::<u8>()
        )
    }

    #[test]
    fn bucket_index_counts_shared_prefix_bits() {
        let a = NodeId::from_bytes([0; 32]);
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(bucket_index(&a, &NodeId::from_bytes(b)), 0);
        b[0] = 0x01;
        assert_eq!(bucket_index(&a, &NodeId::from_bytes(b)), 7);
        let mut c = [0u8; 32];
        c[31] = 1;
        assert_eq!(bucket_index(&a, &NodeId::from_bytes(c)), 255);
    }

    #[test]
    fn closest_orders_by_xor_distance() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut t = KBuckets::new(NodeId::from_bytes(rng.random()), Limits::default());
        let now = Instant::now();
        for _ in 0..200 {
            let ip = random_ip(&mut rng);
            t.insert(node(&mut rng, &ip), Duration::from_millis(1), now);
        }
        let target = NodeId::from_bytes(rng.random());
        let got: Vec<_> = t
            .closest(&target, 5)
            .iter()
            .map(|e| distance(&e.addr.id, &target))
            .collect();
        let mut all: Vec<_> = t.entries().map(|e| distance(&e.addr.id, &target)).collect();
        all.sort();
        assert_eq!(got, all[..5].to_vec());
    }

    #[test]
    fn private_addresses_are_free_of_site_limits_unless_configured() {
        let mut rng = StdRng::seed_from_u64(9);
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        let mut lan = KBuckets::new(NodeId::from_bytes(rng.random()), Limits::default());
        let mut strict = KBuckets::new(
            NodeId::from_bytes(rng.random()),
            Limits {
                lan_exempt: false,
                ..Limits::default()
            },
        );
        for i in 0..50 {
            for ip in [format!("127.0.0.{}", i + 1), format!("192.168.1.{}", i + 1)] {
                lan.insert(node(&mut rng, &ip), ms, now);
                strict.insert(node(&mut rng, &ip), ms, now);
            }
        }
        assert!(lan.len() > 60, "{}", lan.len());
        assert!(strict.len() <= 20, "{}", strict.len());
    }

    #[test]
    fn a_thousand_ids_from_one_24_take_at_most_ten_places() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut t = KBuckets::new(NodeId::from_bytes(rng.random()), Limits::default());
        let now = Instant::now();
        for i in 0..1000 {
            let n = node(&mut rng, &format!("198.51.100.{}", i % 250));
            t.insert(n, Duration::from_millis(5), now);
        }
        assert!(t.len() <= 10, "{}", t.len());
        // Per bucket, two.
        for b in &t.buckets {
            assert!(b.entries.len() <= 2);
        }
        // IPv6: one /48, any number of /64s, same bound.
        let mut t6 = KBuckets::new(NodeId::from_bytes(rng.random()), Limits::default());
        for i in 0..1000u32 {
            let ip = format!("2001:db8:7:{:x}::{:x}", i, i + 1);
            t6.insert(node(&mut rng, &ip), Duration::from_millis(5), now);
        }
        assert!(t6.len() <= 10, "{}", t6.len());
    }

    /// Property, over random runs: buckets never exceed k, sites never exceed
    /// their shares, an insertion only ever changes its own bucket, and a
    /// full bucket evicts nobody without a failed ping.
    #[test]
    fn insertion_properties_hold_over_random_runs() {
        for seed in 0..100u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let limits = Limits {
                k: rng.random_range(1..6),
                per_bucket_site: rng.random_range(1..3),
                per_table_site: rng.random_range(2..8),
                replacements: rng.random_range(1..4),
                capacity: rng.random_range(5..200),
                lan_exempt: false,
            };
            let local = NodeId::from_bytes(rng.random());
            let mut t = KBuckets::new(local, limits.clone());
            let now = Instant::now();
            let sites = ["10.0.0.1", "10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.4.1"];
            for _ in 0..400 {
                let ip = if rng.random_bool(0.5) {
                    sites[rng.random_range(0..sites.len())].to_string()
                } else {
                    random_ip(&mut rng)
                };
                let b = rng.random_range(0..6);
                let id = in_bucket(&local, b, &mut rng);
                let before: Vec<Vec<NodeId>> = t
                    .buckets
                    .iter()
                    .map(|b| b.entries.iter().map(|e| e.addr.id).collect())
                    .collect();
                let outcome = t.insert(NodeAddr::new(id, [at(&ip)]), Duration::ZERO, now);
                for (i, bucket) in t.buckets.iter().enumerate() {
                    assert!(bucket.entries.len() <= limits.k, "seed {seed}");
                    if i != b {
                        let ids: Vec<NodeId> = bucket.entries.iter().map(|e| e.addr.id).collect();
                        let was = before.get(i).cloned().unwrap_or_default();
                        assert_eq!(ids, was, "seed {seed}: another bucket changed");
                    }
                }
                // Nobody left the bucket on an insertion.
                let kept = before
                    .get(b)
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .all(|id| t.buckets[b].entries.iter().any(|e| e.addr.id == *id));
                assert!(kept, "seed {seed}: evicted without a ping");
                assert!(t.len() <= limits.capacity);
                let mut per_site: HashMap<IpAddr, usize> = HashMap::new();
                for e in t.entries() {
                    *per_site.entry(t.entry_site(e).unwrap()).or_default() += 1;
                }
                assert!(
                    per_site.values().all(|n| *n <= limits.per_table_site),
                    "seed {seed}"
                );
                assert_eq!(per_site, t.sites, "seed {seed}: site counts drift");
                // Answer the ping now and then: dead or alive at random.
                if let Insert::PingFirst(oldest) = outcome {
                    let alive = rng.random_bool(0.5);
                    let came = t.ping_result(&oldest, alive, now);
                    assert_eq!(t.get(&oldest).is_some(), alive, "seed {seed}");
                    if let Some(new) = came {
                        assert_eq!(bucket_index(&local, &new), b);
                    }
                }
            }
        }
    }

    #[test]
    fn a_live_oldest_host_stays_and_a_dead_one_makes_room_for_the_newcomer() {
        let mut rng = StdRng::seed_from_u64(2);
        let local = NodeId::from_bytes(rng.random());
        let limits = Limits {
            k: 2,
            ..Default::default()
        };
        let mut t = KBuckets::new(local, limits);
        let now = Instant::now();
        let (a, b, c) = (
            in_bucket(&local, 0, &mut rng),
            in_bucket(&local, 0, &mut rng),
            in_bucket(&local, 0, &mut rng),
        );
        let ms = Duration::from_millis;
        assert_eq!(
            t.insert(NodeAddr::new(a, [at("192.0.2.1")]), ms(1), now),
            Insert::Added
        );
        assert_eq!(
            t.insert(NodeAddr::new(b, [at("198.51.100.1")]), ms(1), now),
            Insert::Added
        );
        // Full: ping a (the least recently seen) first.
        assert_eq!(
            t.insert(NodeAddr::new(c, [at("203.0.113.1")]), ms(1), now),
            Insert::PingFirst(a)
        );
        assert_eq!(t.ping_result(&a, true, now + ms(10)), None);
        assert!(t.get(&a).is_some() && t.get(&c).is_none());
        // a is now the most recent; b is the oldest, and is dead.
        assert_eq!(
            t.insert(NodeAddr::new(c, [at("203.0.113.1")]), ms(1), now),
            Insert::PingFirst(b)
        );
        assert_eq!(t.ping_result(&b, false, now + ms(20)), Some(c));
        assert!(t.get(&b).is_none() && t.get(&c).is_some());
    }

    #[test]
    fn an_eclipse_flood_leaves_the_honest_close_contacts_in_place() {
        let mut rng = StdRng::seed_from_u64(3);
        let local = NodeId::from_bytes(rng.random());
        let mut t = KBuckets::new(local, Limits::default());
        let now = Instant::now();
        // Honest contacts, from many networks, in the near buckets.
        let mut honest = Vec::new();
        for b in 0..16 {
            for _ in 0..20 {
                let id = in_bucket(&local, b, &mut rng);
                let ip = random_ip(&mut rng);
                if t.insert(NodeAddr::new(id, [at(&ip)]), Duration::from_millis(20), now)
                    == Insert::Added
                {
                    honest.push(id);
                }
            }
        }
        let near_before: Vec<NodeId> = t.closest(&local, 20).iter().map(|e| e.addr.id).collect();
        // The attacker: 10,000 fresh ids as near to us as it can grind, from
        // five /24s, fast and always answering; the honest answer too.
        let mut admitted_attackers = 0;
        for i in 0..10_000 {
            let b = 8 + rng.random_range(0..8);
            let id = in_bucket(&local, b, &mut rng);
            let ip = format!("203.0.{}.{}", 110 + i % 5, i % 200);
            match t.insert(
                NodeAddr::new(id, [at(&ip)]),
                Duration::from_micros(100),
                now,
            ) {
                Insert::Added => admitted_attackers += 1,
                Insert::PingFirst(oldest) => {
                    t.ping_result(&oldest, true, now);
                }
                _ => {}
            }
        }
        // The buckets it aims at are full of live honest hosts: nobody leaves.
        assert_eq!(admitted_attackers, 0);
        for id in &honest {
            assert!(t.get(id).is_some(), "an honest contact was evicted");
        }
        let near_after: Vec<NodeId> = t.closest(&local, 20).iter().map(|e| e.addr.id).collect();
        let kept = near_before
            .iter()
            .filter(|id| near_after.contains(id))
            .count();
        assert!(
            kept >= 10,
            "only {kept} of the 20 closest honest contacts remain"
        );
    }

    #[test]
    fn no_self_reported_number_exists_to_change_a_decision() {
        // The table takes an address and a round trip this node measured:
        // there is no field for a host's uptime, degree or "known by". The
        // replacement promoted is the most recent that fits; ties between
        // hosts are broken on measured failures, age and round trip.
        let mut rng = StdRng::seed_from_u64(4);
        let mut t = KBuckets::new(NodeId::from_bytes(rng.random()), Limits::default());
        let t0 = Instant::now();
        let old = node(&mut rng, "192.0.2.1");
        let new = node(&mut rng, "198.51.100.1");
        t.insert(old.clone(), Duration::from_millis(50), t0);
        t.insert(
            new.clone(),
            Duration::from_millis(5),
            t0 + Duration::from_secs(60),
        );
        t.failed(&new.id);
        assert_eq!(t.worst().unwrap().addr.id, new.id, "failures count first");
    }

    #[test]
    fn untouched_buckets_are_listed_for_refresh() {
        let mut rng = StdRng::seed_from_u64(5);
        let local = NodeId::from_bytes(rng.random());
        let mut t = KBuckets::new(local, Limits::default());
        let t0 = Instant::now();
        let id = in_bucket(&local, 3, &mut rng);
        t.insert(NodeAddr::new(id, [at("192.0.2.1")]), Duration::ZERO, t0);
        let hour = Duration::from_secs(3600);
        // Buckets 0..=3: 3 was touched now, the others never.
        assert_eq!(t.stale_buckets(t0, hour), vec![0, 1, 2]);
        t.touch(1, t0);
        assert_eq!(t.stale_buckets(t0 + hour, hour), vec![0, 1, 2, 3]);
        assert_eq!(t.stale_buckets(t0 + hour / 2, hour), vec![0, 2]);
    }
}
