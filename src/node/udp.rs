//! The non-QUIC side of the node's UDP port: answers STUN binding requests,
//! completes our own STUN transactions, counts and drops everything else.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use tokio::sync::{mpsc, watch};

use super::{Node, NodeInner};
use crate::nat::stun::{self, Incoming};
use crate::net::Datagram;
use crate::ratelimit::RateLimiter;

/// How many STUN requests the node answers.
pub(super) struct StunLimits {
    per_source: RateLimiter,
    /// One key: the total.
    total: RateLimiter,
}

impl StunLimits {
    pub(super) fn new(limits: &crate::Limits) -> Self {
        StunLimits {
            per_source: RateLimiter::new(
                limits.stun_per_source,
                limits.stun_per_source * 2.0,
                10_000,
            ),
            total: RateLimiter::new(limits.stun_total, limits.stun_total, 1),
        }
    }
}

pub(super) async fn run(
    node: Weak<NodeInner>,
    mut side: mpsc::Receiver<Datagram>,
    mut closed: watch::Receiver<()>,
) {
    loop {
        let datagram = tokio::select! {
            _ = closed.changed() => return,
            d = side.recv() => match d { Some(d) => d, None => return },
        };
        let Some(node) = node.upgrade().map(|inner| Node { inner }) else {
            return;
        };
        let counters = node.counters();
        if let Some(peer) = crate::nat::punch::sender(&datagram.data) {
            counters
                .punch_packets_received
                .fetch_add(1, Ordering::Relaxed);
            node.shared().punch_watch.seen(peer, datagram.from);
            continue;
        }
        if !stun::looks_like_stun(&datagram.data) {
            counters.udp_garbage.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match stun::handle(&datagram.data, datagram.from) {
            Ok(Incoming::Request(reply)) => {
                let limits = &node.shared().stun_limits;
                if !(limits.total.allow(std::net::Ipv4Addr::UNSPECIFIED.into())
                    && limits.per_source.allow(datagram.from.ip()))
                {
                    counters.stun_refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if node
                    .shared()
                    .endpoint
                    .socket
                    .send_raw(datagram.from, &reply)
                    .is_ok()
                {
                    counters.stun_answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Incoming::Response { tid, mapped }) => {
                if node.shared().stun.complete(tid, mapped) {
                    counters.stun_completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.udp_garbage.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                counters.udp_garbage.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(from = %datagram.from, error = %e, "dropped a bad STUN datagram");
            }
        }
    }
}
