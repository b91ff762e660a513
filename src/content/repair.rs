//! Repair decisions, plain data: liveness is tracked per peer (the
//! known-hosts checks), not per item. When a host leaves, a node that holds
//! a blob the host was one of the `r` closest to, and is itself among the
//! `r` closest now, pushes the blob to the new `r` closest; a periodic
//! republish of what a node should hold catches what events miss. The queue
//! of pending repairs is bounded and paced (bytes per second).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use butter::content::repair::{RepairQueue, Pace};
//! use butter::content::Hash;
//!
//! let mut q = RepairQueue::new(100, Pace { bytes_per_sec: 1_000_000, burst: 1_000_000 });
//! let now = Instant::now();
//! assert!(q.push(Hash([1; 32])));
//! assert!(!q.push(Hash([1; 32])), "queued once");
//! assert_eq!(q.next(now, 600_000), Some(Hash([1; 32])));
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::Hash;
use crate::identity::NodeId;
use crate::peers::table::distance;

/// Whether this node (`me`) should repair `key` now that `gone` left:
/// `gone` would have been among the `r` closest to `key`, and `me` is
/// among the `r` closest of those still known (`live`, any order).
pub fn should_repair(me: &NodeId, key: &NodeId, gone: &NodeId, live: &[NodeId], r: usize) -> bool {
    let d_gone = distance(gone, key);
    let d_me = distance(me, key);
    let closer = |d: &[u8; 32]| {
        live.iter()
            .filter(|n| *n != me && *n != gone && distance(n, key) < *d)
            .count()
    };
    // Was `gone` a holder? Fewer than r nodes (me included) were closer.
    let was_holder = closer(&d_gone) + usize::from(d_me < d_gone) < r;
    // Am I a holder now? Fewer than r live nodes are closer than me.
    was_holder && closer(&d_me) < r
}

/// Whether this node (`me`) should hand `key` to `joined`, a host that
/// has just entered its table: `joined` is now among the `r` closest to
/// `key` of those known (`live`, which holds it), and so is `me` (a holder
/// hands over what the newcomer should now hold; the rule of the Kademlia
/// paper's joins).
pub fn should_hand_over(
    me: &NodeId,
    key: &NodeId,
    joined: &NodeId,
    live: &[NodeId],
    r: usize,
) -> bool {
    me != joined && should_hold(joined, key, live, r) && should_hold(me, key, live, r)
}

/// Whether this node is among the `r` closest to `key` of itself and
/// `live`: a blob it should hold (and republish).
pub fn should_hold(me: &NodeId, key: &NodeId, live: &[NodeId], r: usize) -> bool {
    let d_me = distance(me, key);
    live.iter()
        .filter(|n| *n != me && distance(n, key) < d_me)
        .count()
        < r
}

/// How fast repairs may move bytes.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Sustained rate.
    pub bytes_per_sec: u64,
    /// What may go at once after a quiet while.
    pub burst: u64,
}

/// Blobs waiting to be repaired: each once, at most `max` (beyond that,
/// new ones are dropped and counted; the periodic republish finds them
/// again), released no faster than the pace allows. Two lanes: a blob that
/// lost a holder ([`push_urgent`](Self::push_urgent): it is one death
/// nearer to being lost) goes before hand-overs to newcomers and
/// republishing, which only add a copy to a blob that has its holders.
#[derive(Debug)]
pub struct RepairQueue {
    urgent: VecDeque<Hash>,
    normal: VecDeque<Hash>,
    /// Every queued blob, with whether it waits in the urgent lane (an
    /// entry of the other lane whose flag disagrees is stale: skipped).
    queued: HashMap<Hash, bool>,
    max: usize,
    pace: Pace,
    tokens: f64,
    refilled: Option<Instant>,
    /// Blobs dropped because the queue was full.
    pub dropped: u64,
}

impl RepairQueue {
    /// An empty queue.
    pub fn new(max: usize, pace: Pace) -> Self {
        RepairQueue {
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
            queued: HashMap::new(),
            max: max.max(1),
            pace,
            tokens: pace.burst as f64,
            refilled: None,
            dropped: 0,
        }
    }

    /// Queues `key` in the normal lane unless it is queued already or the
    /// queue is full.
    pub fn push(&mut self, key: Hash) -> bool {
        self.push_in(key, false)
    }

    /// Queues `key` in the urgent lane (moving it there if it waits in the
    /// normal one) unless it is queued there already or the queue is full.
    pub fn push_urgent(&mut self, key: Hash) -> bool {
        self.push_in(key, true)
    }

