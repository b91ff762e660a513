//! The known-hosts table, shaped as the Kademlia routing table: k-buckets by XOR
//! distance give structural spread; inside a full bucket (or a full table) the
//! diversity policy decides who stays. Plain data, no sockets: the async code
//! around it feeds it what it hears.

use std::collections::HashMap;
use std::time::Instant;

use rand::{Rng, RngExt};

use super::quality::{Class, Quality};
use crate::addr::NodeAddr;
use crate::identity::NodeId;

/// One known host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Its id and addresses.
    pub addr: NodeAddr,
    /// Its quality, as last measured.
    pub quality: Quality,
    /// When it last answered us.
    pub last_seen: Instant,
}

/// Admission policy knobs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Hosts the table may hold in all (follows the memory the user allows).
    pub capacity: usize,
    /// Hosts per k-bucket.
    pub k: usize,
    /// Probability of taking a newcomer into a full table although it does not make
    /// it more diverse (never making it less diverse), so the network does not
    /// settle into one shape.
    pub random_accept: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            capacity: 256,
            k: 20,
            random_accept: 0.05,
        }
    }
}

/// What an admission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The host was added (there was room).
    Added,
    /// The host was known; its address and quality were refreshed.
    Updated,
    /// The host was added in place of the returned one.
    Replaced(HostInfo),
    /// The host was not taken in.
    Rejected,
}

/// The table itself.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    local: NodeId,
    policy: Policy,
    buckets: Vec<Vec<HostInfo>>,
    len: usize,
}

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

/// Shannon entropy of a class distribution: the diversity measure.
pub fn diversity(counts: &HashMap<Class, usize>) -> f64 {
    let total: usize = counts.values().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .values()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}

