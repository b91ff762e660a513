//! Reaching a peer by NodeId across NATs: known addresses first, then a hole
//! punch coordinated by an introducer, then the introducer's relay; a relayed
//! connection keeps trying to become direct. Also the two routes introducers
//! call on a node (`butter/punch`, `butter/relay-in`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::{Node, Shared};
use crate::addr::{NodeAddr, Target};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::nat::protocol::{
    Connect, Punch, PunchReport, RelayIn, RelayOpen, Rendezvous, CONNECT_ROUTE, MAX_ADDRS,
    RELAY_ROUTE, REPORT_ROUTE,
};
use crate::nat::{punch, relay, ConnectionInfo, PathKind};
use crate::net;
use crate::router::{Body, Handler, StreamRequest};
use crate::wire::{self, MAX_HEADER};

/// One traversal per peer at a time: concurrent calls wait for its outcome.
#[derive(Default)]
pub(super) struct Traversals {
    locks: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Traversals {
    fn lock_for(&self, id: NodeId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id).or_default().clone()
    }
}

impl Node {
    /// The connection to `target`: cached, dialed at known addresses, or, when
    /// that fails and introducers are configured, punched or relayed.
    ///
    /// Returns a boxed `Send` future: traversal calls introducers, which comes
    /// back through here, and the explicit type breaks that cycle of futures.
    pub(crate) fn connection<'a>(
        &'a self,
        target: &'a Target,
    ) -> Pin<Box<dyn Future<Output = Result<quinn::Connection>> + Send + 'a>> {
        Box::pin(async move {
            let direct = self.shared().endpoint.connection(target).await;
            match direct {
                Err(Error::Unreachable(why)) if !self.shared().nat.introducers.is_empty() => {
                    let id = target.id();
                    if self.shared().nat.introducers.iter().any(|i| i.id == id) {
                        return Err(Error::Unreachable(why));
                    }
                    tracing::debug!(peer = %id.short(), %why, "no direct path; asking introducers");
                    self.traverse(id).await
                }
                other => other,
            }
        })
    }

    /// Which path the connection to `peer` uses, and its RTT; `None` without a
    /// live connection.
    pub fn connection_info(&self, peer: &NodeId) -> Option<ConnectionInfo> {
        let endpoint = &self.shared().endpoint;
        let conn = endpoint.cached(peer)?;
        let remote = conn.remote_address();
        let path = if net::is_virtual(remote) {
            PathKind::Relayed
        } else if endpoint.was_punched(&conn) {
            PathKind::Punched
        } else {
            PathKind::Direct
        };
        Some(ConnectionInfo {
            path,
            remote,
            rtt: conn.rtt(),
        })
    }

    async fn traverse(&self, id: NodeId) -> Result<quinn::Connection> {
        let lock = self.shared().traversals.lock_for(id);
        let _turn = lock.lock().await;
        if let Some(conn) = self.shared().endpoint.cached(&id) {
            return Ok(conn);
        }
        let mut errors = Vec::new();
        let head_start = self.shared().nat.relay_after;
        for intro in self.shared().nat.introducers.clone() {
            // The punch and, after its head start, the relay race; the first
            // connection wins. A punch that completes after the relay won
            // still replaces the relayed connection (it runs on its own task).
            let mut punch = super::upgrade::punch(self.clone(), intro.clone(), id);
            let relay = async {
                tokio::time::sleep(head_start).await;
                self.relay_via(&intro, id).await
            };
            tokio::pin!(relay);
            let (mut punch_over, mut relay_over) = (false, false);
            while !(punch_over && relay_over) {
                tokio::select! {
                    r = &mut punch, if !punch_over => {
                        punch_over = true;
                        match r {
                            Ok(Ok(conn)) => return Ok(conn),
                            Ok(Err(e)) => errors.push(format!("punch via {}: {e}", intro.id.short())),
                            Err(e) => errors.push(format!("punch via {}: {e}", intro.id.short())),
                        }
                    }
                    r = &mut relay, if !relay_over => {
                        relay_over = true;
                        match r {
                            Ok(conn) => {
                                self.counters()
                                    .relayed_dials
                                    .fetch_add(1, Ordering::Relaxed);
                                super::upgrade::start(Arc::downgrade(&self.inner), intro.clone(), id);
                                return Ok(conn);
                            }
                            Err(e) => errors.push(format!("relay via {}: {e}", intro.id.short())),
                        }
                    }
                }
            }
        }
        Err(Error::Unreachable(format!(
            "{}: {}",
            id.short(),
            errors.join("; ")
        )))
    }

    /// Our own addresses to hand a peer (LAN addresses, and any mapped ones).
    pub(crate) fn candidate_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = self.addr().addrs;
        let local = self.local_addr();
        if !local.ip().is_loopback() {
            addrs.retain(|a| !a.ip().is_loopback());
        }
        if addrs.len() > MAX_ADDRS {
            // The mapped address comes last and matters most off the LAN: keep it.
            let last = addrs.len() - 1;
            addrs.swap(MAX_ADDRS - 1, last);
            addrs.truncate(MAX_ADDRS);
        }
        addrs
    }

    /// Asks `intro` to make `id` punch towards us, then dials its candidates.
    pub(super) async fn punch_via(
        &self,
        intro: &NodeAddr,
        id: NodeId,
    ) -> Result<quinn::Connection> {
        let shared = self.shared();
        // Listening before asking: the peer's first punch packets may beat the
        // introducer's answer.
        let mut reflexive = shared.punch_watch.watch(id);
        let rendezvous: Rendezvous = self
            .call_typed(
                intro.clone(),
                CONNECT_ROUTE,
                &Connect {
                    target: id,
                    addrs: self.candidate_addrs(),
                },
            )
            .await?;
        if rendezvous.peer.id != id || rendezvous.peer.addrs.is_empty() {
            return Err(Error::Malformed("rendezvous for the wrong peer".into()));
        }
        let mut candidates = rendezvous.peer.addrs;
        candidates.truncate(MAX_ADDRS);
        // The observed address comes first; the rest are the peer's own.
        let own: Vec<SocketAddr> = candidates[1..].to_vec();
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| seen.insert(*c));
        // A peer on one of our own subnets is dialed there first: no hairpin
        // through the router, no waiting for the staggered second attempt.
        let mine = self.candidate_addrs();
        candidates.sort_by_key(|c| !mine.iter().any(|m| same_subnet(*m, *c)));
        self.counters()
            .punches_tried
            .fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(
            rendezvous.start_in_ms.min(2000) as u64
        ))
        .await;
        let outcome = shared
            .endpoint
            .dial_learning(
                id,
                &candidates,
                shared.nat.punch_timeout,
                Some(&mut reflexive),
            )
            .await;
        let report = PunchReport {
            target: id,
            succeeded: outcome.is_ok(),
        };
        // The introducer's figures; best effort, briefly bounded.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.call_typed::<_, ()>(intro.id, REPORT_ROUTE, &report),
        )
        .await;
        let (conn, addr) = outcome?;
        // Reaching the address the introducer observed, or one the peer's punch
        // packets came from, went through the peer's NAT, unless the peer
        // advertises it as its own (public, or mapped).
        let punched = !own.contains(&addr);
        if punched {
            self.counters()
                .punches_succeeded
                .fetch_add(1, Ordering::Relaxed);
        }
        // Installed before the address is learned: a concurrent caller that
        // sees the address would otherwise dial again.
        let replaced = shared.endpoint.install(id, conn.clone(), punched);
        shared.endpoint.learn(&NodeAddr::new(id, [addr]));
        tracing::info!(peer = %id.short(), %addr, punched, "connected via introducer");
        if let Some(relayed) = replaced.filter(|c| net::is_virtual(c.remote_address())) {
            tracing::info!(peer = %id.short(), "relayed connection upgraded to direct");
            self.counters().upgrades.fetch_add(1, Ordering::Relaxed);
            // Calls already on the relayed connection finish there.
            let grace = shared.limits.call_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                relayed.close(0u32.into(), b"upgraded to direct");
            });
        }
        Ok(conn)
    }

    /// Opens a relay tunnel to `id` through `intro` and connects over it.
    async fn relay_via(&self, intro: &NodeAddr, id: NodeId) -> Result<quinn::Connection> {
        let shared = self.shared();
        let open = wire::encode_frame(&RelayOpen { target: id }, MAX_HEADER)?;
        let (addr, outgoing) = relay::attach(&shared.endpoint.socket, Some(open.into()));
        // Closes the tunnel's path on every way out but success, including
        // this future being dropped because a punch won the race.
        let mut path = VirtualPath {
            socket: &shared.endpoint.socket,
            addr: Some(addr),
        };
        let incoming = self
            .call_stream(intro.clone(), RELAY_ROUTE, outgoing)
            .await?;
        let socket = shared.endpoint.socket.clone();
        tokio::spawn(relay::pump_in(socket, addr, incoming));
        match shared
            .endpoint
            .connect_once(id, addr, shared.endpoint.connect_timeout())
            .await
        {
            Ok(conn) => {
                path.addr = None;
                shared.stats.handshakes_out.fetch_add(1, Ordering::Relaxed);
                shared.endpoint.install(id, conn.clone(), false);
                let socket = shared.endpoint.socket.clone();
                let watched = conn.clone();
                tokio::spawn(async move {
                    watched.closed().await;
                    socket.close_virtual(addr);
                });
                tracing::info!(peer = %id.short(), via = %intro.id.short(), "connected over relay");
                Ok(conn)
            }
            Err(e) => Err(e),
        }
    }
}

