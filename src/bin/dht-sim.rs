//! `dht-sim`: the DHT's real routing table ([`KBuckets`]) and lookup
//! ([`Lookup`]) code, run for N simulated nodes without sockets: simulated
//! latency, loss and churn, seeded randomness, virtual time.
//!
//! ```text
//! cargo run --release --bin dht-sim -- --nodes 1000,10000,100000 --scenario all
//! ```
//!
//! Scenarios: `plain` (lookups on a stable network), `churn` (nodes leave and
//! join at a rate while lookups run; joiners bootstrap with a self-lookup),
//! `adversarial` (a fraction of nodes collude: they answer with each other
//! and with fabricated ids, never with a value, or drop requests),
//! `sybil` (a fifth of the network is one /24 flooding every table, and
//! colludes as above). Each prints hops (median, p90, p99), messages per
//! lookup, success, simulated latency, and table size and memory per node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use butter::dht::lookup::{Lookup, LookupConfig};
use butter::peers::table::{distance, random_id_in_bucket, Insert, KBuckets, Limits};
use butter::peers::CALL_FAILURES;
use butter::{NodeAddr, NodeId};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dht-sim",
    about = "Simulate Butter's DHT with its real table and lookup code"
)]
struct Args {
    /// Network sizes to simulate, comma separated.
    #[arg(long, default_value = "1000,10000", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// plain, churn, adversarial, sybil or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Lookups measured per scenario.
    #[arg(long, default_value_t = 1000)]
    lookups: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a query or its answer is lost, in the lossy runs
    /// (the others lose nothing).
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// One-way latency range in milliseconds (uniform).
    #[arg(long, default_value = "5,80", value_delimiter = ',')]
    latency_ms: Vec<u64>,
    /// Fraction of adversarial nodes in the `adversarial` scenario.
    #[arg(long, default_value_t = 0.2)]
    evil: f64,
    /// Fraction of nodes leaving (and as many joining) per simulated minute
    /// in the `churn` scenario.
    #[arg(long, default_value_t = 0.1)]
    churn_per_minute: f64,
    /// Disjoint paths of the value lookups (find_node runs one).
    #[arg(long, default_value_t = 3)]
    paths: usize,
}

/// How a simulated node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Honest,
    /// Answers with colluders and fabricated ids, never a value.
    Liar,
    /// Never answers.
    Dropper,
}

struct Net {
    ids: Vec<NodeId>,
    addrs: Vec<SocketAddr>,
    tables: Vec<KBuckets>,
    alive: Vec<bool>,
    role: Vec<Role>,
    index: HashMap<NodeId, usize>,
    liars: Vec<usize>,
    rng: StdRng,
    base: Instant,
    loss: f64,
    limits: Limits,
    args: Args,
}

#[derive(Default)]
struct Tally {
    hops: Vec<u8>,
    messages: Vec<usize>,
    latency: Vec<Duration>,
    ok: usize,
    total: usize,
}

impl Tally {
    fn add(&mut self, ok: bool, hops: u8, messages: usize, latency: Duration) {
        self.total += 1;
        self.messages.push(messages);
        if ok {
            self.ok += 1;
            self.hops.push(hops);
            self.latency.push(latency);
        }
    }

    fn line(&mut self, label: &str) -> String {
        fn pct<T: Copy + Ord + Default>(v: &mut [T], p: f64) -> T {
            if v.is_empty() {
                return T::default();
            }
            v.sort();
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
        format!(
            "{label:<34} success {:>6.2}%  hops {}/{}/{}  messages {}/{}/{}  latency {:>4}/{:>5} ms",
            100.0 * self.ok as f64 / self.total.max(1) as f64,
            pct(&mut self.hops, 0.5),
            pct(&mut self.hops, 0.9),
            pct(&mut self.hops, 0.99),
            pct(&mut self.messages, 0.5),
            pct(&mut self.messages, 0.9),
            pct(&mut self.messages, 0.99),
            pct(&mut self.latency, 0.5).as_millis(),
            pct(&mut self.latency, 0.99).as_millis(),
        )
    }
}

/// The outcome of one simulated lookup.
struct Outcome {
    lookup: Lookup<usize>,
    elapsed: Duration,
    /// Nodes asked that never answered.
    unanswered: Vec<usize>,
}

impl Net {
    fn new(args: &Args, n: usize, roles: impl Fn(usize) -> Role, sybil_site: bool) -> Net {
        Net::with_limits(args, n, roles, sybil_site, Limits::default())
    }

