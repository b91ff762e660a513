//! LAN discovery task: answers every multicast ping, pings actively while the node
//! wants hosts (first at once, then backing off), and hands what it hears to
//! verification.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

use super::membership::{jitter, Reach};
use super::{Node, NodeInner};
use crate::addr::NodeAddr;
use crate::discovery::beacon::{Beacon, Kind, MAX_ADDRS, MAX_BEACON};
use crate::discovery::multicast::MulticastSocket;
use crate::discovery::DiscoverySettings;

/// Beacons taken from one source per second (four at once).
const BEACONS_PER_SOURCE: f64 = 2.0;

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

pub(super) async fn run(
    node: Weak<NodeInner>,
    socket: MulticastSocket,
    settings: DiscoverySettings,
    mut closed: watch::Receiver<()>,
) {
    let mut interval = settings.min_interval;
    let mut next_ping = tokio::time::Instant::now();
    let mut last_pong: Option<Instant> = None;
    let mut buf = vec![0u8; MAX_BEACON + 1];
    let per_source =
        crate::ratelimit::RateLimiter::new(BEACONS_PER_SOURCE, BEACONS_PER_SOURCE * 4.0, 1024);
    loop {
        tokio::select! {
            _ = closed.changed() => return,
            _ = tokio::time::sleep_until(next_ping) => {
                let Some(node) = node.upgrade().map(|inner| Node { inner }) else { return };
                if should_ping(&node) {
                    if let Some(bytes) = beacon(&node, Kind::Ping) {
                        let copies = socket.send(&bytes).await;
                        node.counters().mcast_pings_sent.fetch_add(copies as u64, Ordering::Relaxed);
                    }
                    next_ping = tokio::time::Instant::now() + jitter(interval);
                    interval = (interval * 2).min(settings.max_interval);
                } else {
                    // Satisfied: stay quiet, but notice loneliness quickly.
                    interval = settings.min_interval;
                    next_ping = tokio::time::Instant::now() + settings.min_interval;
                }
            }
            received = socket.recv(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let Some(node) = node.upgrade().map(|inner| Node { inner }) else { return };
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
                if beacon_in.kind == Kind::Ping && last_pong.is_none_or(|t| t.elapsed() >= PONG_SPACING) {
                    if let Some(bytes) = beacon(&node, Kind::Pong) {
                        let copies = socket.send(&bytes).await;
                        node.counters().mcast_pongs_sent.fetch_add(copies as u64, Ordering::Relaxed);
                        last_pong = Some(Instant::now());
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
    let needs_us = beacon.known == 0 || beacon.known_by == 0;
    // A full, content node still samples a few newcomers (diversity), not all.
    if !(room || needs_us || rand::rng().random_bool(0.1)) {
        return;
    }
    let seen_at = SocketAddr::new(from.ip(), beacon.port);
    let mut addrs = vec![seen_at];
    addrs.extend(beacon.addrs.into_iter().filter(|a| *a != seen_at));
    addrs.truncate(MAX_ADDRS);
    node.offer_candidate(NodeAddr::new(beacon.id, addrs), Reach::Direct);
}
