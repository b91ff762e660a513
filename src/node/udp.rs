//! The non-QUIC side of the node's UDP port: answers STUN binding requests,
//! completes our own STUN transactions, counts and drops everything else.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::service::{Routes, Service, ServiceContext, WeakNode};
use super::Node;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
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

/// Takes the socket's non-QUIC datagrams (no routes).
pub(super) struct UdpService;

impl Service for UdpService {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn routes(&self, _routes: &mut Routes<'_>) {}

    fn start(&self, ctx: &ServiceContext) {
        let Some(node) = ctx.node().upgrade() else {
            return;
        };
        let side = node.shared().endpoint.socket.subscribe(1024);
        ctx.spawn(run(ctx.node(), side));
    }
}

async fn run(node: WeakNode, mut side: mpsc::Receiver<Datagram>) {
    while let Some(datagram) = side.recv().await {
        let Some(node) = node.upgrade() else {
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

impl Node {
    /// Asks a STUN server (any RFC 8489 server, or another node) for this node's
    /// reflexive address: how its UDP port looks from the server's side of the
    /// NATs. Sent from the node's own port, so the answer is the mapping its QUIC
    /// connections use too.
    pub async fn stun(&self, server: SocketAddr) -> Result<SocketAddr> {
        let (tid, request) = crate::nat::stun::binding_request()?;
        let mut answer = self.shared().stun.start(tid);
        // Retransmit like RFC 8489 (doubling), within a bounded total.
        let mut rto =
            Backoff::new(Duration::from_millis(250), Duration::from_secs(2)).without_jitter();
        for _ in 0..4 {
            let wait = rto.next(&mut rand::rng());
            if let Err(e) = self.shared().endpoint.socket.send_raw(server, &request) {
                tracing::debug!(%server, error = %e, "STUN send failed");
            }
            match tokio::time::timeout(wait, &mut answer).await {
                Ok(Ok(mapped)) => return Ok(mapped),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
        Err(Error::Timeout("STUN binding request"))
    }
}