    fn with_limits(
        args: &Args,
        n: usize,
        roles: impl Fn(usize) -> Role,
        sybil_site: bool,
        limits: Limits,
    ) -> Net {
        let mut rng = StdRng::seed_from_u64(args.seed ^ n as u64);
        let mut net = Net {
            ids: Vec::with_capacity(n),
            addrs: Vec::with_capacity(n),
            tables: Vec::with_capacity(n),
            alive: Vec::with_capacity(n),
            role: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
            liars: Vec::new(),
            loss: 0.0,
            limits,
            rng: StdRng::seed_from_u64(args.seed.wrapping_mul(31) ^ n as u64),
            base: Instant::now(),
            args: args.clone(),
        };
        for i in 0..n {
            let role = roles(i);
            let ip = if sybil_site && role != Role::Honest {
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1))
            } else {
                public_ip(&mut rng)
            };
            net.push(NodeId::from_bytes(rng.random()), ip, role);
        }
        net
    }

    fn push(&mut self, id: NodeId, ip: IpAddr, role: Role) -> usize {
        let i = self.ids.len();
        self.ids.push(id);
        self.addrs.push(SocketAddr::new(ip, 7400));
        self.tables.push(KBuckets::new(id, self.limits.clone()));
        self.alive.push(true);
        self.role.push(role);
        self.index.insert(id, i);
        if role == Role::Liar {
            self.liars.push(i);
        }
        i
    }

    fn rtt(&mut self) -> Duration {
        let (lo, hi) = (
            self.args.latency_ms[0],
            self.args.latency_ms[1].max(self.args.latency_ms[0]),
        );
        Duration::from_millis(self.rng.random_range(lo..=hi) * 2)
    }

    /// Offers `j` to `i`'s table through the real insertion rules; a
    /// ping-before-evict is answered by whether the oldest is alive.
    fn offer(&mut self, i: usize, j: usize, now: Instant) {
        if i == j || j == 0 {
            return;
        }
        let rtt = self.rtt();
        let addr = NodeAddr::new(self.ids[j], [self.addrs[j]]);
        if let Insert::PingFirst(oldest) = self.tables[i].insert(addr, rtt, now) {
            let alive = self.index.get(&oldest).is_some_and(|&o| self.alive[o]);
            self.tables[i].ping_result(&oldest, alive, now);
        }
    }

    /// Every node's table filled as a long-running network would have it:
    /// for each bucket, candidates from the ids that fall in it, each
    /// offered through the real insertion rules (site limits included).
    fn populate(&mut self) {
        let mut sorted: Vec<(NodeId, usize)> = self
            .ids
            .iter()
            .copied()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        sorted.sort();
        let k = Limits::default().k;
        let now = self.base;
        for i in 0..self.ids.len() {
            let local = self.ids[i];
            for b in 0..64 {
                let (lo, hi) = bucket_range(&local, b);
                let start = sorted.partition_point(|(id, _)| *id < lo);
                let end = sorted.partition_point(|(id, _)| *id <= hi);
                if start >= end {
                    if end == sorted.len() && start == end && b > 40 {
                        break;
                    }
                    continue;
                }
                let range = end - start;
                if range <= 3 * k {
                    let js: Vec<usize> = sorted[start..end].iter().map(|(_, j)| *j).collect();
                    for j in js {
                        self.offer(i, j, now);
                    }
                } else {
                    for _ in 0..3 * k {
                        let j = sorted[self.rng.random_range(start..end)].1;
                        self.offer(i, j, now);
                    }
                }
            }
        }
    }

    /// One lookup from `from` for `target`, in virtual time. `holders`
    /// answer with the value.
    fn lookup(
        &mut self,
        from: usize,
        target: NodeId,
        paths: usize,
        holders: &HashSet<usize>,
        colluders: &[usize],
        now: Instant,
    ) -> Outcome {
        let k = Limits::default().k;
        let seeds: Vec<(NodeId, usize)> = self.tables[from]
            .closest(&target, k)
            .iter()
            .filter_map(|e| self.index.get(&e.addr.id).map(|&j| (e.addr.id, j)))
            .collect();
        let config = LookupConfig {
            paths,
            ..LookupConfig::default()
        };
        let mut lookup = Lookup::new(target, seeds, config);
        // (due, sequence, from, what): answers in flight.
        let mut inflight: BinaryHeap<Reverse<(Duration, u64, usize)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut t = Duration::ZERO;
        let mut unanswered = Vec::new();
        loop {
            for q in lookup.poll(now + t) {
                let j = q.contact;
                let answers = self.alive[j]
                    && self.role[j] != Role::Dropper
                    && !self.rng.random_bool(self.loss);
                if answers {
                    seq += 1;
                    let rtt = self.rtt();
                    inflight.push(Reverse((t + rtt, seq, j)));
                } else {
                    unanswered.push(j);
                }
            }
            if lookup.is_finished() {
                break;
            }
            let next_answer = inflight.peek().map(|Reverse((due, _, _))| *due);
            let next_timeout = lookup.next_timeout().map(|at| at - now);
            let Some(next) = [next_answer, next_timeout].into_iter().flatten().min() else {
                break;
            };
            t = next.max(t);
            if next_answer == Some(next) {
                let Reverse((_, _, j)) = inflight.pop().expect("peeked");
                let at = now + t;
                match self.role[j] {
                    Role::Honest if holders.contains(&j) => lookup.on_value(&self.ids[j], at),
                    Role::Honest => {
                        let contacts: Vec<(NodeId, usize)> = self.tables[j]
                            .closest(&target, k)
                            .iter()
                            .filter_map(|e| self.index.get(&e.addr.id).map(|&c| (e.addr.id, c)))
                            .collect();
                        lookup.on_response(&self.ids[j], contacts, at);
                    }
                    _ => {
                        // Colluders nearest the target, and ids made up to
                        // look nearer still: those point at slot 0, which
                        // never answers.
                        let mut contacts: Vec<(NodeId, usize)> = colluders
                            .iter()
                            .take(k / 2)
                            .map(|&c| (self.ids[c], c))
                            .collect();
                        for _ in 0..k / 2 {
                            contacts.push((near(&target, &mut self.rng), 0));
                        }
                        lookup.on_response(&self.ids[j], contacts, at);
                    }
                }
            }
        }
        Outcome {
            lookup,
            elapsed: t,
            unanswered,
        }
    }

    /// What the node does with a query that failed: the contact's failures
    /// go up in the asker's table, and after `CALL_FAILURES` in a row it
    /// leaves (a waiting newcomer taking its place).
    fn failures(&mut self, asker: usize, outcome: &Outcome) {
        for &j in &outcome.unanswered {
            let id = self.ids[j];
            let table = &mut self.tables[asker];
            table.failed(&id);
            if table.get(&id).is_some_and(|e| e.failures >= CALL_FAILURES) {
                table.remove(&id);
            }
        }
    }

    /// The colluders closest to `target`.
    fn colluders_near(&self, target: &NodeId) -> Vec<usize> {
        let k = Limits::default().k;
        let mut evil: Vec<([u8; 32], usize)> = self
            .liars
            .iter()
            .filter(|&&i| self.alive[i])
            .map(|&i| (distance(&self.ids[i], target), i))
            .collect();
        if evil.len() > k {
            evil.select_nth_unstable(k);
            evil.truncate(k);
        }
        evil.sort();
        evil.into_iter().map(|(_, i)| i).collect()
    }

    /// What the node's liveness checks do: each live node pings up to 64
    /// of its least recently seen hosts; the dead leave at once, a waiting
    /// newcomer taking their place.
    fn liveness(&mut self, now: Instant) {
        for i in 1..self.ids.len() {
            if !self.alive[i] {
                continue;
            }
            let mut due: Vec<(Instant, NodeId)> = self.tables[i]
                .entries()
                .map(|e| (e.last_seen, e.addr.id))
                .collect();
            due.sort();
            for (_, id) in due.into_iter().take(64) {
                let alive = self.index.get(&id).is_some_and(|&j| self.alive[j]);
                self.tables[i].ping_result(&id, alive, now);
            }
        }
    }

    fn random_alive(&mut self, honest: bool) -> usize {
        loop {
            let i = self.rng.random_range(1..self.ids.len());
            if self.alive[i] && (!honest || self.role[i] == Role::Honest) {
                return i;
            }
        }
    }

    /// Stores a value under `key` from `publisher`: a lookup for the k
    /// closest (along disjoint paths, as the node places records), then a
    /// store on each that is honest and alive.
    fn place(&mut self, publisher: usize, key: NodeId, now: Instant) -> HashSet<usize> {
        let colluders = self.colluders_near(&key);
        let paths = self.args.paths;
        let out = self.lookup(publisher, key, paths, &HashSet::new(), &colluders, now);
        out.lookup
            .closest()
            .into_iter()
            .map(|(_, j)| j)
            .filter(|&j| self.alive[j] && self.role[j] == Role::Honest)
            .collect()
    }

    fn table_line(&self) -> String {
        let live: Vec<usize> = (1..self.ids.len())
            .filter(|&i| self.alive[i] && self.role[i] == Role::Honest)
            .collect();
        let sizes: Vec<usize> = live.iter().map(|&i| self.tables[i].len()).collect();
        let mem: Vec<usize> = live
            .iter()
            .map(|&i| self.tables[i].memory_bytes())
            .collect();
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
        format!(
            "table per honest node: {:.0} hosts (max {}), {:.1} KiB (max {:.1} KiB)",
            mean(&sizes),
            sizes.iter().max().unwrap_or(&0),
            mean(&mem) / 1024.0,
            *mem.iter().max().unwrap_or(&0) as f64 / 1024.0
        )
    }
}

