//! An iterative Kademlia lookup as a plain state machine (no socket, no
//! timer): [`Lookup::poll`] says whom to ask, the caller asks and reports
//! back with [`Lookup::on_response`] or [`Lookup::on_failure`]; time comes in
//! as `now`. The same code drives the node's real lookups and the simulator.
//!
//! α queries run at once on each path; a path ends when the k closest nodes
//! it knows (and has not seen fail) have all answered. With `paths > 1` the
//! lookup runs S/Kademlia's disjoint paths: the seeds are dealt out round
//! robin, a node's answer feeds only the path that asked it, and no node is
//! asked by two paths, so a hostile node can mislead one path but not the
//! others.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use butter::dht::lookup::{Lookup, LookupConfig};
//! use butter::NodeId;
//!
//! let target = NodeId::from_bytes([0; 32]);
//! let near = NodeId::from_bytes([1; 32]);
//! let nearer = NodeId::from_bytes([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
//!                                  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
//! let now = Instant::now();
//! let mut lookup = Lookup::new(target, [(near, "seed")], LookupConfig::default());
//! let asks = lookup.poll(now);
//! assert_eq!(asks.len(), 1); // the only node known so far
//! lookup.on_response(&asks[0].to, [(nearer, "found")], now);
//! let asks = lookup.poll(now);
//! assert_eq!(asks[0].to, nearer);
//! lookup.on_response(&nearer, [], now);
//! assert!(lookup.is_finished());
//! assert_eq!(lookup.closest()[0].0, nearer);
//! assert_eq!(lookup.stats().hops, 2);
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::identity::NodeId;
use crate::peers::table::distance;

/// How a lookup runs.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    /// Queries in flight at once, per path.
    pub alpha: usize,
    /// How many closest nodes the lookup converges on (Kademlia's k).
    pub k: usize,
    /// Disjoint paths (1: plain Kademlia).
    pub paths: usize,
    /// A query unanswered for this long counts as failed.
    pub timeout: Duration,
    /// Queries in all, whatever the answers say (a hard bound on the work a
    /// lookup does for hostile answers), shared evenly by the paths: a path
    /// that hostile nodes lead astray cannot spend the others' share.
    pub max_queries: usize,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            alpha: 3,
            k: 20,
            paths: 1,
            timeout: Duration::from_secs(2),
            max_queries: 256,
        }
    }
}

impl LookupConfig {
    /// The default with `d` disjoint paths.
    pub fn disjoint(d: usize) -> Self {
        LookupConfig {
            paths: d.max(1),
            ..Default::default()
        }
    }
}

/// A query to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<C> {
    /// Whom to ask.
    pub to: NodeId,
    /// How to reach it (what the caller gave for it).
    pub contact: C,
    /// The path it belongs to.
    pub path: usize,
}

/// What a lookup cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Queries sent.
    pub queries: usize,
    /// Answers received.
    pub responses: usize,
    /// Queries that failed or timed out.
    pub failures: usize,
    /// Hops to the result: for a value, to the node that held it; otherwise,
    /// to the closest node found (a seed is one hop away).
    pub hops: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotAsked,
    Waiting(Instant),
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Peer<C> {
    id: NodeId,
    distance: [u8; 32],
    contact: C,
    state: State,
    hops: u8,
}

#[derive(Debug, Clone)]
struct Path<C> {
    /// Sorted by distance to the target, closest first; bounded.
    peers: Vec<Peer<C>>,
    waiting: usize,
    /// Queries this path sent.
    sent: usize,
    done: bool,
}

/// One lookup for the nodes closest to a target (or for a value stored there).
#[derive(Debug, Clone)]
pub struct Lookup<C> {
    target: NodeId,
    config: LookupConfig,
    paths: Vec<Path<C>>,
    /// Which path each known node belongs to: no node is on two paths.
    owner: HashMap<NodeId, usize>,
    stats: LookupStats,
    found: Option<u8>,
}

