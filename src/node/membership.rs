//! Membership upkeep: liveness checks of known hosts, peer exchange while the node
//! wants more hosts, and the verification every candidate goes through before it
//! may enter the table.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use super::service::{Routes, Service, ServiceContext, WeakNode};
use super::Node;
use crate::addr::{NodeAddr, Target};
use crate::error::{Error, Result};
use crate::peers::{HostInfo, Insert, Membership, PeerRecord, PeersRequest, Quality, PEERS_ROUTE};

/// Hosts asked for more hosts in one peer-exchange round.
const PEX_FANOUT: usize = 3;

/// Hosts one peer-exchange answer may name.
const PEX_ANSWER: usize = 16;

/// Hosts checked in one liveness round at most (the least recently seen
/// first): upkeep stays O(1) per round however large the table.
const CHECKS_PER_ROUND: usize = 64;

/// Candidates verified at once (each is a handshake, maybe a traversal).
pub(super) const VERIFY_AT_ONCE: usize = 8;

/// Candidates waiting for a verification slot at most, in all and from one
/// /24 or /64, and how long each may wait.
pub(super) const WAITING: usize = 64;
pub(super) const WAITING_PER_PREFIX: usize = 4;
pub(super) const MAX_WAIT: Duration = Duration::from_secs(30);

/// How a candidate may be reached for its verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Only at the addresses it came with: what a beacon or another host
    /// claims is never worth a traversal (a flood of them would get this node
    /// rate limited by its own introducers).
    Direct,
    /// Through an introducer if need be: it introduced the candidate.
    Traverse,
}

/// `butter/peers` (a sample of the known hosts) and the upkeep task.
pub(super) struct PeersService(pub(super) Arc<Membership>);

impl Service for PeersService {
    fn name(&self) -> &'static str {
        "peers"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let m = self.0.clone();
        routes.typed(
            PEERS_ROUTE,
            64,
            move |peer, _from: SocketAddr, req: PeersRequest| {
                let m = m.clone();
                async move { Ok(m.sample(req.max as usize, &peer)) }
            },
        );
    }

    fn start(&self, ctx: &ServiceContext) {
        ctx.spawn(upkeep(ctx.node()));
        ctx.spawn(super::neighbours::watch(ctx.node()));
    }
}

impl Node {
    /// Asks a node for a sample of its known hosts (`butter/peers`).
    pub async fn peers_of(&self, target: impl Into<Target>, max: u16) -> Result<Vec<PeerRecord>> {
        self.call_typed(target, PEERS_ROUTE, &PeersRequest { max })
            .await
    }

    /// Offers a verified host to the table; when its bucket is full, the
    /// bucket's least recently seen host is pinged first and stays if it
    /// answers (the newcomer waits in the replacement cache).
    pub(super) fn admit_host(
        &self,
        addr: NodeAddr,
        rtt: Duration,
        reported: Option<Quality>,
    ) -> Insert {
        let outcome = self.members().admit(addr, rtt, reported);
        if let Insert::PingFirst(oldest) = outcome {
            let node = self.clone();
            // One per bucket at a time (the table holds the others as
            // `Waiting`); bounded by the liveness timeout.
            self.shared().tasks.spawn(async move {
                let Some(host) = node
                    .members()
                    .hosts()
                    .into_iter()
                    .find(|h| h.addr.id == oldest)
                else {
                    node.members().ping_result(&oldest, false, Duration::ZERO);
                    return;
                };
                let answer = crate::patience::within(
                    node.members().settings.liveness_timeout,
                    node.ping_with(Target::Addr(host.addr), true),
                )
                .await;
                match answer {
                    Ok(Ok(ping)) => node.members().ping_result(&oldest, true, ping.rtt),
                    _ => {
                        node.members().ping_result(&oldest, false, Duration::ZERO);
                        node.forget_connection(&oldest);
                    }
                }
            });
        }
        outcome
    }