/// The lowest and highest ids in bucket `b` of `local`.
fn bucket_range(local: &NodeId, b: usize) -> (NodeId, NodeId) {
    let l = local.as_bytes();
    let (mut lo, mut hi) = ([0u8; 32], [0xffu8; 32]);
    for bit in 0..=b {
        let (i, m) = (bit / 8, 0x80u8 >> (bit % 8));
        let want = if bit == b { !l[i] & m } else { l[i] & m };
        lo[i] = (lo[i] & !m) | want;
        hi[i] = (hi[i] & !m) | want;
    }
    (NodeId::from_bytes(lo), NodeId::from_bytes(hi))
}

/// An id sharing a long prefix with `target` (what a liar makes up).
fn near(target: &NodeId, rng: &mut StdRng) -> NodeId {
    let b = rng.random_range(20..60);
    let mut bytes = *random_id_in_bucket(target, b, rng).as_bytes();
    // random_id_in_bucket flips bit b; near enough either way.
    bytes[31] ^= 1;
    NodeId::from_bytes(bytes)
}

fn public_ip(rng: &mut StdRng) -> IpAddr {
    loop {
        let ip = Ipv4Addr::from(rng.random::<u32>());
        let [a, ..] = ip.octets();
        if (1..224).contains(&a) && a != 10 && a != 127 && a != 100 && a != 172 && a != 192 {
            return IpAddr::V4(ip);
        }
    }
}