impl RoutingTable {
    /// An empty table around `local`.
    pub fn new(local: NodeId, mut policy: Policy) -> Self {
        policy.capacity = policy.capacity.max(1);
        policy.k = policy.k.max(1);
        RoutingTable {
            local,
            policy,
            buckets: vec![Vec::new(); 256],
            len: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Number of known hosts.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no host is known.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the table holds `id`.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.get(id).is_some()
    }

    /// The entry of `id`.
    pub fn get(&self, id: &NodeId) -> Option<&HostInfo> {
        if *id == self.local {
            return None;
        }
        self.buckets[bucket_index(&self.local, id)]
            .iter()
            .find(|h| h.addr.id == *id)
    }

    /// All hosts.
    pub fn hosts(&self) -> impl Iterator<Item = &HostInfo> {
        self.buckets.iter().flatten()
    }

    /// The `n` known hosts closest to `target` by XOR distance (Kademlia lookups).
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<&HostInfo> {
        let mut all: Vec<&HostInfo> = self.hosts().collect();
        all.sort_by_key(|h| distance(&h.addr.id, target));
        all.truncate(n);
        all
    }

    /// Class distribution of the whole table.
    pub fn class_counts(&self) -> HashMap<Class, usize> {
        count(self.hosts())
    }

    /// Removes a host (it died, or a call to it failed).
    pub fn remove(&mut self, id: &NodeId) -> Option<HostInfo> {
        if *id == self.local {
            return None;
        }
        let bucket = &mut self.buckets[bucket_index(&self.local, id)];
        let pos = bucket.iter().position(|h| h.addr.id == *id)?;
        self.len -= 1;
        Some(bucket.swap_remove(pos))
    }

    /// Marks a host as having answered now, with a fresh quality.
    pub fn seen(&mut self, id: &NodeId, quality: Quality, now: Instant) {
        if let Some(h) = self.get_mut(id) {
            h.quality = quality;
            h.last_seen = now;
        }
    }

    fn get_mut(&mut self, id: &NodeId) -> Option<&mut HostInfo> {
        if *id == self.local {
            return None;
        }
        self.buckets[bucket_index(&self.local, id)]
            .iter_mut()
            .find(|h| h.addr.id == *id)
    }

    /// Offers a host to the table; the policy decides (see the module docs):
    ///
    /// 1. room in the table and in its bucket: accepted;
    /// 2. otherwise (the pool is the full bucket, or else the full table): accepted
    ///    if it makes the pool more diverse, evicting from the most crowded class;
    ///    with probability `random_accept` also when that leaves the diversity as
    ///    it is; a host that knows nobody (`degree == 0`) is always accepted, evicting
    ///    from its own class when that is the most crowded; a host nobody knows
    ///    (`known_by == 0`) too, unless that orphans the evicted host, then with
    ///    probability 1/2. Among a class, hosts others also know go first, then the
    ///    shortest uptime, then the slowest.
    ///
    /// No admission makes the pool's class distribution less diverse.
    pub fn admit(&mut self, host: HostInfo, rng: &mut impl Rng) -> Admission {
        let id = host.addr.id;
        if id == self.local {
            return Admission::Rejected;
        }
        if let Some(h) = self.get_mut(&id) {
            h.addr = host.addr;
            h.quality = host.quality;
            h.last_seen = host.last_seen;
            return Admission::Updated;
        }
        let b = bucket_index(&self.local, &id);
        let bucket_full = self.buckets[b].len() >= self.policy.k;
        let table_full = self.len >= self.policy.capacity;
        if !bucket_full && !table_full {
            self.buckets[b].push(host);
            self.len += 1;
            return Admission::Added;
        }
        let pool: Vec<&HostInfo> = if bucket_full {
            self.buckets[b].iter().collect()
        } else {
            self.hosts().collect()
        };
        let counts = count(pool.iter().copied());
        let new_class = host.quality.class();
        let n_new = counts.get(&new_class).copied().unwrap_or(0);
        // Most crowded class (ties: the smallest class value, for determinism).
        let (max_class, n_max) = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(c, n)| (*c, *n))
            .unwrap_or((new_class, 0));
        // A host that knows nobody, or that nobody knows, must be taken in somewhere.
        let lonely = host.quality.degree == 0;
        let unknown = host.quality.known_by == 0;
        let victim_class = if lonely || unknown {
            if n_new >= n_max && n_new > 0 {
                Some(new_class)
            } else {
                Some(max_class)
            }
        } else if n_new + 1 < n_max
            // Diversity-neutral (same class, or a swap of counts), sometimes.
            || ((new_class == max_class || n_new + 1 == n_max)
                && rng.random_bool(self.policy.random_accept.clamp(0.0, 1.0)))
        {
            Some(max_class)
        } else {
            None
        };
        let Some(victim_class) = victim_class else {
            return Admission::Rejected;
        };
        let victim = pool
            .iter()
            .filter(|h| h.quality.class() == victim_class)
            // Hosts that others know too can go without being orphaned.
            .min_by_key(|h| (h.quality.known_by < 2, h.quality.keep_score()))
            .map(|h| (h.addr.id, h.quality.known_by >= 2));
        let Some((victim, safe)) = victim else {
            return Admission::Rejected;
        };
        // Taking in a host nobody knows by orphaning another just moves the
        // problem; when every node that hears it does so, they chase each other.
        // A coin flip breaks the symmetry (lonely hosts are always taken).
        if !safe && !lonely && unknown && !rng.random_bool(0.5) {
            return Admission::Rejected;
        }
        let evicted = self.remove(&victim).expect("victim comes from the table");
        self.buckets[b].push(host);
        self.len += 1;
        Admission::Replaced(evicted)
    }
}