impl<C: Clone> Lookup<C> {
    /// A lookup for `target`, starting from `seeds` (the local table's
    /// closest nodes).
    pub fn new(
        target: NodeId,
        seeds: impl IntoIterator<Item = (NodeId, C)>,
        mut config: LookupConfig,
    ) -> Self {
        config.alpha = config.alpha.max(1);
        config.k = config.k.max(1);
        config.paths = config.paths.max(1);
        let mut lookup = Lookup {
            target,
            paths: vec![
                Path {
                    peers: Vec::new(),
                    waiting: 0,
                    sent: 0,
                    done: false,
                };
                config.paths
            ],
            config,
            owner: HashMap::new(),
            stats: LookupStats::default(),
            found: None,
        };
        let mut seeds: Vec<(NodeId, C)> = seeds.into_iter().collect();
        seeds.sort_by_key(|(id, _)| distance(id, &target));
        seeds.dedup_by_key(|(id, _)| *id);
        // Dealt out round robin: every path starts near the target.
        for (i, (id, contact)) in seeds.into_iter().enumerate() {
            let path = i % lookup.config.paths;
            lookup.insert(path, id, contact, 1);
        }
        for index in 0..lookup.paths.len() {
            lookup.settle(index);
        }
        lookup
    }

    /// The target.
    pub fn target(&self) -> &NodeId {
        &self.target
    }

    /// What the lookup cost so far.
    pub fn stats(&self) -> LookupStats {
        let mut stats = self.stats;
        stats.hops = self
            .found
            .unwrap_or_else(|| self.closest_peers().first().map(|p| p.hops).unwrap_or(0));
        stats
    }

    /// Whether every path has ended (or the value was found).
    pub fn is_finished(&self) -> bool {
        self.found.is_some() || self.paths.iter().all(|p| p.done)
    }

    /// Whether a value was reported found ([`Lookup::on_value`]).
    pub fn found(&self) -> bool {
        self.found.is_some()
    }

    /// The queries to send now (none once finished); also notices queries
    /// that timed out.
    pub fn poll(&mut self, now: Instant) -> Vec<Query<C>> {
        let mut out = Vec::new();
        if self.is_finished() {
            return out;
        }
        let timeout = self.config.timeout;
        for path in &mut self.paths {
            for peer in &mut path.peers {
                if let State::Waiting(since) = peer.state {
                    if now.saturating_duration_since(since) >= timeout {
                        peer.state = State::Failed;
                        path.waiting -= 1;
                        self.stats.failures += 1;
                    }
                }
            }
        }
        let (k, alpha, max) = (self.config.k, self.config.alpha, self.path_budget());
        for (index, path) in self.paths.iter_mut().enumerate() {
            if path.done {
                continue;
            }
            // The k closest nodes not seen failing are the ones that count.
            for peer in path
                .peers
                .iter_mut()
                .filter(|p| p.state != State::Failed)
                .take(k)
            {
                if path.waiting >= alpha || path.sent >= max {
                    break;
                }
                if peer.state == State::NotAsked {
                    peer.state = State::Waiting(now);
                    path.waiting += 1;
                    path.sent += 1;
                    self.stats.queries += 1;
                    out.push(Query {
                        to: peer.id,
                        contact: peer.contact.clone(),
                        path: index,
                    });
                }
            }
        }
        for index in 0..self.paths.len() {
            self.settle(index);
        }
        out
    }

    /// Ends a path with nothing left to do: nothing waiting, and nobody
    /// among its k closest left to ask (or the query budget spent).
    fn settle(&mut self, index: usize) {
        let (k, budget) = (self.config.k, self.path_budget());
        let path = &mut self.paths[index];
        let spent = path.sent >= budget;
        if path.done || path.waiting > 0 {
            return;
        }
        let unasked = path
            .peers
            .iter()
            .filter(|p| p.state != State::Failed)
            .take(k)
            .any(|p| p.state == State::NotAsked);
        if !unasked || spent {
            path.done = true;
        }
    }

    fn path_budget(&self) -> usize {
        (self.config.max_queries / self.config.paths).max(1)
    }

