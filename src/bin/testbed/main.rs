//! `testbed`: the churn test of the original Butter, on real nodes. N nodes
//! in one process on loopback (each at its own 127.x address), M random
//! items stored, then for T seconds every node dies each second with
//! probability p (killed: no goodbye) and is replaced by a fresh one joining
//! through a random live node; after a settle time a fresh node fetches
//! every item. Prints retention, repair traffic, maintenance messages and
//! memory per node; writes a CSV per second (live nodes, under-replicated
//! items, repair bytes) and an SVG plot of it.
//!
//! ```text
//! cargo run --release --bin testbed -- --nodes 250 --p 0.02 --seconds 30
//! ```

mod plot;

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use butter::content::Hash;
use butter::{ContentSettings, MembershipSettings, Node, NodeAddr};
use clap::Parser;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "testbed",
    about = "Churn testbed: retention of content on real nodes"
)]
struct Args {
    /// Nodes kept alive.
    #[arg(long, default_value_t = 250)]
    nodes: usize,
    /// Items stored before the churn.
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Bytes per item.
    #[arg(long, default_value_t = 64 * 1024)]
    item_size: usize,
    /// Probability that a node dies in a given second.
    #[arg(long, default_value_t = 0.02)]
    p: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds without churn before the final fetch.
    #[arg(long, default_value_t = 20)]
    settle: u64,
    /// Holders per blob.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Base liveness interval of the nodes, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    liveness_ms: u64,
    /// Interval of the neighbour watch in milliseconds (0 turns it off).
    #[arg(long, default_value_t = 1000)]
    neighbour_ms: u64,
    /// Seconds between republishing rounds of every node (the default is
    /// the library's, 600).
    #[arg(long, default_value_t = 600)]
    republish_secs: u64,
    /// Nodes leave by shutting down (goodbye) instead of crashing.
    #[arg(long)]
    graceful: bool,
    /// Seed of every random choice of the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the per-second CSV.
    #[arg(long, default_value = "testbed.csv")]
    csv: std::path::PathBuf,
    /// Where to write the plot of the CSV.
    #[arg(long, default_value = "testbed.svg")]
    svg: std::path::PathBuf,
}

/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

struct Net {
    args: Args,
    nodes: Vec<Node>,
    next_ip: u32,
    rng: StdRng,
    /// Counters of nodes that died (their last values).
    dead_repair_bytes: u64,
    dead_calls: u64,
    dead_repairs: u64,
    /// Every blob stored (a dying node's are logged, for tracing repairs).
    blobs: Vec<Hash>,
}

impl Net {
    fn ip(&mut self) -> IpAddr {
        self.next_ip += 1;
        let n = self.next_ip;
        IpAddr::V4(Ipv4Addr::new(
            127,
            10 + (n >> 16) as u8,
            (n >> 8) as u8,
            (n & 0xff) as u8,
        ))
    }

    /// A node joining through `bootstrap` (three random live nodes, as a
    /// user would give several: one may die before the newcomer reaches it).
    async fn spawn(&mut self, bootstrap: Vec<NodeAddr>) -> Result<Node> {
        let listen = SocketAddr::new(self.ip(), 0);
        let mut b = Node::builder()
            .listen(listen)
            .lan_discovery(false)
            .membership(MembershipSettings {
                liveness_interval: Duration::from_millis(self.args.liveness_ms),
                neighbour_interval: Duration::from_millis(self.args.neighbour_ms),
                ..Default::default()
            })
            .content(ContentSettings {
                replicas: self.args.replicas,
                storage_bytes: 1 << 30,
                republish_interval: Duration::from_secs(self.args.republish_secs.max(1)),
                ..Default::default()
            });
        for addr in bootstrap {
            b = b.bootstrap(addr);
        }
        Ok(b.spawn().await?)
    }

    fn boot(&mut self) -> Vec<NodeAddr> {
        (0..3.min(self.nodes.len()))
            .map(|_| self.random_live().addr())
            .collect()
    }

    fn random_live(&mut self) -> Node {
        let i = self.rng.random_range(0..self.nodes.len());
        self.nodes[i].clone()
    }

    fn totals(&self) -> (u64, u64, u64) {
        let mut bytes = self.dead_repair_bytes;
        let mut calls = self.dead_calls;
        let mut repairs = self.dead_repairs;
        for n in &self.nodes {
            let s = n.stats();
            bytes += s.repair_bytes;
            calls += s.calls_made;
            repairs += s.repairs;
        }
        (bytes, calls, repairs)
    }

