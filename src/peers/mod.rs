//! Membership: the known-hosts table (which is the Kademlia routing table),
//! liveness, peer exchange and the events applications can await.
//!
//! The policy lives in [`table`] as plain data (no sockets); this module holds
//! the shared state the node's background tasks and route handlers work on.

pub mod quality;
pub mod table;
pub mod waiting;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use quality::{Class, Quality};
pub use table::{Insert, KBuckets, Limits, Refusal};

use crate::addr::NodeAddr;
use crate::identity::NodeId;

/// One known host, with what this node measured about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Its id and the address a handshake proved (first).
    pub addr: NodeAddr,
    /// What it last said about itself in a ping reply, with our measured
    /// round trip: shown to users, never weighed by the table.
    pub quality: Quality,
    /// The last round trip measured.
    pub rtt: Duration,
    /// When this node first saw it answer.
    pub first_seen: Instant,
    /// When it last answered.
    pub last_seen: Instant,
    /// Failed checks since it last answered.
    pub failures: u32,
}

/// Bytes of allowed memory one known host is budgeted at (entry, addresses, a
/// share of connection state).
pub const BYTES_PER_HOST: u64 = 4096;

/// Route of peer exchange.
pub const PEERS_ROUTE: &str = "butter/peers";

/// A change in the known-hosts table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A host was taken into the table.
    Added(NodeAddr),
    /// A host left the table.
    Removed {
        /// Who.
        id: NodeId,
        /// Why (unreachable, said goodbye, failed a ping while a newcomer waited).
        reason: String,
    },
}

/// Membership settings.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    /// Memory the user allows for known hosts; the table holds
    /// `memory / BYTES_PER_HOST` hosts (at least one).
    pub memory_bytes: u64,
    /// Hosts a node wants; below this it discovers actively and asks its hosts for more.
    pub want_hosts: usize,
    /// Hosts per k-bucket.
    pub k: usize,
    /// Hosts of one /24 (IPv4) or /48 (IPv6) per bucket.
    pub per_bucket_site: usize,
    /// Hosts of one /24 or /48 in the whole table.
    pub per_table_site: usize,
    /// Whether private addresses are free of the site limits (see
    /// [`Limits::lan_exempt`]).
    pub lan_exempt: bool,
    /// Base interval of liveness checks (it shortens while hosts are dying).
    pub liveness_interval: Duration,
    /// Time a host has to answer a liveness check.
    pub liveness_timeout: Duration,
    /// The hosts closest to this node watched more often than the rest:
    /// they hold the same content (the closest nodes to a key are close to
    /// each other), so their deaths are the ones repair must hear of fast.
    pub neighbours: usize,
    /// How often the neighbours are checked (those heard from within this
    /// interval are not); a neighbour that misses two quick checks in a row
    /// (each a few round trips long) leaves the table.
    pub neighbour_interval: Duration,
    /// Storage this node offers, reported to others.
    pub storage_bytes: u64,
    /// Whether this node is an introducer, reported to others.
    pub introducer: bool,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            memory_bytes: 1 << 20,
            want_hosts: 4,
            k: 20,
            per_bucket_site: 2,
            per_table_site: 10,
            lan_exempt: true,
            liveness_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(2),
            neighbours: 8,
            neighbour_interval: Duration::from_secs(1),
            storage_bytes: 0,
            introducer: false,
        }
    }
}

impl MembershipSettings {
    /// Table capacity implied by the memory budget.
    pub fn capacity(&self) -> usize {
        (self.memory_bytes / BYTES_PER_HOST).clamp(1, 1 << 16) as usize
    }
}

/// Request of `butter/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersRequest {
    /// At most this many hosts (the answer is capped at 64 whatever is asked).
    pub max: u16,
}

/// One host in a `butter/peers` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Its id and addresses.
    pub addr: NodeAddr,
    /// Its quality as the answering node knows it.
    pub quality: Quality,
}

/// Suspected hosts waiting for their check at most.
pub const MAX_SUSPECTS: usize = 256;

/// Failed calls in a row that take a host out of the table.
pub const CALL_FAILURES: u32 = 3;