    /// Hands a candidate to verification if the table might take it; when
    /// every verification slot is busy it waits for one (bounded: see
    /// [`Waiting`](crate::peers::waiting::Waiting)), and only a candidate
    /// the queue refuses is dropped (counted).
    pub(super) fn offer_candidate(&self, addr: NodeAddr, reach: Reach) {
        let id = addr.id;
        if id == self.id() || self.members().contains(&id) {
            return;
        }
        let Ok(permit) = self.shared().verify_slots.clone().try_acquire_owned() else {
            let queued = lock(&self.shared().verify_waiting).push(addr, reach, Instant::now());
            let counter = match queued {
                true => &self.counters().candidates_queued,
                false => &self.counters().candidates_dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.verify_with(permit, addr, reach);
    }

    fn verify_with(&self, permit: OwnedSemaphorePermit, addr: NodeAddr, reach: Reach) {
        let id = addr.id;
        if !self.members().start_verifying(id) {
            // Its slot goes to the next waiting candidate.
            self.next_waiting(permit);
            return;
        }
        // Bounded (a handshake and a ping, each timed out); holds the node
        // that long at most.
        tracing::trace!(peer = %id.short(), ?reach, "verifying a candidate");
        let node = self.clone();
        self.shared().tasks.spawn(async move {
            verify(node.clone(), addr, reach).await;
            node.next_waiting(permit);
        });
    }

    /// Gives a freed verification slot to the candidate that has waited
    /// longest and is still worth verifying.
    fn next_waiting(&self, permit: OwnedSemaphorePermit) {
        loop {
            let next = lock(&self.shared().verify_waiting).pop(Instant::now());
            let Some((addr, reach)) = next else { return };
            let id = addr.id;
            let worth = !self.members().contains(&id)
                && addr
                    .addrs
                    .first()
                    .is_none_or(|a| self.members().would_consider(&id, *a));
            if worth {
                return self.verify_with(permit, addr, reach);
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `interval` ± 20 %.
pub(super) fn jitter(interval: Duration) -> Duration {
    crate::backoff::spread(interval, 0.2, &mut rand::rng())
}

/// Runs until the node is dropped or shut down.
async fn upkeep(node: WeakNode) {
    let Some(base) = node
        .upgrade()
        .map(|n| n.members().settings.liveness_interval)
    else {
        return;
    };
    // Churn shortens the interval (down to a quarter of the base); calm
    // stretches it back.
    let mut interval = crate::backoff::Adaptive::new(base);
    // Ask for hosts soon after start rather than a full interval later.
    let mut wait = Duration::from_millis(200);
    let Some(members) = node.upgrade().map(|n| n.shared().members.clone()) else {
        return;
    };
    loop {
        let suspects_only = tokio::select! {
            _ = tokio::time::sleep(jitter(wait)) => false,
            _ = members.suspected() => true,
        };
        let Some(node) = node.upgrade() else { return };
        if suspects_only {
            // A connection ended: those hosts now, the round keeps its time.
            let suspects = node.members().take_suspects();
            let deaths = check_hosts(&node, suspects).await;
            if deaths > 0 {
                interval.after(true);
            }
            continue;
        }
        let deaths = check_liveness(&node).await;
        let next = interval.after(deaths > 0);
        if node.members().wants_more() {
            peer_exchange(&node).await;
        }
        wait = next;
    }
}

/// Pings the known hosts not heard from for half an interval (at most
/// [`CHECKS_PER_ROUND`], least recently seen first); those that do not answer
/// in time leave the table, a waiting newcomer taking their place.
async fn check_liveness(node: &Node) -> usize {
    let settings = &node.members().settings;
    let hosts = node
        .members()
        .due_for_check(settings.liveness_interval / 2, CHECKS_PER_ROUND);
    check_hosts(node, hosts).await
}

/// Pings `hosts`; those that do not answer in time leave the table.
async fn check_hosts(node: &Node, hosts: Vec<HostInfo>) -> usize {
    let settings = &node.members().settings;
    let mut checks: FuturesUnordered<_> = hosts
        .into_iter()
        .map(|h| async move {
            let result = crate::patience::within(
                settings.liveness_timeout,
                node.ping_with(Target::Addr(h.addr.clone()), true),
            )
            .await;
            (h, result)
        })
        .collect();
    let mut deaths = 0;
    while let Some((host, result)) = checks.next().await {
        let id = host.addr.id;
        match result {
            Ok(Ok(ping)) => node
                .members()
                .seen(&id, ping.rtt, Some(ping.reply.quality(ping.rtt))),
            Ok(Err(e)) => {
                tracing::debug!(peer = %id.short(), error = %e, "liveness check failed");
                deaths += node.members().remove(&id, "unreachable") as usize;
                node.forget_connection(&id);
            }
            Err(_) => {
                deaths += node.members().remove(&id, "no answer to liveness check") as usize;
                node.forget_connection(&id);
            }
        }
    }
    deaths
}

/// Asks a few known hosts for theirs and verifies what comes back.
async fn peer_exchange(node: &Node) {
    use rand::seq::IndexedRandom;
    let hosts = node.members().hosts();
    let asked: Vec<&HostInfo> = hosts.sample(&mut rand::rng(), PEX_FANOUT).collect();
    for host in asked {
        let answer = tokio::time::timeout(
            node.members().settings.liveness_timeout,
            node.peers_of(Target::Addr(host.addr.clone()), PEX_ANSWER as u16),
        )
        .await;
        if let Ok(Ok(records)) = answer {
            // A hostile host may answer with more than it was asked for.
            for record in records.into_iter().take(PEX_ANSWER) {
                node.offer_candidate(record.addr, Reach::Direct);
            }
        }
    }
}

/// "I keep you": a host just taken in knows at once that it is known (it
/// stops asking the LAN; a newcomer learns which of its neighbours hold it)
/// instead of at our first liveness check. Best effort, bounded by the
/// liveness timeout.
async fn tell_kept(node: &Node, target: Target) {
    let _ = tokio::time::timeout(
        node.members().settings.liveness_timeout,
        node.ping_with(target, true),
    )
    .await;
}

impl Node {
    /// Takes a caller into the table whose key the connection it called on
    /// proved and whose address that connection's handshake proved (QUIC
    /// completes a handshake only with a source that receives at its
    /// address): no verification of its own, as the caller takes in the
    /// nodes that answer it. On [`Insert::Added`] it is told so (a task
    /// bounded by the liveness timeout; one per host taken in, and the
    /// table's bounds bound those).
    pub(crate) fn admit_caller(&self, addr: NodeAddr, rtt: Duration) -> Insert {
        let target = Target::Addr(addr.clone());
        let outcome = self.admit_host(addr, rtt, None);
        if outcome == Insert::Added {
            let node = self.clone();
            self.shared()
                .tasks
                .spawn(async move { tell_kept(&node, target).await });
        }
        outcome
    }
}

/// Verifies a candidate with a handshake and a ping, then offers it to the table.
/// Nothing heard about a host (multicast beacon, peer exchange) is trusted before
/// this: the handshake proves the claimed key.
async fn verify(node: Node, addr: NodeAddr, reach: Reach) {
    let id = addr.id;
    let timeout = node.members().settings.liveness_timeout * 2;
    let target = Target::Addr(addr.clone());
    let result = tokio::time::timeout(timeout, async {
        if reach == Reach::Direct {
            // Connected here first, so the ping does not traverse.
            node.shared().endpoint.connection(&target).await?;
        }
        // Not yet "I keep you": the table may still turn it away, and a
        // candidate that believed every verifier would stop asking while
        // nobody keeps it.
        node.ping_with(target.clone(), false).await
    })
    .await;
    let ok = match result {
        Ok(Ok(ping)) => {
            node.counters()
                .candidates_verified
                .fetch_add(1, Ordering::Relaxed);
            // Only the address the handshake proved; what the candidate
            // claimed besides is not passed on (peer exchange would spread
            // forged addresses). A relayed candidate has no proven address:
            // its introducer's word is kept.
            let mut addrs = vec![ping.remote];
            if crate::net::is_virtual(ping.remote) {
                addrs.extend(addr.addrs.iter().filter(|a| **a != ping.remote));
                addrs.truncate(8);
            }
            let admitted = node.admit_host(
                NodeAddr::new(id, addrs),
                ping.rtt,
                Some(ping.reply.quality(ping.rtt)),
            );
            if admitted == Insert::Added {
                tell_kept(&node, target).await;
            }
            true
        }
        Ok(Err(Error::IdentityMismatch(e))) => {
            node.counters()
                .candidates_spoofed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(claimed = %id.short(), error = %e, "candidate failed to prove its identity");
            false
        }
        Ok(Err(_)) | Err(_) => {
            node.counters()
                .candidates_unreachable
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    };
    node.members().done_verifying(&id, ok);
}