    /// Kills node `i` as a crash would: not a packet more leaves it (no
    /// goodbye, no connection close); with `--graceful`, it shuts down.
    async fn kill(&mut self, i: usize) {
        let node = self.nodes.swap_remove(i);
        tracing::debug!(target: "testbed", peer = %node.id().short(), "killed");
        if tracing::enabled!(target: "testbed", tracing::Level::TRACE) {
            if let Ok(held) = node.holds_each(self.blobs.clone()).await {
                for (blob, held) in self.blobs.iter().zip(held) {
                    if held {
                        let key = blob.to_key();
                        let d = butter::peers::table::distance(&node.id(), &key);
                        let rank = self
                            .nodes
                            .iter()
                            .filter(|n| butter::peers::table::distance(&n.id(), &key) < d)
                            .count();
                        tracing::trace!(target: "testbed", peer = %node.id().short(), blob = %blob.short(), rank, "killed holder");
                    }
                }
            }
        }
        let s = node.stats();
        self.dead_repair_bytes += s.repair_bytes;
        self.dead_calls += s.calls_made;
        self.dead_repairs += s.repairs;
        if self.args.graceful {
            node.shutdown().await;
        } else {
            node.crash();
        }
    }
}

/// How well live nodes know their own neighbourhood: of each node's
/// `n` nearest live nodes, the share its table holds (the holders of a
/// blob watch each other only if they know each other).
fn neighbourhood(net: &Net, n: usize) -> f64 {
    let ids: Vec<butter::NodeId> = net.nodes.iter().map(|x| x.id()).collect();
    let (mut known, mut all) = (0usize, 0usize);
    for node in &net.nodes {
        let me = node.id();
        let mut near: Vec<_> = ids.iter().filter(|id| **id != me).collect();
        near.sort_by_key(|id| butter::peers::table::distance(id, &me));
        let table: std::collections::HashSet<_> =
            node.known_hosts().into_iter().map(|h| h.addr.id).collect();
        for id in near.into_iter().take(n) {
            all += 1;
            known += usize::from(table.contains(id));
        }
    }
    100.0 * known as f64 / all.max(1) as f64
}

/// Items stored at once before the churn.
const PARALLEL_PUTS: usize = 16;

/// Items whose holders are counted each time (a random sample).
const SAMPLE: usize = 100;