/// Hosts remembered as keeping this node in their tables.
const MAX_KNOWN_BY: usize = 4096;

/// Largest `butter/peers` answer.
pub const MAX_PEERS_ANSWER: usize = 64;

/// The table and what hosts in it last reported (for display only).
struct Table {
    buckets: KBuckets,
    reported: HashMap<NodeId, Quality>,
}

impl Table {
    fn info(&self, e: &table::Entry) -> HostInfo {
        let mut quality = self.reported.get(&e.addr.id).copied().unwrap_or_default();
        quality.rtt_us = e.rtt.as_micros().min(u32::MAX as u128) as u32;
        HostInfo {
            addr: e.addr.clone(),
            quality,
            rtt: e.rtt,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            failures: e.failures,
        }
    }
}

/// Membership state shared by the node, its handlers and its tasks.
pub(crate) struct Membership {
    pub(crate) settings: MembershipSettings,
    table: Mutex<Table>,
    events: broadcast::Sender<PeerEvent>,
    /// Who told us (by a liveness ping) that we are in their table, and when.
    known_by: Mutex<HashMap<NodeId, Instant>>,
    /// Candidates being verified now, and recent failures (not retried at once).
    verifying: Mutex<HashSet<NodeId>>,
    failed: Mutex<HashMap<NodeId, Instant>>,
    /// Known hosts whose connection ended: checked at once.
    suspects: Mutex<HashSet<NodeId>>,
    suspected: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Membership {
    pub(crate) fn new(local: NodeId, settings: MembershipSettings) -> Self {
        let limits = Limits {
            k: settings.k,
            per_bucket_site: settings.per_bucket_site,
            per_table_site: settings.per_table_site,
            replacements: 8,
            capacity: settings.capacity(),
            lan_exempt: settings.lan_exempt,
        };
        Membership {
            table: Mutex::new(Table {
                buckets: KBuckets::new(local, limits),
                reported: HashMap::new(),
            }),
            settings,
            events: broadcast::channel(1024).0,
            known_by: Default::default(),
            verifying: Default::default(),
            failed: Default::default(),
            suspects: Default::default(),
            suspected: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.table).buckets.len()
    }

    pub(crate) fn contains(&self, id: &NodeId) -> bool {
        lock(&self.table).buckets.get(id).is_some()
    }

    pub(crate) fn hosts(&self) -> Vec<HostInfo> {
        let t = lock(&self.table);
        t.buckets.entries().map(|e| t.info(e)).collect()
    }

    /// The `n` known hosts closest to `target` by XOR distance.
    pub(crate) fn closest(&self, target: &NodeId, n: usize) -> Vec<NodeAddr> {
        lock(&self.table)
            .buckets
            .closest(target, n)
            .into_iter()
            .map(|e| e.addr.clone())
            .collect()
    }

    /// Whether the bucket `target` falls in holds fewer than k hosts: the
    /// table then holds every host of that region this node has taken in,
    /// and its closest to `target` are, as far as this node knows, the
    /// closest there are (a lookup would ask them only to hear the same).
    pub(crate) fn knows_region(&self, target: &NodeId) -> bool {
        let t = lock(&self.table);
        let local = *t.buckets.local();
        let bucket = table::bucket_index(&local, target);
        t.buckets
            .entries()
            .filter(|e| table::bucket_index(&local, &e.addr.id) == bucket)
            .count()
            < self.settings.k
    }

    /// [`closest`](Self::closest), with what is known of each.
    pub(crate) fn closest_hosts(&self, target: &NodeId, n: usize) -> Vec<HostInfo> {
        let t = lock(&self.table);
        t.buckets
            .closest(target, n)
            .into_iter()
            .map(|e| t.info(e))
            .collect()
    }

    /// Buckets not touched for `interval` (each deserves a refresh lookup).
    pub(crate) fn stale_buckets(&self, interval: Duration) -> Vec<usize> {
        lock(&self.table)
            .buckets
            .stale_buckets(Instant::now(), interval)
    }

    /// Marks a bucket refreshed.
    pub(crate) fn touch(&self, bucket: usize) {
        lock(&self.table).buckets.touch(bucket, Instant::now());
    }

    /// Up to `max` hosts not heard from for `age`, least recently seen first.
    pub(crate) fn due_for_check(&self, age: Duration, max: usize) -> Vec<HostInfo> {
        let now = Instant::now();
        let t = lock(&self.table);
        let mut due: Vec<&table::Entry> = t
            .buckets
            .entries()
            .filter(|e| now.saturating_duration_since(e.last_seen) >= age)
            .collect();
        due.sort_by_key(|e| e.last_seen);
        due.into_iter().take(max).map(|e| t.info(e)).collect()
    }

    /// The `n` hosts closest to this node not heard from for `age`.
    pub(crate) fn neighbours_due(&self, n: usize, age: Duration) -> Vec<HostInfo> {
        let now = Instant::now();
        let t = lock(&self.table);
        let local = *t.buckets.local();
        t.buckets
            .closest(&local, n)
            .into_iter()
            .filter(|e| now.saturating_duration_since(e.last_seen) >= age)
            .map(|e| t.info(e))
            .collect()
    }

    pub(crate) fn wants_more(&self) -> bool {
        self.len() < self.settings.want_hosts.min(self.settings.capacity())
    }

    /// Offers a host whose key a handshake proved at `addr.addrs[0]`, with
    /// the round trip just measured, and announces what changed. On
    /// [`Insert::PingFirst`] the caller pings that host and reports with
    /// [`ping_result`](Self::ping_result).
    pub(crate) fn admit(&self, addr: NodeAddr, rtt: Duration, reported: Option<Quality>) -> Insert {
        let id = addr.id;
        let outcome = {
            let mut t = lock(&self.table);
            let outcome = t.buckets.insert(addr.clone(), rtt, Instant::now());
            if matches!(outcome, Insert::Added | Insert::Updated) {
                if let Some(q) = reported {
                    t.reported.insert(id, q);
                }
            }
            outcome
        };
        match &outcome {
            Insert::Added => {
                tracing::debug!(peer = %id.short(), "known host added");
                let _ = self.events.send(PeerEvent::Added(addr));
            }
            Insert::Refused(why) => {
                tracing::trace!(peer = %id.short(), ?why, "known host not taken in");
            }
            Insert::PingFirst(_) | Insert::Waiting | Insert::Updated => {}
        }
        outcome
    }

    /// Whether a host not in the table, reached at `at`, is worth verifying.
    pub(crate) fn would_consider(&self, id: &NodeId, at: std::net::SocketAddr) -> bool {
        lock(&self.table).buckets.would_consider(id, at)
    }

    /// A call to a known host failed (a DHT query, say): after
    /// [`CALL_FAILURES`] in a row it leaves the table.
    pub(crate) fn call_failed(&self, id: &NodeId) {
        let out = {
            let mut t = lock(&self.table);
            t.buckets.failed(id);
            t.buckets
                .get(id)
                .is_some_and(|e| e.failures >= CALL_FAILURES)
        };
        if out {
            self.remove(id, "calls to it failed");
        }
    }

    /// A host answered a check or a call.
    pub(crate) fn seen(&self, id: &NodeId, rtt: Duration, reported: Option<Quality>) {
        let mut t = lock(&self.table);
        if t.buckets.get(id).is_none() {
            return;
        }
        t.buckets.seen(id, rtt, Instant::now());
        if let Some(q) = reported {
            t.reported.insert(*id, q);
        }
    }

    /// The outcome of a ping-before-evict: alive, the host stays; dead, it
    /// leaves and the best newcomer waiting for its bucket comes in.
    pub(crate) fn ping_result(&self, id: &NodeId, alive: bool, rtt: Duration) {
        if alive {
            lock(&self.table).buckets.seen(id, rtt, Instant::now());
        } else {
            self.remove(id, "no answer while a newcomer waited");
        }
    }

    /// Takes a host out of the table (dead, said goodbye, a call to it
    /// failed); a newcomer waiting for its bucket may take its place.
    pub(crate) fn remove(&self, id: &NodeId, reason: &str) -> bool {
        let (removed, promoted) = {
            let mut t = lock(&self.table);
            let present = t.buckets.get(id).is_some();
            let promoted = t.buckets.remove(id);
            if present {
                t.reported.remove(id);
            }
            let promoted = promoted.and_then(|p| t.buckets.get(&p).map(|e| e.addr.clone()));
            (present, promoted)
        };
        if removed {
            tracing::debug!(peer = %id.short(), reason, "known host removed");
            let _ = self.events.send(PeerEvent::Removed {
                id: *id,
                reason: reason.to_string(),
            });
            lock(&self.failed).insert(*id, Instant::now());
        }
        if let Some(addr) = promoted {
            tracing::debug!(peer = %addr.id.short(), "known host promoted from the replacement cache");
            let _ = self.events.send(PeerEvent::Added(addr));
        }
        removed
    }

    /// A known host's connection ended: it is checked at once (bounded: at
    /// most [`MAX_SUSPECTS`] wait; the rest wait for the next round).
    pub(crate) fn suspect(&self, id: &NodeId) {
        if !self.contains(id) {
            return;
        }
        let mut s = lock(&self.suspects);
        if s.len() < MAX_SUSPECTS && s.insert(*id) {
            self.suspected.notify_one();
        }
    }

    /// Waits until a host is suspected.
    pub(crate) async fn suspected(&self) {
        self.suspected.notified().await
    }

    /// The suspects, taken.
    pub(crate) fn take_suspects(&self) -> Vec<HostInfo> {
        let ids: Vec<NodeId> = lock(&self.suspects).drain().collect();
        let t = lock(&self.table);
        ids.iter()
            .filter_map(|id| t.buckets.get(id).map(|e| t.info(e)))
            .collect()
    }

    /// Records that `peer` keeps us in its table.
    pub(crate) fn known_by_peer(&self, peer: NodeId) {
        let ttl = self.settings.liveness_interval * 3;
        let mut map = lock(&self.known_by);
        // Bounded: a flood of fresh identities saying so cannot grow it.
        if map.len() >= MAX_KNOWN_BY && !map.contains_key(&peer) {
            map.retain(|_, t| t.elapsed() < ttl);
            if map.len() >= MAX_KNOWN_BY {
                return;
            }
        }
        map.insert(peer, Instant::now());
    }

    /// How many hosts keep us in their tables (reports within three liveness
    /// intervals).
    pub(crate) fn known_by_count(&self) -> u32 {
        let ttl = self.settings.liveness_interval * 3;
        let mut map = lock(&self.known_by);
        map.retain(|_, t| t.elapsed() < ttl);
        map.len() as u32
    }

    /// Claims the right to verify `id` (one verification per candidate at a time,
    /// none shortly after a failure).
    pub(crate) fn start_verifying(&self, id: NodeId) -> bool {
        if self.contains(&id) {
            return false;
        }
        if lock(&self.failed)
            .get(&id)
            .is_some_and(|t| t.elapsed() < self.settings.liveness_interval)
        {
            return false;
        }
        lock(&self.verifying).insert(id)
    }

    pub(crate) fn done_verifying(&self, id: &NodeId, ok: bool) {
        lock(&self.verifying).remove(id);
        let mut failed = lock(&self.failed);
        if ok {
            failed.remove(id);
        } else {
            failed.insert(*id, Instant::now());
        }
        // Bounded: forget old failures.
        if failed.len() > 4096 {
            let ttl = self.settings.liveness_interval;
            failed.retain(|_, t| t.elapsed() < ttl);
        }
    }

    /// A random sample of known hosts for peer exchange.
    pub(crate) fn sample(&self, max: usize, exclude: &NodeId) -> Vec<PeerRecord> {
        use rand::seq::SliceRandom;
        let mut all: Vec<PeerRecord> = self
            .hosts()
            .into_iter()
            .filter(|h| h.addr.id != *exclude)
            .map(|h| PeerRecord {
                addr: h.addr,
                quality: h.quality,
            })
            .collect();
        all.shuffle(&mut rand::rng());
        all.truncate(max.min(MAX_PEERS_ANSWER));
        all
    }
}
