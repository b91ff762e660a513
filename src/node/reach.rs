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
            if self.shared().shut.load(Ordering::SeqCst) {
                return Err(Error::Shutdown);
            }
            let nat = &self.shared().nat;
            let id = target.id();
            let direct = self.shared().endpoint.connection(target);
            if nat.introducers.is_empty() || nat.introducers.iter().any(|i| i.id == id) {
                return direct.await;
            }
            tokio::pin!(direct);
            // Known addresses get a head start; then traversal races them
            // (addresses behind a NAT would otherwise cost a whole dial timeout).
            tokio::select! {
                r = &mut direct => match r {
                    Err(Error::Unreachable(why)) => {
                        tracing::debug!(peer = %id.short(), %why, "no direct path; asking introducers");
                        self.traverse(id).await
                    }
                    other => other,
                },
                _ = tokio::time::sleep(nat.traverse_after) => {
                    tracing::debug!(peer = %id.short(), "no direct path yet; asking introducers too");
                    first_ok(direct, self.traverse(id)).await
                }
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
        } else {
            endpoint.mark_of(&conn).unwrap_or(PathKind::Direct)
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
            // A punch (or prediction: it is probabilistic) that fails while the
            // relay is still far off gets one more try.
            let relay_due = tokio::time::Instant::now() + head_start;
            let mut retried = false;
            let relay = async {
                tokio::time::sleep(head_start).await;
                self.relay_via(&intro, id).await
            };
            tokio::pin!(relay);
            let (mut punch_over, mut relay_over) = (false, false);
            while !(punch_over && relay_over) {
                tokio::select! {
                    r = &mut punch, if !punch_over => {
                        let e = match r {
                            Ok(Ok(conn)) => return Ok(conn),
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                        };
                        errors.push(format!("punch via {}: {e}", intro.id.short()));
                        let time_left = relay_due.saturating_duration_since(tokio::time::Instant::now());
                        if !retried && time_left > Duration::from_secs(1) {
                            retried = true;
                            punch = super::upgrade::punch(self.clone(), intro.clone(), id);
                        } else {
                            punch_over = true;
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
        let peer_observed = candidates[0];
        let mapping = self.my_mapping(intro).await;
        let me_seen = mapping.map_or_else(|| self.local_addr().ip(), |m| m.ip());
        // Whether the peer's NAT keeps ports is judged from all the ports it
        // claims (nothing is sent to those addresses for that); packets go
        // only to the addresses worth them from here.
        let claimed: Vec<SocketAddr> = candidates[1..].to_vec();
        let role = match mapping {
            Some(mine) => prediction_role(mine, self.local_addr().port(), peer_observed, &claimed),
            None => None,
        };
        let mut own = claimed;
        crate::nat::scope::filter(&mut own, peer_observed.ip(), me_seen);
        if crate::nat::scope::is_unusable(peer_observed) {
            return Err(Error::Malformed(
                "rendezvous with an unusable address".into(),
            ));
        }
        candidates = std::iter::once(peer_observed)
            .chain(own.iter().copied())
            .collect();
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
        let dial = async {
            let (conn, addr) = shared
                .endpoint
                .dial_learning(
                    id,
                    &candidates,
                    shared.nat.punch_timeout,
                    Some(&mut reflexive),
                )
                .await?;
            // Reaching the address the introducer observed, or one the peer's
            // punch packets came from, went through the peer's NAT, unless the
            // peer advertises it as its own (public, or mapped).
            let kind = if own.contains(&addr) {
                PathKind::Direct
            } else {
                PathKind::Punched
            };
            Ok::<_, Error>((conn, addr, kind))
        };
        let outcome = match role {
            None => dial.await,
            Some(role) => {
                tracing::debug!(peer = %id.short(), ?role, "punching with port prediction");
                let predicted = async {
                    let conn = predict(shared, id, role, peer_observed).await?;
                    let addr = conn.remote_address();
                    Ok::<_, Error>((conn, addr, PathKind::Predicted))
                };
                first_ok(dial, predicted).await
            }
        };
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
        let (conn, addr, kind) = outcome?;
        if kind != PathKind::Direct {
            self.counters()
                .punches_succeeded
                .fetch_add(1, Ordering::Relaxed);
        }
        // Installed before the address is learned: a concurrent caller that
        // sees the address would otherwise dial again. A predicted path
        // belongs to its socket pair: nothing to learn for later dials.
        install_direct(shared, id, conn.clone(), kind);
        if kind != PathKind::Predicted {
            shared.endpoint.learn(&NodeAddr::new(id, [addr]));
        }
        tracing::info!(peer = %id.short(), %addr, path = %kind, "connected via introducer");
        Ok(conn)
    }

    /// How our NAT showed us to `intro`: from its registration, or asked now
    /// by STUN when the registration has not come back yet.
    async fn my_mapping(&self, intro: &NodeAddr) -> Option<SocketAddr> {
        if let Some(seen) = self.shared().observed.of(&intro.id) {
            return Some(seen);
        }
        let server = *intro.addrs.first()?;
        self.stun(server).await.ok()
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
        // The tunnel is as quiet as the connection it carries.
        tokio::spawn(relay::pump_in(
            socket,
            addr,
            incoming.without_stall_timeout(),
        ));
        match shared
            .endpoint
            .connect_once(id, addr, shared.endpoint.connect_timeout())
            .await
        {
            Ok(conn) => {
                path.addr = None;
                shared.stats.handshakes_out.fetch_add(1, Ordering::Relaxed);
                shared.endpoint.install(id, conn.clone(), None);
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
            // Only where the peer was seen, and what it claims that is worth
            // packets from here: never third parties or our own private network.
            // Whether the peer's NAT keeps ports is judged from all the ports
            // it claims, and labels from all its claims: no packet goes to
            // those addresses for that.
            let claimed = targets.clone();
            let role = match (claimed.first(), shared.observed.of(&peer)) {
                (Some(theirs), Some(mine)) => prediction_role(
                    mine,
                    shared.endpoint.local_addr()?.port(),
                    *theirs,
                    &claimed[1..],
                ),
                _ => None,
            };
            if let Some(&seen) = targets.first() {
                let me_seen = shared.observed.of(&peer).map_or_else(
                    || shared.endpoint.local_addr().map(|a| a.ip()),
                    |m| Ok(m.ip()),
                )?;
                let mut own = targets.split_off(1);
                crate::nat::scope::filter(&mut own, seen.ip(), me_seen);
                if crate::nat::scope::is_unusable(seen) {
                    targets.clear();
                }
                targets.extend(own);
            }
            let their_observed = claimed.first().copied();
            let their_own: Vec<SocketAddr> = claimed.iter().skip(1).copied().collect();
            let mut seen = std::collections::HashSet::new();
            targets.retain(|a| !net::is_virtual(*a) && a.port() != 0 && seen.insert(*a));
            let them = req.peer.id;
            if let (Some(role), Some(observed)) = (role, their_observed) {
                let shared = shared.clone();
                tokio::spawn(async move {
                    tracing::debug!(peer = %them.short(), ?role, "port prediction asked for");
                    match predict(&shared, them, role, observed).await {
                        Ok(conn) => install_direct(&shared, them, conn, PathKind::Predicted),
                        Err(e) => {
                            tracing::debug!(peer = %them.short(), error = %e, "port prediction failed")
                        }
                    }
                });
            }
            tokio::spawn(label_accepted(shared.clone(), them, their_own));
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

/// The accepting side of a punch names the path too: a connection the peer
/// opens while the punch runs, from an address it does not advertise as its
/// own, came through its NAT's mapping (the dialing side labels its end the
/// same way).
async fn label_accepted(shared: Arc<Shared>, them: NodeId, their_own: Vec<SocketAddr>) {
    let limit = shared.nat.punch_timeout * 2;
    let Ok(conn) = tokio::time::timeout(limit, shared.endpoint.wait_direct(them)).await else {
        return;
    };
    if shared.endpoint.mark_of(&conn).is_none() && !their_own.contains(&conn.remote_address()) {
        shared.endpoint.mark(&conn, PathKind::Punched);
    }
}

/// `butter/relay-in`: an introducer opens a tunnel from a peer to us.
pub(super) fn relay_in_route(weak: Arc<OnceLock<Weak<Shared>>>) -> Handler {
    Handler::streaming(move |mut req: StreamRequest| {
        let shared = weak.get().and_then(Weak::upgrade);
        async move {
            let shared = shared.ok_or(Error::Shutdown)?;
            from_introducer(&shared, &req.peer())?;
            let hello: RelayIn = tokio::time::timeout(
                shared.limits.header_timeout,
                wire::read_frame(&mut req.body, MAX_HEADER),
            )
            .await
            .map_err(|_| Error::Timeout("relay hello"))??;
            tracing::debug!(from = %hello.from.short(), via = %req.peer().short(), "relay tunnel in");
            let (addr, outgoing) = relay::attach(&shared.endpoint.socket, None);
            tokio::spawn(relay::pump_in(
                shared.endpoint.socket.clone(),
                addr,
                req.body.without_stall_timeout(),
            ));
            Ok::<Body, Error>(outgoing)
        }
    })
}

/// Makes a direct connection found by traversal the one calls to `id` use;
/// when it replaces a relayed one, that is an upgrade: the relayed connection
/// closes once the calls in flight on it had their time.
fn install_direct(shared: &Shared, id: NodeId, conn: quinn::Connection, kind: PathKind) {
    let mark = (kind != PathKind::Direct).then_some(kind);
    let replaced = shared.endpoint.install(id, conn, mark);
    if let Some(relayed) = replaced.filter(|c| net::is_virtual(c.remote_address())) {
        tracing::info!(peer = %id.short(), path = %kind, "relayed connection upgraded to direct");
        shared.stats.upgrades.fetch_add(1, Ordering::Relaxed);
        let grace = shared.limits.call_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            relayed.close(0u32.into(), b"upgraded to direct");
        });
    }
}

/// A node's part in a port prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Our NAT maps per destination, the peer's keeps ports: we open many
    /// sockets and dial from the one the peer's probe reaches.
    Strict,
    /// The other way round: we probe random ports of the peer's address and
    /// accept its connection.
    Moderate,
}

/// Whether a prediction is called for between us (seen at `mine`, bound to
/// `port`) and a peer seen at `theirs` that advertises `their_own`.
fn prediction_role(
    mine: SocketAddr,
    port: u16,
    theirs: SocketAddr,
    their_own: &[SocketAddr],
) -> Option<Role> {
    use crate::nat::predict::maps_per_destination;
    let own_ports: Vec<u16> = their_own.iter().map(|a| a.port()).collect();
    match (
        maps_per_destination(mine, &[port]),
        maps_per_destination(theirs, &own_ports),
    ) {
        (true, false) => Some(Role::Strict),
        (false, true) => Some(Role::Moderate),
        _ => None,
    }
}

/// Our part of a port prediction with `id`, seen by the introducer at
/// `theirs`. Bounded by the prediction settings; the connection it yields is
/// direct and authenticated like any other.
async fn predict(
    shared: &Shared,
    id: NodeId,
    role: Role,
    theirs: SocketAddr,
) -> Result<quinn::Connection> {
    // Each costs hundreds of sockets or ~500 packets/s: a few at a time, and
    // one peer cannot start them back to back.
    let _slot = shared
        .predictions
        .start(id, tokio::time::Instant::now())
        .map_err(|why| {
            shared
                .stats
                .predictions_refused
                .fetch_add(1, Ordering::Relaxed);
            Error::Busy(why)
        })?;
    shared
        .stats
        .predictions_tried
        .fetch_add(1, Ordering::Relaxed);
    let outcome = predict_once(shared, id, role, theirs).await;
    let counter = match outcome {
        Ok(_) => &shared.stats.predictions_succeeded,
        Err(_) => &shared.stats.predictions_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    outcome
}

async fn predict_once(
    shared: &Shared,
    id: NodeId,
    role: Role,
    theirs: SocketAddr,
) -> Result<quinn::Connection> {
    let settings = &shared.nat.predict;
    let me = shared.identity.id();
    let limit = settings.duration + shared.endpoint.connect_timeout();
    match role {
        Role::Strict => {
            let settings = &crate::nat::predict::PredictSettings {
                sockets: crate::nat::predict::affordable_sockets(settings.sockets),
                ..settings.clone()
            };
            let (socket, sent) = crate::nat::predict::open_many(&me, theirs, settings).await;
            shared
                .stats
                .punch_packets_sent
                .fetch_add(sent, Ordering::Relaxed);
            let socket = socket.ok_or_else(|| {
                Error::Unreachable(format!(
                    "no probe from {} reached any of our sockets",
                    id.short()
                ))
            })?;
            shared
                .endpoint
                .connect_from(socket, id, theirs, shared.endpoint.connect_timeout())
                .await
        }
        Role::Moderate => {
            let learned = shared.punch_watch.watch(id);
            let direct = || {
                shared
                    .endpoint
                    .cached(&id)
                    .is_some_and(|c| !net::is_virtual(c.remote_address()))
            };
            let probes = crate::nat::predict::spray_random(
                &shared.endpoint.socket,
                &me,
                theirs.ip(),
                settings,
                learned,
                direct,
                &shared.stats.prediction_probes_sent,
            );
            let accepted = tokio::time::timeout(limit, shared.endpoint.wait_direct(id));
            tokio::pin!(accepted);
            tokio::select! {
                conn = &mut accepted => {
                    return conn.map_err(|_| Error::Unreachable(format!("{} never connected from a predicted port", id.short())));
                }
                () = probes => {}
            }
            // The probes are spent; a hit among the last may still be on its
            // way (the strict side's handshake), but not for long.
            tokio::time::timeout(settings.duration / 2, accepted)
                .await
                .map_err(|_| Error::Timeout("a connection from a predicted port"))?
                .map_err(|_| {
                    Error::Unreachable(format!(
                        "{} never connected from a predicted port",
                        id.short()
                    ))
                })
        }
    }
}

/// The first of two fallible futures to succeed, or the last error.
async fn first_ok<T>(
    a: impl Future<Output = Result<T>>,
    b: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(a, b);
    let (mut a_over, mut b_over) = (false, false);
    let mut last = None;
    while !(a_over && b_over) {
        tokio::select! {
            r = &mut a, if !a_over => match r {
                Ok(v) => return Ok(v),
                Err(e) => { a_over = true; last = Some(e); }
            },
            r = &mut b, if !b_over => match r {
                Ok(v) => return Ok(v),
                Err(e) => { b_over = true; last = Some(e); }
            },
        }
    }
    Err(last.unwrap_or(Error::Unreachable("no path".into())))
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