/// A `find_node` for a random live node, ending (as the node's does) once
/// the target itself answered.
fn find_node(
    net: &mut Net,
    from: usize,
    now: Instant,
) -> (bool, butter::dht::lookup::LookupStats, Duration) {
    let mut target_node = net.random_alive(true);
    while target_node == from {
        target_node = net.random_alive(true);
    }
    let target = net.ids[target_node];
    let holders: HashSet<usize> = [target_node].into();
    let out = net.lookup(from, target, 1, &holders, &[], now);
    net.failures(from, &out);
    (out.lookup.found(), out.lookup.stats(), out.elapsed)
}

fn plain(args: &Args, n: usize) {
    let t = Instant::now();
    let mut net = Net::new(args, n, |_| Role::Honest, false);
    net.alive[0] = false; // the slot fabricated contacts point at
    net.populate();
    let built = t.elapsed();
    let now = net.base;
    let mut find = Tally::default();
    let mut lossy = Tally::default();
    for round in 0..2 {
        net.loss = if round == 0 { 0.0 } else { args.loss };
        for _ in 0..args.lookups {
            let from = net.random_alive(true);
            let (ok, s, elapsed) = find_node(&mut net, from, now);
            let tally = if round == 0 { &mut find } else { &mut lossy };
            tally.add(ok, s.hops, s.queries, elapsed);
        }
    }
    net.loss = 0.0;
    let mut value = Tally::default();
    for _ in 0..args.lookups / 4 {
        let key = NodeId::from_bytes(net.rng.random());
        let publisher = net.random_alive(true);
        let holders = net.place(publisher, key, now);
        let from = net.random_alive(true);
        let out = net.lookup(from, key, args.paths, &holders, &[], now);
        let s = out.lookup.stats();
        value.add(out.lookup.found(), s.hops, s.queries, out.elapsed);
    }
    println!(
        "== plain, {n} nodes (tables built in {:.1}s)",
        built.as_secs_f64()
    );
    println!("  {}", find.line("find_node"));
    println!(
        "  {}",
        lossy.line(&format!("find_node, {:.0}% loss", args.loss * 100.0))
    );
    println!(
        "  {}",
        value.line(&format!("find_value ({} paths)", args.paths))
    );
    println!("  {}", net.table_line());
}

