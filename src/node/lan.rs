//! LAN discovery task: answers every multicast ping, pings actively while the node
//! wants hosts (first at once, then backing off), and hands what it hears to
//! verification.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngExt;

use super::membership::Reach;
use super::service::{Routes, Service, ServiceContext, WeakNode};
use super::Node;
use crate::addr::NodeAddr;
use crate::backoff::Backoff;
use crate::discovery::beacon::{Beacon, Kind, MAX_ADDRS, MAX_BEACON};
use crate::discovery::multicast::MulticastSocket;
use crate::discovery::DiscoverySettings;

/// Beacons taken from one source per second (four at once).
const BEACONS_PER_SOURCE: f64 = 2.0;

/// A pong waits a random delay up to this (as mDNS answers do)...
const PONG_DELAY_MAX: Duration = Duration::from_millis(100);

/// ...and is not sent if this many others answered meanwhile: one ping on a
/// big LAN draws a few pongs, not one per node.
const ENOUGH_PONGS: usize = 3;

/// One pinger is answered at most once per this interval.
const PONG_PER_SOURCE: Duration = Duration::from_secs(2);

/// At most one pong per this interval, whatever the ping rate around.
const PONG_SPACING: Duration = Duration::from_millis(250);

fn beacon(node: &Node, kind: Kind) -> Option<Vec<u8>> {
    let addr = node.addr();
    Beacon {
        kind,
        id: node.id(),
        port: node.local_addr().port(),
        addrs: addr
            .addrs
            .into_iter()
            .filter(|a| !a.ip().is_loopback())
            .take(MAX_ADDRS)
            .collect(),
        known: node.members().len() as u32,
        known_by: node.members().known_by_count(),
    }
    .encode()
    .ok()
}

/// Whether the node should be asking: it wants hosts, or nobody knows it yet.
fn should_ping(node: &Node) -> bool {
    node.members().wants_more() || node.members().known_by_count() == 0
}

/// LAN discovery (no routes: multicast is not QUIC).
pub(super) struct LanService {
    /// Taken by the task when the node starts.
    socket: Mutex<Option<MulticastSocket>>,
    settings: DiscoverySettings,
}

impl LanService {
    pub(super) fn new(socket: MulticastSocket, settings: DiscoverySettings) -> Self {
        LanService {
            socket: Mutex::new(Some(socket)),
            settings,
        }
    }
}

impl Service for LanService {
    fn name(&self) -> &'static str {
        "lan"
    }

    fn routes(&self, _routes: &mut Routes<'_>) {}

    fn start(&self, ctx: &ServiceContext) {
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(socket) = socket {
            ctx.spawn(run(ctx.node(), socket, self.settings.clone()));
        }
    }
}

async fn run(node: WeakNode, socket: MulticastSocket, settings: DiscoverySettings) {
    // Pings while wanting hosts: at once, then less and less often.
    let mut pings = Backoff::new(settings.min_interval, settings.max_interval);
    let mut next_ping = tokio::time::Instant::now();
    let mut last_pong: Option<Instant> = None;
    // A pong waiting for its delay, and the others' pongs heard meanwhile.
    let mut pong_due: Option<tokio::time::Instant> = None;
    let mut pongs_heard = 0usize;
    let mut answered: std::collections::HashMap<std::net::IpAddr, Instant> = Default::default();
    let mut buf = vec![0u8; MAX_BEACON + 1];
    let per_source =
        crate::ratelimit::RateLimiter::new(BEACONS_PER_SOURCE, BEACONS_PER_SOURCE * 4.0, 1024);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_ping) => {
                let Some(node) = node.upgrade() else { return };
                if should_ping(&node) {
                    if let Some(bytes) = beacon(&node, Kind::Ping) {
                        let copies = socket.send(&bytes).await;
                        node.counters().mcast_pings_sent.fetch_add(copies as u64, Ordering::Relaxed);
                    }
                    next_ping = tokio::time::Instant::now() + pings.next(&mut rand::rng());
                } else {
                    // Satisfied: stay quiet, but notice loneliness quickly.
                    pings.reset();
                    next_ping = tokio::time::Instant::now() + settings.min_interval;
                }
            }
            _ = async { tokio::time::sleep_until(pong_due.unwrap_or_else(tokio::time::Instant::now)).await }, if pong_due.is_some() => {
                pong_due = None;
                let Some(node) = node.upgrade() else { return };
                if pongs_heard >= ENOUGH_PONGS {
                    node.counters().mcast_pongs_suppressed.fetch_add(1, Ordering::Relaxed);
                } else if let Some(bytes) = beacon(&node, Kind::Pong) {
                    let copies = socket.send(&bytes).await;
                    node.counters().mcast_pongs_sent.fetch_add(copies as u64, Ordering::Relaxed);
                    last_pong = Some(Instant::now());
                }
            }
            received = socket.recv(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let Some(node) = node.upgrade() else { return };
                node.counters().mcast_received.fetch_add(1, Ordering::Relaxed);
                // A source that floods the group costs a few beacons' work.
                if !per_source.allow(from.ip()) {
                    node.counters().mcast_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let beacon_in = match Beacon::decode(&buf[..n]) {
                    Ok(b) => b,
                    Err(e) => {
                        node.counters().mcast_garbage.fetch_add(1, Ordering::Relaxed);
                        tracing::trace!(%from, error = %e, "ignored multicast datagram");
                        continue;
                    }
                };
                if beacon_in.id == node.id() {
                    continue;
                }
                match beacon_in.kind {
                    Kind::Pong => pongs_heard += 1,
                    Kind::Ping => {
                        let recent = answered
                            .get(&from.ip())
                            .is_some_and(|t| t.elapsed() < PONG_PER_SOURCE);
                        if pong_due.is_none()
                            && !recent
                            && last_pong.is_none_or(|t| t.elapsed() >= PONG_SPACING)
                        {
                            if answered.len() >= 256 {
                                answered.retain(|_, t| t.elapsed() < PONG_PER_SOURCE);
                            }
                            if answered.len() < 256 {
                                answered.insert(from.ip(), Instant::now());
                            }
                            pongs_heard = 0;
                            let delay = PONG_DELAY_MAX.mul_f64(rand::rng().random_range(0.0..1.0));
                            pong_due = Some(tokio::time::Instant::now() + delay);
                        }
                    }
                }
                consider(&node, from, beacon_in);
            }
        }
    }
}

/// Starts verification of the beacon's sender if the table might take it.
fn consider(node: &Node, from: SocketAddr, beacon: Beacon) {
    let members = node.members();
    if members.contains(&beacon.id) {
        return;
    }
    let room = members.len() < members.settings.capacity();
    // What the beacon claims about its sender (`known`, `known_by`) is not
    // weighed: anyone can claim anything. What counts is what it does: a
    // node pings only while it wants hosts or nobody knows it (and pings
    // are rate limited per source above), so a pinger is worth a
    // verification even to a full node.
    let asking = beacon.kind == Kind::Ping;
    // A full, content node still samples a few others (diversity), not all.
    if !(room || asking || rand::rng().random_bool(0.1)) {
        return;
    }
    let seen_at = SocketAddr::new(from.ip(), beacon.port);
    let mut addrs = vec![seen_at];
    addrs.extend(beacon.addrs.into_iter().filter(|a| *a != seen_at));
    addrs.truncate(MAX_ADDRS);
    node.offer_candidate(NodeAddr::new(beacon.id, addrs), Reach::Direct);
}
