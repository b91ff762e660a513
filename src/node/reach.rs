//! Reaching a peer by NodeId across NATs: known addresses first, then a hole
//! punch coordinated by an introducer (`punch`, `predict`), then the
//! introducer's relay (`relay`); a relayed connection keeps trying to become
//! direct (`upgrade`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::Node;
use crate::addr::Target;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::nat::protocol::MAX_ADDRS;
use crate::nat::schedule::{Next, Timeline};
use crate::nat::{ConnectionInfo, PathKind};
use crate::net;

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
            // When to retry the punch and start the relay: `Timeline`; a
            // running prediction holds the relay back (`Timeline::relay_due`).
            let (predicting, mut predicted_until) = tokio::sync::watch::channel(None);
            let mut punch =
                super::upgrade::punch(self.clone(), intro.clone(), id, predicting.clone());
            let mut timeline = Timeline::new(std::time::Instant::now(), head_start);
            let plan = timeline.clone();
            let relay = async {
                loop {
                    let due = plan.relay_due(*predicted_until.borrow_and_update());
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => break,
                        changed = predicted_until.changed() => {
                            if changed.is_err() {
                                let last = *predicted_until.borrow();
                                tokio::time::sleep_until(plan.relay_due(last).into()).await;
                                break;
                            }
                        }
                    }
                }
                self.relay_via(&intro, id).await
            };
            tokio::pin!(relay);
            let (mut punch_over, mut relay_over) = (false, false);
            while !(punch_over && relay_over) {
                tokio::select! {
                    r = &mut punch, if !punch_over => {
                        let e = match r {
                            Ok(Some(Ok(conn))) => return Ok(conn),
                            Ok(Some(Err(e))) => e.to_string(),
                            Ok(None) => return Err(Error::Shutdown),
                            Err(e) => e.to_string(),
                        };
                        errors.push(format!("punch via {}: {e}", intro.id.short()));
                        match timeline.punch_failed(std::time::Instant::now()) {
                            Next::Punch => {
                                punch = super::upgrade::punch(self.clone(), intro.clone(), id, predicting.clone());
                            }
                            Next::AwaitRelay => punch_over = true,
                        }
                    }
                    r = &mut relay, if !relay_over => {
                        relay_over = true;
                        match r {
                            Ok(conn) => {
                                self.counters()
                                    .relayed_dials
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::info!(
                                    peer = %id.short(),
                                    introducer = %intro.id.short(),
                                    "no direct path to the peer: relayed through the introducer (trying to go direct in the background)"
                                );
                                super::upgrade::start(self, intro.clone(), id);
                                return Ok(conn);
                            }
                            Err(e) => errors.push(format!("relay via {}: {}", intro.id.short(), e.detail())),
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
}

/// The first of two fallible futures to succeed, or the last error.
pub(super) async fn first_ok<T>(
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