fn count<'a>(hosts: impl Iterator<Item = &'a HostInfo>) -> HashMap<Class, usize> {
    let mut counts = HashMap::new();
    for h in hosts {
        *counts.entry(h.quality.class()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn id(rng: &mut StdRng) -> NodeId {
        NodeId::from_bytes(rng.random())
    }

    fn host(rng: &mut StdRng) -> HostInfo {
        let quality = Quality {
            uptime_ms: [0, 3_600_000, 30_000_000][rng.random_range(0..3)],
            storage_bytes: [0, 1 << 30, 1 << 40][rng.random_range(0..3)],
            degree: [0, 5, 40][rng.random_range(0..3)],
            known_by: rng.random_range(0..4),
            rtt_us: rng.random_range(100..100_000),
            introducer: false,
        };
        HostInfo {
            addr: NodeAddr::new(id(rng), ["127.0.0.1:1".parse().unwrap()]),
            quality,
            last_seen: Instant::now(),
        }
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

    /// Property: over many random runs and policies, the table never exceeds its
    /// capacity nor a bucket k; an admission never makes the full table less
    /// diverse; a host nobody knows is always admitted.
    #[test]
    fn admission_properties_hold_over_random_runs() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let capacity = rng.random_range(1..40);
            let policy = Policy {
                capacity,
                // Mostly a table-wide pool; sometimes buckets fill first.
                k: if seed % 4 == 0 {
                    rng.random_range(1..4)
                } else {
                    capacity
                },
                random_accept: [0.0, 0.05, 1.0][seed as usize % 3],
            };
            let local = id(&mut rng);
            let mut table = RoutingTable::new(local, policy.clone());
            for _ in 0..300 {
                let h = host(&mut rng);
                let newcomer_lonely = h.quality.degree == 0;
                let b = bucket_index(&local, &h.addr.id);
                let bucket_full = table.buckets[b].len() >= policy.k;
                let was_full = table.len() >= capacity;
                let before = diversity(&table.class_counts());
                let bucket_before = diversity(&count(table.buckets[b].iter()));
                let outcome = table.admit(h.clone(), &mut rng);
                assert!(table.len() <= capacity, "seed {seed}: over capacity");
                assert!(
                    table.buckets.iter().all(|b| b.len() <= policy.k),
                    "seed {seed}: bucket over k"
                );
                assert_eq!(table.len(), table.hosts().count());
                if newcomer_lonely {
                    assert!(
                        matches!(outcome, Admission::Added | Admission::Replaced(_)),
                        "seed {seed}: a host nobody knows was turned away"
                    );
                }
                if matches!(outcome, Admission::Replaced(_)) {
                    if bucket_full {
                        let after = diversity(&count(table.buckets[b].iter()));
                        assert!(
                            after >= bucket_before - 1e-9,
                            "seed {seed}: bucket less diverse"
                        );
                    } else if was_full {
                        let after = diversity(&table.class_counts());
                        assert!(
                            after >= before - 1e-9,
                            "seed {seed}: table less diverse {before} -> {after}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_full_table_prefers_newcomers_that_add_diversity() {
        let mut rng = StdRng::seed_from_u64(7);
        let local = id(&mut rng);
        let policy = Policy {
            capacity: 4,
            k: 4,
            random_accept: 0.0,
        };
        let mut table = RoutingTable::new(local, policy);
        let same = |rng: &mut StdRng| {
            let mut h = host(rng);
            h.quality = Quality {
                known_by: 3,
                degree: 2,
                ..Default::default()
            };
            h
        };
        for _ in 0..4 {
            assert_eq!(table.admit(same(&mut rng), &mut rng), Admission::Added);
        }
        // One more of the same class adds nothing.
        assert_eq!(table.admit(same(&mut rng), &mut rng), Admission::Rejected);
        // A long-lived, storage-rich host does.
        let mut rich = same(&mut rng);
        rich.quality.uptime_ms = 30_000_000;
        rich.quality.storage_bytes = 1 << 40;
        assert!(matches!(
            table.admit(rich.clone(), &mut rng),
            Admission::Replaced(_)
        ));
        assert!(table.contains(&rich.addr.id));
        assert_eq!(table.class_counts().len(), 2);
        // Known hosts are refreshed, not duplicated.
        assert_eq!(table.admit(rich, &mut rng), Admission::Updated);
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn closest_orders_by_xor_distance() {
        let mut rng = StdRng::seed_from_u64(3);
        let local = id(&mut rng);
        let mut table = RoutingTable::new(local, Policy::default());
        for _ in 0..50 {
            let mut h = host(&mut rng);
            h.quality.degree = 0;
            table.admit(h, &mut rng);
        }
        let target = id(&mut rng);
        let got = table.closest(&target, 5);
        assert_eq!(got.len(), 5);
        let mut all: Vec<_> = table
            .hosts()
            .map(|h| distance(&h.addr.id, &target))
            .collect();
        all.sort();
        assert_eq!(
            got.iter()
                .map(|h| distance(&h.addr.id, &target))
                .collect::<Vec<_>>(),
            all[..5].to_vec()
        );
    }
}