/// A relay tunnel's virtual path, closed on drop unless taken over.
struct VirtualPath<'a> {
    socket: &'a net::DemuxSocket,
    addr: Option<SocketAddr>,
}

impl Drop for VirtualPath<'_> {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            self.socket.close_virtual(addr);
        }
    }
}

fn from_introducer(shared: &Shared, peer: &NodeId) -> Result<()> {
    if shared.nat.introducers.iter().any(|i| i.id == *peer) {
        Ok(())
    } else {
        Err(Error::handler("only this node's introducers may ask that"))
    }
}

/// `butter/punch`: an introducer says a peer is about to dial us.
pub(super) fn punch_route(weak: Arc<OnceLock<Weak<Shared>>>) -> Handler {
    Handler::typed(move |peer: NodeId, req: Punch| {
        let shared = weak.get().and_then(Weak::upgrade);
        async move {
            let shared = shared.ok_or(Error::Shutdown)?;
            from_introducer(&shared, &peer)?;
            let mut targets = req.peer.addrs;
            targets.truncate(MAX_ADDRS);
            targets.retain(|a| !net::is_virtual(*a) && a.port() != 0);
            let them = req.peer.id;
            tokio::spawn(async move {
                let me = shared.identity.id();
                let sent = punch::spray(
                    &shared.endpoint.socket,
                    &me,
                    &targets,
                    shared.nat.punch_interval,
                    shared.nat.punch_timeout,
                    // Done once a direct connection is up: a relayed one is
                    // what this punch is trying to replace.
                    || {
                        shared
                            .endpoint
                            .cached(&them)
                            .is_some_and(|c| !net::is_virtual(c.remote_address()))
                    },
                )
                .await;
                shared
                    .stats
                    .punch_packets_sent
                    .fetch_add(sent, Ordering::Relaxed);
            });
            Ok(())
        }
    })
}

