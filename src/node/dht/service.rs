//! The DHT service: the `butter/dht/*` routes (each with a body limit, every
//! message count-checked before work, every reply carrying the closest
//! contacts) and the upkeep task (bootstrap, self-lookup, bucket refresh,
//! republishing).

use std::net::SocketAddr;
use std::time::Duration;

use super::{lock, unix_now, Dht};
use crate::addr::NodeAddr;
use crate::dht::messages::{
    AddProvider, Check, Closer, FindNode, FindValue, FoundValue, GetProviders, Providers, Store,
    Stored, ADD_PROVIDER_ROUTE, FIND_NODE_ROUTE, FIND_VALUE_ROUTE, GET_PROVIDERS_ROUTE,
    MAX_CONTACTS, MAX_CONTACT_ADDRS, MAX_PROVIDERS, PROVIDER_REQUEST, SMALL_REQUEST, STORE_REQUEST,
    STORE_ROUTE,
};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::node::membership::Reach;
use crate::node::service::{Routes, Service, ServiceContext, WeakNode};
use crate::node::Node;

/// How often the upkeep looks at its buckets and its publications (more
/// often if republishing is more frequent).
const UPKEEP_TICK: Duration = Duration::from_secs(5);

/// Refresh lookups run per tick at most.
const REFRESH_PER_TICK: usize = 4;

/// Serves `butter/dht/*` and keeps the table and publications fresh.
pub(crate) struct DhtService;

/// The contacts closest to `target` a reply carries: never the asker
/// itself, each with its first (proven) addresses only.
fn closer(node: &Node, target: &NodeId, asker: &NodeId) -> Closer {
    let mut contacts = node.members().closest(target, MAX_CONTACTS + 1);
    contacts.retain(|c| c.id != *asker);
    contacts.truncate(MAX_CONTACTS);
    for c in &mut contacts {
        c.addrs.truncate(MAX_CONTACT_ADDRS);
    }
    Closer { contacts }
}

/// A caller that serves the DHT too enters the table when its bucket and
/// its network have room, at the address its packets came from: at once
/// when the connection it called on is direct and live (its key and
/// address are proven as a responder's are to the asker; a newcomer's
/// neighbours must hold it as soon as its self-lookup reached them, or
/// lookups for it miss it), else verified like any candidate. A relayed
/// caller has no proven address and is not taken in.
fn consider(node: &Node, peer: NodeId, from: SocketAddr, serving: bool) {
    if !serving
        || crate::net::is_virtual(from)
        || node.members().contains(&peer)
        || !node.members().would_consider(&peer, from)
    {
        return;
    }
    let addr = NodeAddr::new(peer, [from]);
    match node.shared().endpoint.cached(&peer) {
        Some(conn) if conn.remote_address() == from => {
            node.admit_caller(addr, conn.rtt());
        }
        _ => node.offer_candidate(addr, Reach::Direct),
    }
}

fn upgrade(node: &WeakNode) -> Result<Node> {
    node.upgrade().ok_or(Error::Shutdown)
}

impl Service for DhtService {
    fn name(&self) -> &'static str {
        "dht"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let n = routes.node();
        routes.typed(
            FIND_NODE_ROUTE,
            SMALL_REQUEST,
            move |peer, from, req: FindNode| {
                let node = upgrade(&n);
                async move {
                    let node = node?;
                    consider(&node, peer, from, req.serving);
                    Ok(closer(&node, &req.target, &peer))
                }
            },
        );
        let n = routes.node();
        routes.typed(
            FIND_VALUE_ROUTE,
            SMALL_REQUEST,
            move |peer, from, req: FindValue| {
                let node = upgrade(&n);
                async move {
                    let node = node?;
                    consider(&node, peer, from, req.serving);
                    let record = lock(&node.dht_state().records)
                        .get(&req.key, unix_now())
                        .cloned();
                    Ok(FoundValue {
                        record,
                        closer: closer(&node, &req.key, &peer),
                    })
                }
            },
        );
        let n = routes.node();
        routes.typed(
            STORE_ROUTE,
            STORE_REQUEST,
            move |peer, from: SocketAddr, req: Store| {
                let node = upgrade(&n);
                async move {
                    let node = node?;
                    let key = req.record.key();
                    // Verified (signature, sizes, expiry) and bounded per
                    // publisher and per source inside the store; an older
                    // sequence number than the one held is refused.
                    lock(&node.dht_state().records)
                        .put(req.record, from.ip(), unix_now())
                        .map_err(|e| Error::Refused(e.to_string()))?;
                    node.dht_state().changed();
                    Ok(Stored {
                        closer: closer(&node, &key, &peer),
                    })
                }
            },
        );
        let n = routes.node();
        routes.typed(
            ADD_PROVIDER_ROUTE,
            PROVIDER_REQUEST,
            move |peer, from: SocketAddr, req: AddProvider| {
                let node = upgrade(&n);
                async move {
                    let node = node?;
                    req.check()?;
                    // The address its packets came from first (proven); what
                    // it claims besides, only if usable at all.
                    let mut addrs = Vec::with_capacity(MAX_CONTACT_ADDRS);
                    if !crate::net::is_virtual(from) {
                        addrs.push(from);
                    }
                    addrs.extend(
                        req.addrs
                            .iter()
                            .copied()
                            .filter(|a| *a != from && !crate::nat::scope::is_unusable(*a)),
                    );
                    addrs.truncate(MAX_CONTACT_ADDRS);
                    lock(&node.dht_state().providers)
                        .add(req.key, peer, &addrs, from.ip(), unix_now())
                        .map_err(|e| Error::Refused(e.to_string()))?;
                    node.dht_state().changed();
                    Ok(Stored {
                        closer: closer(&node, &req.key, &peer),
                    })
                }
            },
        );
        let n = routes.node();
        routes.typed(
            GET_PROVIDERS_ROUTE,
            SMALL_REQUEST,
            move |peer, from, req: GetProviders| {
                let node = upgrade(&n);
                async move {
                    let node = node?;
                    consider(&node, peer, from, req.serving);
                    let providers =
                        lock(&node.dht_state().providers).get(&req.key, MAX_PROVIDERS, unix_now());
                    Ok(Providers {
                        providers,
                        closer: closer(&node, &req.key, &peer),
                    })
                }
            },
        );
    }

    fn start(&self, ctx: &ServiceContext) {
        ctx.spawn(upkeep(ctx.node()));
        if let Some(node) = ctx.node().upgrade() {
            super::persist::keep(
                ctx.tasks(),
                node.shared().dht.clone(),
                node.content().store.clone(),
            );
        }
    }
}

