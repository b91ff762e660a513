//! Coordinated hole punching: the dialing side (`punch_via`: ask an
//! introducer, then dial the peer's candidates while it sprays punch packets
//! at ours) and the answering side (`butter/punch`, which introducers call).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::predict::{predict, prediction_role};
use super::reach::first_ok;
use super::service::{Routes, Service};
use super::{Node, Shared};
use crate::addr::NodeAddr;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::nat::protocol::{
    Connect, Punch, PunchReport, Rendezvous, CONNECT_ROUTE, MAX_ADDRS, PUNCH_ROUTE, REPORT_ROUTE,
};
use crate::nat::{punch, PathKind};
use crate::net;

/// Until when a prediction of the punch in progress may still succeed
/// (`None`: none runs): the traversal holds the relay back meanwhile.
pub(super) type Predicting = tokio::sync::watch::Sender<Option<std::time::Instant>>;

impl Node {
    /// Asks `intro` to make `id` punch towards us, then dials its candidates.
    pub(super) async fn punch_via(
        &self,
        intro: &NodeAddr,
        id: NodeId,
        predicting: Option<&Predicting>,
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
                    // The relay waits while the prediction may still succeed
                    // (its window, and the strict side's margin past it).
                    let window = shared.nat.predict.duration.mul_f64(1.25)
                        + shared
                            .endpoint
                            .connect_timeout()
                            .min(Duration::from_millis(500));
                    if let Some(p) = predicting {
                        p.send_replace(Some(std::time::Instant::now() + window));
                    }
                    let outcome = predict(shared, id, role, peer_observed).await;
                    if let (Some(p), Err(_)) = (predicting, &outcome) {
                        p.send_replace(None);
                    }
                    let conn = outcome?;
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
}

pub(super) fn from_introducer(shared: &Shared, peer: &NodeId) -> Result<()> {
    if shared.nat.introducers.iter().any(|i| i.id == *peer) {
        Ok(())
    } else {
        Err(Error::handler("only this node's introducers may ask that"))
    }
}

/// `butter/punch`: an introducer says a peer is about to dial us.
pub(super) struct PunchService;

impl Service for PunchService {
    fn name(&self) -> &'static str {
        "punch"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let node = routes.node();
        routes.typed(
            PUNCH_ROUTE,
            4096,
            move |peer: NodeId, _from: SocketAddr, req: Punch| {
                let shared = node.upgrade().map(|n| n.shared_arc());
                punched(shared, peer, req)
            },
        );
    }
}

/// Answers a punch request: starts the spray (and a prediction where it
/// applies) on the node's tasks, and returns at once.
async fn punched(shared: Option<Arc<Shared>>, peer: NodeId, req: Punch) -> Result<()> {
    {
        {
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
                let tasks = shared.tasks.clone();
                tasks.spawn(async move {
                    tracing::debug!(peer = %them.short(), ?role, "port prediction asked for");
                    match predict(&shared, them, role, observed).await {
                        Ok(conn) => install_direct(&shared, them, conn, PathKind::Predicted),
                        Err(e) => {
                            tracing::debug!(peer = %them.short(), error = %e, "port prediction failed")
                        }
                    }
                });
            }
            shared
                .tasks
                .spawn(label_accepted(shared.clone(), them, their_own));
            let tasks = shared.tasks.clone();
            tasks.spawn(async move {
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
    }
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

/// Makes a direct connection found by traversal the one calls to `id` use;
/// when it replaces a relayed one, that is an upgrade: the relayed connection
/// closes once the calls in flight on it had their time.
pub(super) fn install_direct(shared: &Shared, id: NodeId, conn: quinn::Connection, kind: PathKind) {
    let mark = (kind != PathKind::Direct).then_some(kind);
    let replaced = shared.endpoint.install(id, conn, mark);
    if let Some(relayed) = replaced.filter(|c| net::is_virtual(c.remote_address())) {
        tracing::info!(peer = %id.short(), path = %kind, "relayed connection upgraded to direct");
        shared.stats.upgrades.fetch_add(1, Ordering::Relaxed);
        let grace = shared.limits.call_timeout;
        shared.tasks.spawn(async move {
            tokio::time::sleep(grace).await;
            relayed.close(0u32.into(), b"upgraded to direct");
        });
    }
}

/// Same IPv4 /24 (or IPv6 /64): a guess at "the same LAN" without netmasks.
fn same_subnet(a: SocketAddr, b: SocketAddr) -> bool {
    !a.ip().to_canonical().is_loopback() && crate::source::same_prefix(a.ip(), b.ip())
}