/// `butter/relay-in`: an introducer opens a tunnel from a peer to us.
pub(super) fn relay_in_route(weak: Arc<OnceLock<Weak<Shared>>>) -> Handler {
    Handler::streaming(move |mut req: StreamRequest| {
        let shared = weak.get().and_then(Weak::upgrade);
        async move {
            let shared = shared.ok_or(Error::Shutdown)?;
            from_introducer(&shared, &req.peer())?;
            let hello: RelayIn = wire::read_frame(&mut req.body, MAX_HEADER).await?;
            tracing::debug!(from = %hello.from.short(), via = %req.peer().short(), "relay tunnel in");
            let (addr, outgoing) = relay::attach(&shared.endpoint.socket, None);
            tokio::spawn(relay::pump_in(
                shared.endpoint.socket.clone(),
                addr,
                req.body,
            ));
            Ok::<Body, Error>(outgoing)
        }
    })
}

/// Same IPv4 /24 (or IPv6 /64): a guess at "the same LAN" without netmasks.
fn same_subnet(a: SocketAddr, b: SocketAddr) -> bool {
    match (a.ip().to_canonical(), b.ip().to_canonical()) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            !a.is_loopback() && a.octets()[..3] == b.octets()[..3]
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
            a.segments()[..4] == b.segments()[..4]
        }
        _ => false,
    }
}
