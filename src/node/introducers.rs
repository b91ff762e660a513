//! The introducer client: keeps this node registered with each configured
//! introducer (re-registering after an introducer restart or a lost connection)
//! and asks for introductions while the node is lonely.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::membership::{jitter, Reach};
use super::service::{Routes, Service, ServiceContext, WeakNode};
use super::Node;
use crate::addr::NodeAddr;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::nat::protocol::{
    Introduce, Register, Registered, INTRODUCE_ROUTE, MAX_INTRODUCTIONS, REGISTER_ROUTE,
};

/// Longest wait between attempts to reach an introducer that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The introducer client: one registration task per configured introducer
/// (no routes).
pub(super) struct IntroducerClient;

impl Service for IntroducerClient {
    fn name(&self) -> &'static str {
        "introducer client"
    }

    fn routes(&self, _routes: &mut Routes<'_>) {}

    fn start(&self, ctx: &ServiceContext) {
        let Some(node) = ctx.node().upgrade() else {
            return;
        };
        let register = node.shared().nat.register;
        for intro in node.shared().nat.introducers.clone() {
            node.add_peer_addr(&intro);
            if register {
                ctx.spawn(run(ctx.node(), intro));
            } else {
                ctx.spawn(introduced(ctx.node(), intro));
            }
        }
    }
}

/// Runs one introducer's registration loop until the node stops.
async fn run(node: WeakNode, intro: NodeAddr) {
    // Retries of an introducer that is down: from half a second, doubling,
    // never beyond the refresh interval (nor 30 s).
    let mut retry = Backoff::new(Duration::from_millis(500), MAX_BACKOFF);
    let mut said: Option<SocketAddr> = None;
    let mut failing = false;
    loop {
        let Some(n) = node.upgrade() else {
            return;
        };
        let interval = n.shared().nat.register_interval;
        retry.set_max(MAX_BACKOFF.min(interval));
        let wait = match register(&n, &intro).await {
            Ok(reg) => {
                n.counters()
                    .introducer_registrations
                    .fetch_add(1, Ordering::Relaxed);
                // Said once, and again when the outside view changes or
                // after the introducer was lost.
                if said != Some(reg.observed) {
                    tracing::info!(
                        introducer = %intro,
                        observed = %reg.observed,
                        "registered with the introducer; seen from outside as {}",
                        reg.observed
                    );
                    said = Some(reg.observed);
                }
                failing = false;
                n.shared().observed.record(intro.id, reg.observed);
                retry.reset();
                if n.members().wants_more() {
                    introductions(&n, &intro).await;
                }
                // Refresh well within the registration's lifetime.
                jitter(interval.min(Duration::from_millis(reg.ttl_ms / 2).max(interval / 4)))
            }
            Err(e) => {
                n.counters()
                    .introducer_failures
                    .fetch_add(1, Ordering::Relaxed);
                if !failing {
                    // Once per outage: the retries are quiet.
                    tracing::warn!(
                        introducer = %intro,
                        "cannot register with the introducer ({}); retrying in the background",
                        e.detail()
                    );
                    failing = true;
                    said = None;
                } else {
                    tracing::debug!(introducer = %intro.id.short(), error = %e, "registration failed; retrying");
                }
                // The cached connection may be to an introducer that restarted.
                n.forget_connection(&intro.id);
                retry.next(&mut rand::rng())
            }
        };
        drop(n);
        tokio::time::sleep(wait).await;
    }
}

/// A node that does not register (a one-shot client) only asks for
/// introductions while it is lonely.
async fn introduced(node: WeakNode, intro: NodeAddr) {
    let mut retry = Backoff::new(Duration::from_millis(500), MAX_BACKOFF);
    loop {
        let Some(n) = node.upgrade() else {
            return;
        };
        let wait = if n.members().wants_more() {
            introductions(&n, &intro).await;
            retry.next(&mut rand::rng())
        } else {
            retry.reset();
            n.shared().nat.register_interval
        };
        drop(n);
        tokio::time::sleep(wait).await;
    }
}

async fn register(node: &Node, intro: &NodeAddr) -> Result<Registered> {
    let req = Register {
        addrs: node.candidate_addrs(),
    };
    // Bounded well below the refresh interval: a dead connection is noticed
    // on the next round rather than after the idle timeout.
    let timeout = node
        .shared()
        .nat
        .register_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    tokio::time::timeout(
        timeout,
        node.call_typed(intro.clone(), REGISTER_ROUTE, &req),
    )
    .await
    .map_err(|_| Error::Timeout("registration"))?
}

/// Asks for peers and verifies each (a handshake, through a punch or relay if
/// needed) before it may enter the known hosts.
async fn introductions(node: &Node, intro: &NodeAddr) {
    let max = (node
        .members()
        .settings
        .want_hosts
        .min(MAX_INTRODUCTIONS as usize) as u16)
        .clamp(1, MAX_INTRODUCTIONS);
    match node
        .call_typed::<_, Vec<NodeAddr>>(intro.clone(), INTRODUCE_ROUTE, &Introduce { max })
        .await
    {
        Ok(peers) => {
            // Dialed at what is in scope from here (the introducer filters
            // too; a node does not rely on it).
            let me_seen = node.shared().observed.of(&intro.id).map(|a| a.ip());
            for mut peer in peers.into_iter().take(max as usize) {
                if let (Some(&seen), Some(me)) = (peer.addrs.first(), me_seen) {
                    let mut own = peer.addrs.split_off(1);
                    crate::nat::scope::filter(&mut own, seen.ip(), me);
                    peer.addrs.extend(own);
                }
                node.offer_candidate(peer, Reach::Traverse);
            }
        }
        Err(e) => tracing::debug!(introducer = %intro.id.short(), error = %e, "no introductions"),
    }
}

/// The reflexive addresses introducers reported, by introducer.
#[derive(Default)]
pub(crate) struct Observed {
    by_introducer: std::sync::Mutex<Vec<(crate::NodeId, SocketAddr)>>,
}

impl Observed {
    fn record(&self, intro: crate::NodeId, addr: SocketAddr) {
        let mut seen = self.by_introducer.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|(i, _)| *i != intro);
        seen.push((intro, addr));
    }

    /// The reflexive address `intro` reported.
    pub(crate) fn of(&self, intro: &crate::NodeId) -> Option<SocketAddr> {
        let seen = self.by_introducer.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().find(|(i, _)| i == intro).map(|(_, a)| *a)
    }

    /// Distinct reflexive addresses, oldest report first.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        let seen = self.by_introducer.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SocketAddr> = Vec::new();
        for (_, a) in seen.iter() {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }
}