fn adversarial(args: &Args, n: usize, sybil: bool) {
    adversarial_with(args, n, sybil, Limits::default(), "");
    if sybil {
        // What a table without IP-diversity limits (rust-libp2p's) does
        // under the same flood.
        let k = Limits::default().k;
        let open = Limits {
            per_bucket_site: k,
            per_table_site: usize::MAX,
            ..Limits::default()
        };
        adversarial_with(args, n, sybil, open, " WITHOUT IP limits (as rust-libp2p)");
    }
}

fn adversarial_with(args: &Args, n: usize, sybil: bool, limits: Limits, label: &str) {
    let fraction = if sybil { 0.2 } else { args.evil };
    let mut pick = StdRng::seed_from_u64(args.seed ^ 0xadd);
    let roles: Vec<Role> = (0..n)
        .map(|i| {
            if i == 0 || !pick.random_bool(fraction) {
                Role::Honest
            } else if sybil || pick.random_bool(0.5) {
                Role::Liar
            } else {
                Role::Dropper
            }
        })
        .collect();
    let mut net = Net::with_limits(args, n, |i| roles[i], sybil, limits);
    net.alive[0] = false;
    net.populate();
    let now = net.base;
    if sybil {
        // The flood: every honest table is offered 200 more fresh ids from
        // the sybil /24, ground into its nearest buckets.
        for i in 1..n {
            if net.role[i] != Role::Honest {
                continue;
            }
            for s in 0..200 {
                let b = 8 + s % 12;
                let id = random_id_in_bucket(&net.ids[i], b, &mut net.rng);
                let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, (s % 250) as u8 + 1));
                let j = net.push(id, ip, Role::Liar);
                net.offer(i, j, now);
            }
            if i > 2000 {
                break; // enough tables measured; the rest keep the populate result
            }
        }
        let sybil_share: Vec<usize> = (1..n.min(2000))
            .filter(|&i| net.role[i] == Role::Honest)
            .map(|i| {
                net.tables[i]
                    .entries()
                    .filter(|e| {
                        net.index
                            .get(&e.addr.id)
                            .is_some_and(|&j| net.role[j] != Role::Honest)
                    })
                    .count()
            })
            .collect();
        println!(
            "== sybil flood from one /24{label} ({n} nodes, 20% sybils + 200 fresh sybil ids per table)"
        );
        println!(
            "  sybil entries per honest table: max {}, mean {:.1}",
            sybil_share.iter().max().unwrap_or(&0),
            sybil_share.iter().sum::<usize>() as f64 / sybil_share.len().max(1) as f64
        );
    } else {
        println!(
            "== adversarial, {n} nodes ({:.0}% liars or droppers)",
            fraction * 100.0
        );
    }
    for paths in [1, args.paths] {
        let mut value = Tally::default();
        for _ in 0..args.lookups / 2 {
            let key = NodeId::from_bytes(net.rng.random());
            let colluders = net.colluders_near(&key);
            let publisher = net.random_alive(true);
            let holders = net.place(publisher, key, now);
            let from = net.random_alive(true);
            let out = net.lookup(from, key, paths, &holders, &colluders, now);
            let s = out.lookup.stats();
            value.add(out.lookup.found(), s.hops, s.queries, out.elapsed);
        }
        println!("  {}", value.line(&format!("find_value, {paths} path(s)")));
    }
    println!("  {}", net.table_line());
}