/// Items with a blob on fewer than `r` live nodes (one read of each
/// node's store: a read per blob and node took seconds, and a tick that
/// long turns into a burst of deaths).
async fn under_replicated(net: &Net, items: &[(Hash, Vec<Hash>)]) -> usize {
    let blobs: Vec<Hash> = items.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let mut holders = vec![0usize; blobs.len()];
    for n in &net.nodes {
        if let Ok(held) = n.holds_each(blobs.clone()).await {
            for (count, held) in holders.iter_mut().zip(held) {
                *count += usize::from(held);
            }
        }
    }
    let mut at = 0;
    let mut count = 0;
    for (_, b) in items {
        let short = holders[at..at + b.len()]
            .iter()
            .any(|h| *h < net.args.replicas);
        at += b.len();
        count += usize::from(short);
    }
    count
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Quiet unless RUST_LOG asks (e.g. RUST_LOG=butter=debug).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut csv = std::fs::File::create(&args.csv)
        .with_context(|| format!("cannot write {}", args.csv.display()))?;
    writeln!(
        csv,
        "second,live_nodes,under_replicated_of_{SAMPLE}_sampled,repair_bytes,repairs"
    )?;
    let mut net = Net {
        rng: StdRng::seed_from_u64(args.seed ^ 0x5eed),
        args,
        nodes: Vec::new(),
        next_ip: 0,
        dead_repair_bytes: 0,
        dead_calls: 0,
        dead_repairs: 0,
        blobs: Vec::new(),
    };
    let started = Instant::now();
    let rss_before = rss();
    let first = net.spawn(Vec::new()).await?;
    net.nodes.push(first.clone());
    for _ in 1..net.args.nodes {
        let boot = net.boot();
        let n = net.spawn(boot).await?;
        net.nodes.push(n);
    }
    // Joined: every table holds a few hosts.
    let deadline = Instant::now() + Duration::from_secs(120);
    while net.nodes.iter().any(|n| n.known_hosts().len() < 5) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tables: Vec<usize> = net.nodes.iter().map(|n| n.known_hosts().len()).collect();
    let per_node = rss().saturating_sub(rss_before) / net.nodes.len().max(1) as u64;
    eprintln!(
        "memory: {:.1} MiB per node (process RSS / nodes)",
        per_node as f64 / (1u64 << 20) as f64
    );
    eprintln!(
        "{} nodes up in {:.1} s; tables {}..{} hosts",
        net.nodes.len(),
        started.elapsed().as_secs_f64(),
        tables.iter().min().unwrap_or(&0),
        tables.iter().max().unwrap_or(&0)
    );
    // Items, each from a random node; the blobs of each (for the CSV).
    // (Stored a few at once: one at a time took minutes.)
    let mut puts = Vec::new();
    for _ in 0..net.args.items {
        let mut data = vec![0u8; net.args.item_size];
        rng.fill(&mut data[..]);
        let built = butter::content::tree::build(&data[..], 256 * 1024, None)?;
        let node = net.random_live();
        puts.push(async move {
            let key = node.put(data).await?;
            anyhow::ensure!(key == built.root, "put returned another key");
            Ok((key, built.blobs.keys().copied().collect::<Vec<_>>()))
        });
    }
    let items: Vec<(Hash, Vec<Hash>)> = futures_util::stream::iter(puts)
        .buffered(PARALLEL_PUTS)
        .collect::<Vec<Result<_>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    net.blobs = items.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let (bytes0, calls0, _) = net.totals();
    eprintln!(
        "{} items stored; each node's 3 / 8 nearest live nodes in its table: {:.1} / {:.1} %",
        items.len(),
        neighbourhood(&net, 3),
        neighbourhood(&net, 8)
    );
    let churn_started = Instant::now();
    let (mut died, mut node_seconds) = (0usize, 0f64);
    let mut rows = Vec::new();
    // Under-replication is counted on a sample (every holder of every blob
    // of every item would take longer than the second it describes).
    let sample: Vec<(Hash, Vec<Hash>)> = {
        use rand::seq::IndexedRandom;
        items
            .sample(&mut rng, items.len().min(SAMPLE))
            .cloned()
            .collect()
    };
    // The churn runs on wall-clock time: a tick that took longer than a
    // second (nodes starting, the sample counted) kills with the
    // probability of the time it took, so p holds per real second.
    let churn = Duration::from_secs(net.args.seconds);
    let end = Duration::from_secs(net.args.seconds + net.args.settle);
    let mut last = Instant::now();
    let mut next_count = Duration::from_secs(5);
    loop {
        let now = churn_started.elapsed();
        if now >= end {
            break;
        }
        let dt = last.elapsed().as_secs_f64();
        if dt > 1.5 {
            tracing::debug!(target: "testbed", dt, "slow tick");
        }
        last = Instant::now();
        if now < churn {
            let p = 1.0 - (1.0 - net.args.p).powf(dt);
            let mut i = 0;
            while i < net.nodes.len() {
                if rng.random_bool(p.clamp(0.0, 1.0)) {
                    net.kill(i).await;
                    died += 1;
                    // Replaced: a fresh node joins through a live one.
                    let boot = net.boot();
                    let fresh = net.spawn(boot).await?;
                    net.nodes.push(fresh);
                } else {
                    i += 1;
                }
            }
        }
        node_seconds += net.nodes.len() as f64 * dt;
        let (bytes, _, repairs) = net.totals();
        let second = now.as_secs();
        let short = if now >= next_count || now + Duration::from_secs(1) >= end {
            next_count += Duration::from_secs(5);
            tracing::debug!(
                target: "testbed",
                second,
                nearest3 = neighbourhood(&net, 3),
                "neighbourhood known"
            );
            Some(under_replicated(&net, &sample).await)
        } else {
            None
        };
        writeln!(
            csv,
            "{second},{},{},{},{repairs}",
            net.nodes.len(),
            short.map(|n| n.to_string()).unwrap_or_default(),
            bytes - bytes0
        )?;
        rows.push(plot::Row {
            second,
            live: net.nodes.len(),
            under_replicated: short,
            repair_bytes: bytes - bytes0,
        });
        let spent = last.elapsed();
        if spent < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1) - spent).await;
        }
    }
    eprintln!(
        "churn and settle took {:.1} s",
        churn_started.elapsed().as_secs_f64()
    );
    let (bytes, calls, repairs) = net.totals();
    // How well the live nodes know each other: in how many live tables is
    // each live node (one in none cannot be found by a lookup).
    {
        let live: std::collections::HashSet<_> = net.nodes.iter().map(|n| n.id()).collect();
        let mut known_by: HashMap<butter::NodeId, usize> = live.iter().map(|id| (*id, 0)).collect();
        let mut dead_entries = 0;
        for n in &net.nodes {
            for h in n.known_hosts() {
                match known_by.get_mut(&h.addr.id) {
                    Some(c) => *c += 1,
                    None => dead_entries += 1,
                }
            }
        }
        for n in &net.nodes {
            if known_by.get(&n.id()) == Some(&0) {
                let s = n.stats();
                eprintln!(
                    "  unknown node {}: knows {} hosts; calls made {} served {}, handshakes in {} out {} failed {}, candidates verified {} unreachable {}, refused {}",
                    n.id().short(),
                    n.known_hosts().len(),
                    s.calls_made,
                    s.calls_served,
                    s.handshakes_in,
                    s.handshakes_out,
                    s.handshakes_failed,
                    s.candidates_verified,
                    s.candidates_unreachable,
                    s.connections_refused
                );
            }
        }
        eprintln!(
            "after settling, each node's 3 / 8 nearest live nodes in its table: {:.1} / {:.1} %",
            neighbourhood(&net, 3),
            neighbourhood(&net, 8)
        );
        let mut counts: Vec<usize> = known_by.values().copied().collect();
        counts.sort();
        eprintln!(
            "tables after settling: live nodes known by 0 others: {}, by < 3: {}, median {}; entries for dead nodes: {dead_entries}",
            counts.iter().filter(|c| **c == 0).count(),
            counts.iter().filter(|c| **c < 3).count(),
            counts.get(counts.len() / 2).copied().unwrap_or(0)
        );
    }
    // A fresh node fetches every item.
    let boot = net.boot();
    let reader = net.spawn(boot).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reader.known_hosts().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut kept = 0;
    let mut latencies = Vec::new();
    let mut missing: HashMap<String, usize> = HashMap::new();
    // Of the items not fetched: how many live nodes still held each blob
    // (0: lost; more: held but not found where a lookup looks).
    let mut stranded: HashMap<usize, usize> = HashMap::new();
    for (key, blobs) in &items {
        let t = Instant::now();
        let why = match tokio::time::timeout(Duration::from_secs(30), reader.get(*key)).await {
            Ok(Ok(data)) if data.len() == net.args.item_size => {
                kept += 1;
                latencies.push(t.elapsed());
                continue;
            }
            Ok(Ok(_)) => "wrong size".to_string(),
            Ok(Err(butter::Error::NotFound(_))) => "not found".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        *missing.entry(why).or_default() += 1;
        let mut fewest = usize::MAX;
        for blob in blobs {
            let mut holders = Vec::new();
            for n in &net.nodes {
                if n.holds(*blob).await.unwrap_or(false) {
                    holders.push(n.id());
                }
            }
            fewest = fewest.min(holders.len());
            if holders.is_empty() {
                eprintln!("  blob {} lost: no live node holds it", blob.short());
            } else {
                // Where the holders stand among the live nodes, nearest to
                // the blob's key first (a lookup returns the 20 nearest).
                let key = blob.to_key();
                let mut ids: Vec<_> = net.nodes.iter().map(|n| n.id()).collect();
                ids.sort_by_key(|id| butter::peers::table::distance(id, &key));
                let ranks: Vec<usize> = holders
                    .iter()
                    .filter_map(|h| ids.iter().position(|id| id == h))
                    .collect();
                eprintln!(
                    "  blob {} not fetched: held by the live nodes ranked {ranks:?} by distance",
                    blob.short()
                );
            }
        }
        *stranded.entry(fewest).or_default() += 1;
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "retention {:.2} % ({kept} of {} items) after {} s of churn at p = {} ({died} nodes died) and {} s to settle",
        100.0 * kept as f64 / items.len().max(1) as f64,
        items.len(),
        net.args.seconds,
        net.args.p,
        net.args.settle
    );
    println!(
        "repair: {repairs} pushes, {:.1} MiB; maintenance: {:.1} calls per node per second; fetch latency median {:?}, p99 {:?}",
        (bytes - bytes0) as f64 / (1u64 << 20) as f64,
        (calls - calls0) as f64 / node_seconds.max(1.0),
        pct(0.5),
        pct(0.99)
    );
    for (why, n) in missing {
        println!("  not fetched {n}: {why}");
    }
    let mut stranded: Vec<_> = stranded.into_iter().collect();
    stranded.sort();
    for (holders, n) in stranded {
        println!("  not fetched {n} whose least-held blob is on {holders} live nodes");
    }
    let title = format!(
        "{} nodes, p = {} for {} s, r = {}: retention {:.2} %",
        net.args.nodes,
        net.args.p,
        net.args.seconds,
        net.args.replicas,
        100.0 * kept as f64 / items.len().max(1) as f64
    );
    plot::write(&net.args.svg, &rows, net.args.seconds, &title)?;
    println!(
        "per-second CSV: {}; plot: {}",
        net.args.csv.display(),
        net.args.svg.display()
    );
    Ok(())
}