    fn push_in(&mut self, key: Hash, urgent: bool) -> bool {
        match self.queued.get(&key) {
            Some(true) => return false,
            Some(false) if !urgent => return false,
            Some(false) => {}
            None if self.queued.len() >= self.max => {
                self.dropped += 1;
                return false;
            }
            None => {}
        }
        self.queued.insert(key, urgent);
        if urgent {
            self.urgent.push_back(key);
        } else {
            self.normal.push_back(key);
        }
        // Stale entries (moved to the urgent lane, or queued again after
        // an earlier entry was released) are dropped once they could
        // outnumber the live ones.
        if self.urgent.len() + self.normal.len() > 2 * self.max + 16 {
            self.compact();
        }
        true
    }

    /// Keeps one entry per queued blob, in its lane, in order.
    fn compact(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let queued = &self.queued;
        self.urgent
            .retain(|k| queued.get(k) == Some(&true) && seen.insert(*k));
        self.normal
            .retain(|k| queued.get(k) == Some(&false) && seen.insert(*k));
    }

    /// Blobs waiting.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.refilled {
            let secs = now.saturating_duration_since(last).as_secs_f64();
            self.tokens =
                (self.tokens + secs * self.pace.bytes_per_sec as f64).min(self.pace.burst as f64);
        }
        self.refilled = Some(now);
    }

    /// The next blob to repair, if the pace allows `cost` bytes now
    /// (a blob is charged its size times the pushes it will take).
    pub fn next(&mut self, now: Instant, cost: u64) -> Option<Hash> {
        self.refill(now);
        if self.queued.is_empty() || self.tokens < cost.min(self.pace.burst) as f64 {
            return None;
        }
        let key = self.pop()?;
        self.tokens -= cost as f64;
        Some(key)
    }

    /// The first live entry, urgent lane first.
    fn pop(&mut self) -> Option<Hash> {
        for urgent in [true, false] {
            loop {
                let lane = if urgent {
                    &mut self.urgent
                } else {
                    &mut self.normal
                };
                let Some(key) = lane.pop_front() else { break };
                if self.queued.get(&key) == Some(&urgent) {
                    self.queued.remove(&key);
                    return Some(key);
                }
            }
        }
        None
    }

    /// A blob released with an estimated `cost` took `actual` bytes: the
    /// difference is given back (or taken), so that small blobs and targets
    /// that held a blob already do not use up the pace.
    pub fn settle(&mut self, cost: u64, actual: u64) {
        self.tokens = (self.tokens + cost as f64 - actual as f64).min(self.pace.burst as f64);
    }

    /// When `cost` bytes will be allowed, from `now`.
    pub fn wait_for(&mut self, now: Instant, cost: u64) -> std::time::Duration {
        self.refill(now);
        let missing = cost.min(self.pace.burst) as f64 - self.tokens;
        if missing <= 0.0 || self.pace.bytes_per_sec == 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(missing / self.pace.bytes_per_sec as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::time::Duration;

    fn id(rng: &mut StdRng) -> NodeId {
        NodeId::from_bytes(rng.random())
    }

    /// Over random networks: when a holder leaves, exactly the nodes that
    /// are holders afterwards and were holders or the next in line repair,
    /// and together they restore r holders.
    #[test]
    fn after_a_holder_leaves_the_new_closest_repair() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..500 {
            let r = rng.random_range(1..5);
            let nodes: Vec<NodeId> = (0..rng.random_range(r + 1..40))
                .map(|_| id(&mut rng))
                .collect();
            let key = id(&mut rng);
            let mut by_distance = nodes.clone();
            by_distance.sort_by_key(|n| distance(n, &key));
            let holders: Vec<NodeId> = by_distance[..r].to_vec();
            let gone = holders[rng.random_range(0..r)];
            let live: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != gone).collect();
            let repairing: Vec<NodeId> = live
                .iter()
                .copied()
                .filter(|me| should_repair(me, &key, &gone, &live, r))
                .collect();
            let new_holders: Vec<NodeId> = by_distance
                .iter()
                .copied()
                .filter(|n| *n != gone)
                .take(r)
                .collect();
            // Every node that repairs is a holder now; every surviving
            // holder repairs (so the newcomer to the set gets the blob).
            for n in &repairing {
                assert!(new_holders.contains(n));
            }
            for h in &holders {
                if *h != gone {
                    assert!(repairing.contains(h), "a surviving holder did not repair");
                }
            }
            // Holding is the same rule.
            for n in &live {
                assert_eq!(should_hold(n, &key, &live, r), new_holders.contains(n));
            }
            // A node that was never near does nothing.
            let far: Vec<NodeId> = by_distance.iter().copied().skip(r + 1).collect();
            for n in far {
                assert!(!should_repair(&n, &key, &gone, &live, r));
            }
        }
    }

    /// When a node joins among a key's closest, every holder that stays
    /// among them hands it over, and nobody else does.
    #[test]
    fn a_newcomer_among_the_closest_is_handed_the_blob() {
        let mut rng = StdRng::seed_from_u64(6);
        for _ in 0..500 {
            let r = rng.random_range(1..5);
            let mut live: Vec<NodeId> =
                (0..rng.random_range(r..40)).map(|_| id(&mut rng)).collect();
            let key = id(&mut rng);
            let joined = id(&mut rng);
            live.push(joined);
            let mut by_distance = live.clone();
            by_distance.sort_by_key(|n| distance(n, &key));
            let closest = &by_distance[..r];
            for me in &live {
                let hands = should_hand_over(me, &key, &joined, &live, r);
                let expect = *me != joined && closest.contains(&joined) && closest.contains(me);
                assert_eq!(hands, expect);
            }
        }
    }

    #[test]
    fn the_queue_is_bounded_deduplicated_and_paced() {
        let mut q = RepairQueue::new(
            3,
            Pace {
                bytes_per_sec: 1000,
                burst: 1000,
            },
        );
        let t = Instant::now();
        assert!(q.push(Hash([1; 32])));
        assert!(q.push(Hash([2; 32])));
        assert!(!q.push(Hash([2; 32])));
        assert!(q.push(Hash([3; 32])));
        assert!(!q.push(Hash([4; 32])));
        assert_eq!(q.dropped, 1);
        // 1000 bytes of burst: one 800-byte repair now, the next later.
        assert_eq!(q.next(t, 800), Some(Hash([1; 32])));
        assert_eq!(q.next(t, 800), None);
        let wait = q.wait_for(t, 800);
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_millis(600),
            "{wait:?}"
        );
        assert_eq!(q.next(t + wait, 800), Some(Hash([2; 32])));
        // Over a long run the rate holds: ~1000 bytes a second.
        let mut sent = 0u64;
        let mut now = t + wait;
        for _ in 0..100 {
            q.push(Hash([9; 32]));
            now += Duration::from_millis(100);
            while let Some(_k) = q.next(now, 100) {
                sent += 100;
                q.push(Hash([9; 32]));
            }
        }
        assert!((9_000..=11_500).contains(&sent), "{sent} bytes in 10 s");
    }

    #[test]
    fn a_blob_that_lost_a_holder_goes_first() {
        let t = Instant::now();
        let pace = Pace {
            bytes_per_sec: 1000,
            burst: 1_000_000,
        };
        let mut q = RepairQueue::new(4, pace);
        assert!(q.push(Hash([1; 32])));
        assert!(q.push(Hash([2; 32])));
        assert!(q.push_urgent(Hash([3; 32])));
        // Queued already in the normal lane: moved to the urgent one.
        assert!(q.push_urgent(Hash([2; 32])));
        assert!(!q.push_urgent(Hash([2; 32])), "queued once per lane");
        assert!(!q.push(Hash([3; 32])), "an urgent blob stays urgent");
        assert_eq!(q.len(), 3);
        assert!(q.push(Hash([4; 32])));
        assert!(!q.push_urgent(Hash([5; 32])), "full");
        assert_eq!(q.dropped, 1);
        let order: Vec<u8> = std::iter::from_fn(|| q.next(t, 1).map(|h| h.0[0])).collect();
        assert_eq!(order, vec![3, 2, 1, 4]);
        assert!(q.is_empty());
        // A blob released may be queued again.
        assert!(q.push(Hash([2; 32])));
        assert_eq!(q.next(t, 1), Some(Hash([2; 32])));
        // Moved and released over and over while the normal lane never
        // drains: the lanes stay bounded.
        assert!(q.push(Hash([7; 32])));
        for _ in 0..1000 {
            assert!(q.push(Hash([8; 32])));
            assert!(q.push_urgent(Hash([8; 32])));
            assert_eq!(q.next(t, 1), Some(Hash([8; 32])));
        }
        assert!(q.urgent.len() + q.normal.len() <= 2 * 4 + 16 + 1);
        assert_eq!(q.next(t, 1), Some(Hash([7; 32])));
        assert!(q.next(t, 1).is_none());
    }

    #[test]
    fn what_a_repair_did_not_send_is_given_back() {
        let t = Instant::now();
        let mut q = RepairQueue::new(
            10,
            Pace {
                bytes_per_sec: 1000,
                burst: 1000,
            },
        );
        q.push(Hash([1; 32]));
        q.push(Hash([2; 32]));
        assert!(q.next(t, 1000).is_some());
        assert!(q.next(t, 1000).is_none(), "the estimate used the burst");
        // The target held the blob already: nothing was sent.
        q.settle(1000, 0);
        assert!(q.next(t, 1000).is_some(), "given back");
        // One that took more than estimated is charged the rest.
        q.push(Hash([3; 32]));
        q.settle(1000, 3000);
        assert_eq!(q.wait_for(t, 1000), Duration::from_secs(3));
    }
}
