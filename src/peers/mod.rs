//! Membership: the known-hosts table (shaped as the Kademlia routing table), host
//! quality, liveness, peer exchange and the events applications can await.
//!
//! The policy lives in [`table`] as plain data; [`membership`](self) holds the
//! shared state the node's background tasks and route handlers work on.

pub mod buckets;
pub mod quality;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use quality::{Class, Quality};
pub use table::{Admission, HostInfo, Policy, RoutingTable};

use crate::addr::NodeAddr;
use crate::identity::NodeId;

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
        /// Why (unreachable, replaced by a more diverse host, call failed).
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
    /// Probability of a diversity-neutral admission into a full table.
    pub random_accept: f64,
    /// Base interval of liveness checks (it shortens while hosts are dying).
    pub liveness_interval: Duration,
    /// Time a host has to answer a liveness check.
    pub liveness_timeout: Duration,
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
            random_accept: 0.05,
            liveness_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(2),
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

/// Hosts remembered as keeping this node in their tables.
const MAX_KNOWN_BY: usize = 4096;

/// Largest `butter/peers` answer.
pub const MAX_PEERS_ANSWER: usize = 64;

/// Membership state shared by the node, its handlers and its tasks.
pub(crate) struct Membership {
    pub(crate) settings: MembershipSettings,
    table: Mutex<RoutingTable>,
    events: broadcast::Sender<PeerEvent>,
    /// Who told us (by a liveness ping) that we are in their table, and when.
    known_by: Mutex<HashMap<NodeId, Instant>>,
    /// Candidates being verified now, and recent failures (not retried at once).
    verifying: Mutex<HashSet<NodeId>>,
    failed: Mutex<HashMap<NodeId, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Membership {
    pub(crate) fn new(local: NodeId, settings: MembershipSettings) -> Self {
        let policy = Policy {
            capacity: settings.capacity(),
            k: settings.k,
            random_accept: settings.random_accept,
        };
        Membership {
            table: Mutex::new(RoutingTable::new(local, policy)),
            settings,
            events: broadcast::channel(1024).0,
            known_by: Default::default(),
            verifying: Default::default(),
            failed: Default::default(),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.table).len()
    }

    pub(crate) fn contains(&self, id: &NodeId) -> bool {
        lock(&self.table).contains(id)
    }

    pub(crate) fn hosts(&self) -> Vec<HostInfo> {
        lock(&self.table).hosts().cloned().collect()
    }

    pub(crate) fn wants_more(&self) -> bool {
        self.len() < self.settings.want_hosts.min(self.settings.capacity())
    }

    /// Offers a verified host to the table and announces what changed.
    pub(crate) fn admit(&self, host: HostInfo) -> Admission {
        let addr = host.addr.clone();
        let outcome = lock(&self.table).admit(host, &mut rand::rng());
        match &outcome {
            Admission::Added => {
                tracing::debug!(peer = %addr.id.short(), "known host added");
                let _ = self.events.send(PeerEvent::Added(addr));
            }
            Admission::Replaced(old) => {
                tracing::debug!(peer = %addr.id.short(), evicted = %old.addr.id.short(), "known host replaced");
                let _ = self.events.send(PeerEvent::Removed {
                    id: old.addr.id,
                    reason: "replaced by a more diverse host".into(),
                });
                let _ = self.events.send(PeerEvent::Added(addr));
            }
            Admission::Rejected => {
                tracing::trace!(peer = %addr.id.short(), "known host not taken in");
            }
            Admission::Updated => {}
        }
        outcome
    }

    /// Takes a host out of the table (dead, or a call to it failed).
    pub(crate) fn remove(&self, id: &NodeId, reason: &str) -> bool {
        let removed = lock(&self.table).remove(id).is_some();
        if removed {
            tracing::debug!(peer = %id.short(), reason, "known host removed");
            let _ = self.events.send(PeerEvent::Removed {
                id: *id,
                reason: reason.to_string(),
            });
            lock(&self.failed).insert(*id, Instant::now());
        }
        removed
    }

    pub(crate) fn seen(&self, id: &NodeId, quality: Quality) {
        lock(&self.table).seen(id, quality, Instant::now());
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
        let mut all: Vec<PeerRecord> = lock(&self.table)
            .hosts()
            .filter(|h| h.addr.id != *exclude)
            .map(|h| PeerRecord {
                addr: h.addr.clone(),
                quality: h.quality,
            })
            .collect();
        all.shuffle(&mut rand::rng());
        all.truncate(max.min(MAX_PEERS_ANSWER));
        all
    }
}