/// Bootstrap, then a self-lookup as soon as the table has a host and until
/// one is answered (the node has [joined](super::Dht::joined); again after
/// it was left alone), refresh lookups in stale buckets, and republishing.
async fn upkeep(weak: WeakNode) {
    let Some(node) = weak.upgrade() else { return };
    let settings = node.dht_state().settings.clone();
    let mut hosts = node.members().subscribe();
    bootstrap(&node, &settings.bootstrap);
    drop(node);
    let mut had_hosts = false;
    let mut last_republish = tokio::time::Instant::now();
    // Self-lookups that nobody answered are tried again, further apart.
    let mut retry = crate::backoff::Backoff::new(Duration::from_millis(500), UPKEEP_TICK);
    let mut wait = Duration::ZERO;
    loop {
        if had_hosts {
            // Joined, or a self-lookup nobody answered waits its backoff.
            tokio::time::sleep(wait).await;
        } else {
            // Alone: the first host taken in starts the self-lookup at
            // once (the nodes near a newcomer learn it from that lookup;
            // until then lookups for it miss it).
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                event = hosts.recv() => {
                    if matches!(event, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
            }
        }
        wait = super::super::membership::jitter(UPKEEP_TICK.min(settings.republish_interval / 2));
        let Some(node) = weak.upgrade() else { return };
        let dht = node.dht();
        let has_hosts = node.members().len() > 0;
        if had_hosts && !has_hosts {
            // Alone again (every host left or failed): back to the
            // bootstrap nodes, as on start.
            tracing::info!("no known hosts left: bootstrapping again");
            node.dht_state().set_joined(false);
            bootstrap(&node, &settings.bootstrap);
        }
        had_hosts = has_hosts;
        if !has_hosts {
            continue;
        }
        if !node.dht().is_joined() {
            // Joining (or back from being alone): a lookup for our own id
            // fills the near buckets and tells the nodes near us about us.
            match dht.closest(node.id()).await {
                Ok((closest, report)) if report.responses > 0 => {
                    tracing::debug!(
                        found = closest.len(),
                        queries = report.queries,
                        "self-lookup"
                    );
                    node.dht_state().set_joined(true);
                    retry.reset();
                }
                Ok(_) => tracing::debug!("self-lookup: nobody answered"),
                Err(e) => tracing::debug!(error = %e, "self-lookup failed"),
            }
            if !node.dht().is_joined() {
                wait = retry.next(&mut rand::rng());
                continue;
            }
        }
        refresh(&node, &dht, settings.refresh_interval).await;
        if last_republish.elapsed() >= settings.republish_interval {
            last_republish = tokio::time::Instant::now();
            republish(&node, &dht).await;
        }
    }
}

/// Verifies each bootstrap node, retried with backoff until it answers
/// once (bounded: the bootstrap list is the user's; each task ends with
/// the node).
fn bootstrap(node: &Node, addrs: &[crate::addr::NodeAddr]) {
    for addr in addrs {
        let node = node.downgrade();
        let addr = addr.clone();
        let tasks = match node.upgrade() {
            Some(n) => n.shared().tasks.clone(),
            None => return,
        };
        tasks.spawn(async move {
            let mut backoff =
                crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                let Some(n) = node.upgrade() else { return };
                match tokio::time::timeout(Duration::from_secs(10), n.add_known_host(addr.clone()))
                    .await
                {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %addr.id.short(), error = %e, "bootstrap failed")
                    }
                    Err(_) => tracing::debug!(peer = %addr.id.short(), "bootstrap timed out"),
                }
                drop(n);
                let wait = backoff.next(&mut rand::rng());
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// A lookup for a random id in each bucket nobody touched for `interval`
/// (a few per tick).
async fn refresh(node: &Node, dht: &Dht, interval: Duration) {
    let stale = node.members().stale_buckets(interval);
    for bucket in stale.into_iter().take(REFRESH_PER_TICK) {
        let id = crate::peers::table::random_id_in_bucket(&node.id(), bucket, &mut rand::rng());
        node.members().touch(bucket);
        if let Err(e) = dht.closest(id).await {
            tracing::debug!(bucket, error = %e, "bucket refresh failed");
        }
    }
}

/// Stores this node's records (signed again, with a new sequence number
/// and expiry) and provider records again.
async fn republish(node: &Node, dht: &Dht) {
    let records: Vec<_> = lock(&node.dht_state().published)
        .values()
        .cloned()
        .collect();
    for record in records {
        let again = dht.resign(record);
        if let Err(e) = dht.store_record(again).await {
            tracing::debug!(error = %e, "republishing a record failed");
        }
    }
    let keys: Vec<_> = lock(&node.dht_state().provided).iter().copied().collect();
    for key in keys {
        if let Err(e) = dht.announce(key).await {
            tracing::debug!(error = %e, "republishing a provider record failed");
        }
    }
}