fn churn(args: &Args, n: usize) {
    let mut net = Net::new(args, n, |_| Role::Honest, false);
    net.alive[0] = false;
    net.populate();
    let minutes = 10u32;
    let per_second = (n as f64 * args.churn_per_minute / 60.0).max(1.0);
    let lookups_per_second = (args.lookups as f64 / (minutes as f64 * 60.0)).max(1.0);
    let mut find = Tally::default();
    let mut value = Tally::default();
    let mut placed: Vec<(NodeId, HashSet<usize>)> = Vec::new();
    let (mut left, mut joined) = (0usize, 0usize);
    let mut carry = (0.0f64, 0.0f64);
    for second in 0..minutes * 60 {
        let now = net.base + Duration::from_secs(second as u64);
        if second % 5 == 0 {
            net.liveness(now);
        }
        carry.0 += per_second;
        while carry.0 >= 1.0 {
            carry.0 -= 1.0;
            let i = net.random_alive(true);
            net.alive[i] = false;
            left += 1;
            // Joins: a new node, bootstrapped from a random live one, runs a
            // self-lookup; every node it asks takes it in (it serves), it
            // takes in every node that answered.
            let id = NodeId::from_bytes(net.rng.random());
            let ip = public_ip(&mut net.rng);
            let j = net.push(id, ip, Role::Honest);
            let boot = net.random_alive(true);
            net.offer(j, boot, now);
            let out = net.lookup(j, id, 1, &HashSet::new(), &[], now);
            net.failures(j, &out);
            for (_, c) in out.lookup.closest() {
                net.offer(j, c, now);
                net.offer(c, j, now);
            }
            // A bucket refresh fills its farther buckets.
            for b in 0..8 {
                let target = random_id_in_bucket(&id, b, &mut net.rng);
                let out = net.lookup(j, target, 1, &HashSet::new(), &[], now);
                net.failures(j, &out);
                for (_, c) in out.lookup.closest().into_iter().take(4) {
                    net.offer(j, c, now);
                }
            }
            joined += 1;
        }
        carry.1 += lookups_per_second;
        while carry.1 >= 1.0 {
            carry.1 -= 1.0;
            let from = net.random_alive(true);
            let (ok, s, elapsed) = find_node(&mut net, from, now);
            find.add(ok, s.hops, s.queries, elapsed);
            // Values placed earlier (not republished) are looked up too.
            if net.rng.random_bool(0.3) {
                let key = NodeId::from_bytes(net.rng.random());
                let publisher = net.random_alive(true);
                let holders = net.place(publisher, key, now);
                placed.push((key, holders));
            }
            if !placed.is_empty() && net.rng.random_bool(0.5) {
                let pick = net.rng.random_range(0..placed.len());
                let (key, holders) = placed[pick].clone();
                let holders: HashSet<usize> =
                    holders.into_iter().filter(|&h| net.alive[h]).collect();
                let from = net.random_alive(true);
                let out = net.lookup(from, key, args.paths, &holders, &[], now);
                net.failures(from, &out);
                let s = out.lookup.stats();
                value.add(out.lookup.found(), s.hops, s.queries, out.elapsed);
            }
        }
    }
    println!(
        "== churn, {n} nodes, {:.0}% replaced per minute for {minutes} minutes ({left} left, {joined} joined)",
        args.churn_per_minute * 100.0
    );
    println!("  {}", find.line("find_node"));
    println!(
        "  {}",
        value.line(&format!("find_value ({} paths, no republish)", args.paths))
    );
    println!("  {}", net.table_line());
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.latency_ms.len() != 2 {
        bail!("--latency-ms takes LOW,HIGH");
    }
    let all = args.scenario == "all";
    for &n in &args.nodes {
        if n < 10 {
            bail!("--nodes: at least 10");
        }
        if all || args.scenario == "plain" {
            plain(&args, n);
        }
        if all || args.scenario == "adversarial" {
            adversarial(&args, n, false);
        }
        if all || args.scenario == "sybil" {
            adversarial(&args, n, true);
        }
        if all || args.scenario == "churn" {
            churn(&args, n);
        }
    }
    Ok(())
}