    /// When [`Lookup::poll`] should run again at the latest (the next query
    /// to time out), if any query is waiting.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.paths
            .iter()
            .flat_map(|p| &p.peers)
            .filter_map(|p| match p.state {
                State::Waiting(since) => Some(since + self.config.timeout),
                _ => None,
            })
            .min()
    }

    /// `from` answered with the contacts it knows closest to the target.
    /// Answers from nodes not asked (or asked and already timed out) are
    /// ignored; contacts beyond k are ignored.
    pub fn on_response(
        &mut self,
        from: &NodeId,
        contacts: impl IntoIterator<Item = (NodeId, C)>,
        _now: Instant,
    ) {
        let Some((path, hops)) = self.mark(from, State::Answered) else {
            return;
        };
        self.stats.responses += 1;
        for (id, contact) in contacts.into_iter().take(self.config.k) {
            self.insert(path, id, contact, hops.saturating_add(1));
        }
        self.settle(path);
    }

    /// `from` holds the value looked for: the lookup is over.
    pub fn on_value(&mut self, from: &NodeId, _now: Instant) {
        if let Some((_, hops)) = self.mark(from, State::Answered) {
            self.stats.responses += 1;
            self.found = Some(hops);
        }
    }

    /// A query to `from` failed (an error, a refusal, a bad answer).
    pub fn on_failure(&mut self, from: &NodeId, _now: Instant) {
        if let Some((path, _)) = self.mark(from, State::Failed) {
            self.stats.failures += 1;
            self.settle(path);
        }
    }

    /// The k closest nodes that answered, closest first.
    pub fn closest(&self) -> Vec<(NodeId, C)> {
        self.closest_peers()
            .into_iter()
            .map(|p| (p.id, p.contact.clone()))
            .collect()
    }

    fn closest_peers(&self) -> Vec<&Peer<C>> {
        let mut all: Vec<&Peer<C>> = self
            .paths
            .iter()
            .flat_map(|p| &p.peers)
            .filter(|p| p.state == State::Answered)
            .collect();
        all.sort_by_key(|p| p.distance);
        all.truncate(self.config.k);
        all
    }

    /// Moves a waiting peer to `state`; its path and hops, if it was waiting.
    fn mark(&mut self, id: &NodeId, state: State) -> Option<(usize, u8)> {
        let path = *self.owner.get(id)?;
        let p = &mut self.paths[path];
        let peer = p.peers.iter_mut().find(|peer| peer.id == *id)?;
        if !matches!(peer.state, State::Waiting(_)) {
            return None;
        }
        peer.state = state;
        p.waiting -= 1;
        Some((path, peer.hops))
    }

    fn insert(&mut self, path: usize, id: NodeId, contact: C, hops: u8) {
        if self.owner.contains_key(&id) {
            return;
        }
        let d = distance(&id, &self.target);
        let peers = &mut self.paths[path].peers;
        // Bounded: far candidates that were never asked go first.
        let cap = self.config.k * 4;
        if peers.len() >= cap {
            let Some(last) = peers
                .iter()
                .rposition(|p| p.state == State::NotAsked || p.state == State::Failed)
            else {
                return;
            };
            if peers[last].distance <= d {
                return;
            }
            let gone = peers.remove(last);
            self.owner.remove(&gone.id);
        }
        let at = peers.partition_point(|p| p.distance < d);
        peers.insert(
            at,
            Peer {
                id,
                distance: d,
                contact,
                state: State::NotAsked,
                hops,
            },
        );
        self.owner.insert(id, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::table::bucket_index;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{RngExt, SeedableRng};

    /// A network of nodes with Kademlia tables (up to k per bucket, picked at
    /// random), answering instantly or not at all.
    struct Net {
        ids: Vec<NodeId>,
        index: HashMap<NodeId, usize>,
        tables: Vec<Vec<usize>>,
        hostile: Vec<bool>,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Hostility {
        /// Hostile nodes answer with the hostile nodes closest to the
        /// target and never hand over the value.
        Collude,
        /// Hostile nodes never answer.
        Drop,
        /// Hostile nodes answer with k made-up ids nearer the target than
        /// any real node, which never answer.
        Fabricate,
    }

    impl Net {
        fn new(n: usize, k: usize, hostile_share: f64, rng: &mut StdRng) -> Net {
            let ids: Vec<NodeId> = (0..n).map(|_| NodeId::from_bytes(rng.random())).collect();
            let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            let tables = (0..n)
                .map(|i| {
                    let mut buckets: std::collections::BTreeMap<usize, Vec<usize>> =
                        Default::default();
                    for j in 0..n {
                        if j != i {
                            buckets
                                .entry(bucket_index(&ids[i], &ids[j]))
                                .or_default()
                                .push(j);
                        }
                    }
                    let mut table = Vec::new();
                    for (_, mut b) in buckets {
                        b.shuffle(rng);
                        b.truncate(k);
                        table.extend(b);
                    }
                    table
                })
                .collect();
            let hostile = (0..n).map(|_| rng.random_bool(hostile_share)).collect();
            Net {
                ids,
                index,
                tables,
                hostile,
            }
        }

        fn closest_of(&self, node: usize, target: &NodeId, k: usize) -> Vec<(NodeId, usize)> {
            let mut t: Vec<usize> = self.tables[node].clone();
            t.sort_by_key(|j| distance(&self.ids[*j], target));
            t.truncate(k);
            t.into_iter().map(|j| (self.ids[j], j)).collect()
        }

        fn true_closest(&self, target: &NodeId, k: usize, honest_only: bool) -> Vec<NodeId> {
            let mut all: Vec<usize> = (0..self.ids.len())
                .filter(|i| !honest_only || !self.hostile[*i])
                .collect();
            all.sort_by_key(|j| distance(&self.ids[*j], target));
            all.truncate(k);
            all.into_iter().map(|j| self.ids[j]).collect()
        }

        /// Runs a lookup from `from` to its end; `holders` hold the value.
        fn run(
            &self,
            from: usize,
            target: NodeId,
            config: LookupConfig,
            holders: &[NodeId],
            hostility: Hostility,
        ) -> Lookup<usize> {
            let k = config.k;
            let seeds = self.closest_of(from, &target, k);
            let mut lookup = Lookup::new(target, seeds, config);
            let mut now = Instant::now();
            let mut fakes = StdRng::seed_from_u64(u64::from(target.as_bytes()[0]));
            let hostile_near: Vec<(NodeId, usize)> = {
                let mut h: Vec<usize> = (0..self.ids.len()).filter(|i| self.hostile[*i]).collect();
                h.sort_by_key(|j| distance(&self.ids[*j], &target));
                h.truncate(k);
                h.into_iter().map(|j| (self.ids[j], j)).collect()
            };
            for _round in 0..10_000 {
                if lookup.is_finished() {
                    break;
                }
                let queries = lookup.poll(now);
                if queries.is_empty() {
                    // Only silent nodes are left waiting: on to their timeout.
                    if lookup.is_finished() {
                        break;
                    }
                    now = lookup.next_timeout().expect("waiting on someone");
                    continue;
                }
                for q in queries {
                    let Some(&node) = self.index.get(&q.to) else {
                        // A made-up contact: nobody is there.
                        continue;
                    };
                    if self.hostile[node] {
                        match hostility {
                            Hostility::Drop => {}
                            Hostility::Collude => {
                                lookup.on_response(&q.to, hostile_near.clone(), now)
                            }
                            Hostility::Fabricate => {
                                let fake: Vec<(NodeId, usize)> = (0..k)
                                    .map(|_| {
                                        let mut b: [u8; 32] = fakes.random();
                                        b[..3].copy_from_slice(&target.as_bytes()[..3]);
                                        (NodeId::from_bytes(b), usize::MAX)
                                    })
                                    .collect();
                                lookup.on_response(&q.to, fake, now)
                            }
                        }
                    } else if holders.contains(&q.to) {
                        lookup.on_value(&q.to, now);
                    } else {
                        lookup.on_response(&q.to, self.closest_of(node, &target, k), now);
                    }
                }
                now += Duration::from_millis(10);
            }
            assert!(lookup.is_finished(), "a lookup that never ends");
            lookup
        }
    }

    fn quantile(v: &mut [usize], q: f64) -> usize {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    }

    #[test]
    fn every_lookup_finds_the_true_k_closest_on_1000_nodes() {
        let mut rng = StdRng::seed_from_u64(1);
        let net = Net::new(1000, 20, 0.0, &mut rng);
        let (mut hops, mut msgs) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let target = NodeId::from_bytes(rng.random());
            let from = rng.random_range(0..1000);
            let lookup = net.run(from, target, LookupConfig::default(), &[], Hostility::Drop);
            let got: Vec<NodeId> = lookup.closest().into_iter().map(|(id, _)| id).collect();
            assert_eq!(got, net.true_closest(&target, 20, false));
            hops.push(lookup.stats().hops as usize);
            msgs.push(lookup.stats().queries);
        }
        let (h50, m50) = (quantile(&mut hops, 0.5), quantile(&mut msgs, 0.5));
        println!(
            "1,000 nodes: hops median {h50} p90 {}; queries median {m50} p90 {}",
            quantile(&mut hops, 0.9),
            quantile(&mut msgs, 0.9)
        );
        assert!(h50 <= 3, "median hops {h50}");
    }

    /// find_value on a network where a fifth of the nodes collude: they
    /// answer with each other (as close to the key as honest nodes are) and
    /// never hand over the value, which the 20 honest nodes closest to the
    /// key hold.
    fn value_success(paths: usize, hostility: Hostility, seed: u64) -> f64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let net = Net::new(1000, 20, 0.2, &mut rng);
        let runs = 300;
        let mut ok = 0;
        for _ in 0..runs {
            let key = NodeId::from_bytes(rng.random());
            let holders = net.true_closest(&key, 20, true);
            let from = loop {
                let f = rng.random_range(0..1000);
                if !net.hostile[f] {
                    break f;
                }
            };
            let config = LookupConfig::disjoint(paths);
            let lookup = net.run(from, key, config, &holders, hostility);
            ok += usize::from(lookup.found());
        }
        ok as f64 / runs as f64
    }

    #[test]
    fn disjoint_paths_find_values_despite_a_fifth_of_hostile_nodes() {
        let mut line = String::from("find_value with 20 % hostile nodes:");
        for (name, hostility) in [
            ("colluding", Hostility::Collude),
            ("dropping", Hostility::Drop),
            ("fabricating", Hostility::Fabricate),
        ] {
            let plain = value_success(1, hostility, 2);
            let disjoint = value_success(3, hostility, 2);
            line.push_str(&format!(
                " {name}: plain {:.1} %, 3 disjoint paths {:.1} %;",
                plain * 100.0,
                disjoint * 100.0
            ));
            assert!(disjoint >= 0.99, "{name}: {disjoint}");
        }
        println!("{line}");
    }

    #[test]
    fn paths_never_share_a_node_and_answers_feed_only_their_path() {
        let mut rng = StdRng::seed_from_u64(4);
        let net = Net::new(300, 8, 0.0, &mut rng);
        let target = NodeId::from_bytes(rng.random());
        let seeds = net.closest_of(0, &target, 8);
        let mut lookup = Lookup::new(target, seeds, LookupConfig::disjoint(3));
        let now = Instant::now();
        let mut asked: HashMap<NodeId, usize> = HashMap::new();
        while !lookup.is_finished() {
            let queries = lookup.poll(now);
            assert!(!queries.is_empty(), "stalled without waiting queries");
            for q in queries {
                assert!(asked.insert(q.to, q.path).is_none(), "a node asked twice");
                let node = net.index[&q.to];
                lookup.on_response(&q.to, net.closest_of(node, &target, 8), now);
            }
        }
        let per_path: Vec<usize> = (0..3)
            .map(|p| asked.values().filter(|v| **v == p).count())
            .collect();
        assert!(per_path.iter().all(|n| *n > 0), "{per_path:?}");
    }

    #[test]
    fn silence_times_out_and_the_lookup_moves_on() {
        let t0 = Instant::now();
        let ids: Vec<NodeId> = (1..=4u8).map(|i| NodeId::from_bytes([i; 32])).collect();
        let mut lookup = Lookup::new(
            NodeId::from_bytes([0; 32]),
            ids.iter().map(|id| (*id, ())),
            LookupConfig {
                alpha: 2,
                ..Default::default()
            },
        );
        let first = lookup.poll(t0);
        assert_eq!(first.len(), 2);
        assert_eq!(lookup.next_timeout(), Some(t0 + Duration::from_secs(2)));
        // Nothing new before the timeout...
        assert!(lookup.poll(t0 + Duration::from_secs(1)).is_empty());
        // ...then the silent two fail and the next two are asked.
        let next = lookup.poll(t0 + Duration::from_secs(2));
        assert_eq!(next.len(), 2);
        assert_eq!(lookup.stats().failures, 2);
        // A late answer from a failed node changes nothing.
        lookup.on_response(&first[0].to, [(NodeId::from_bytes([9; 32]), ())], t0);
        assert_eq!(lookup.stats().responses, 0);
        for q in next {
            lookup.on_response(&q.to, [], t0);
        }
        assert!(lookup.is_finished());
        assert_eq!(lookup.closest().len(), 2);
    }

    #[test]
    fn hostile_answers_cannot_make_a_lookup_unbounded() {
        // Every answer names k brand-new nodes, each closer than the last.
        let t0 = Instant::now();
        let target = NodeId::from_bytes([0; 32]);
        let config = LookupConfig::default();
        let max = config.max_queries;
        let mut lookup = Lookup::new(target, [(NodeId::from_bytes([255; 32]), ())], config);
        let mut rng = StdRng::seed_from_u64(5);
        let mut rounds = 0;
        while !lookup.is_finished() {
            rounds += 1;
            assert!(rounds < 10_000);
            for q in lookup.poll(t0) {
                let fresh: Vec<(NodeId, ())> = (0..40)
                    .map(|_| {
                        let mut b: [u8; 32] = rng.random();
                        b[0] = 0;
                        (NodeId::from_bytes(b), ())
                    })
                    .collect();
                lookup.on_response(&q.to, fresh, t0);
            }
        }
        assert!(lookup.stats().queries <= max);
        assert!(lookup.paths[0].peers.len() <= 80, "candidates are bounded");
    }
}
