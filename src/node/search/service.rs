//! The index routes: `butter/search/put` stores an entry under a key
//! (verified, under a key of its own signature, within the store's bounds
//! and the sender's share; `Full` when the key is: the publisher spills to
//! the next salt), `butter/search/get` reads a key (or, when nothing is
//! held under it, names the nodes known closer to it). Tasks: renewal of this
//! node's own entries and profile, the expiry of others', and the repair of
//! held keys when one of their holders leaves (pushed to the key's new
//! closest nodes, as chunks are).

use std::time::Duration;

use super::{lock, IndexFound, IndexGet, IndexPut, PutReply, GET_ROUTE, PUT_ROUTE};
use crate::addr::NodeAddr;
use crate::error::Error;
use crate::identity::NodeId;
use crate::node::service::{Routes, Service, ServiceContext, WeakNode};
use crate::node::Node;
use crate::search::entry::MAX_ENTRY;
use crate::search::messages::MAX_CLOSER;
use crate::search::store::IndexError;

/// Serves and keeps the index (`serve`: the routes too, not only this
/// node's own entries' upkeep).
pub(crate) struct SearchService {
    pub(crate) serve: bool,
}

/// How often expired entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How long after a change of its profile a node publishes it (changes
/// within that time are published together).
const PROFILE_SETTLE: Duration = Duration::from_secs(1);

impl Service for SearchService {
    fn name(&self) -> &'static str {
        "search"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        if !self.serve {
            return;
        }
        let n = routes.node();
        routes.typed(
            PUT_ROUTE,
            MAX_ENTRY + 64,
            move |_peer, from, put: IndexPut| {
                let node = n.upgrade();
                async move {
                    let node = node.ok_or(Error::Shutdown)?;
                    let now = crate::node::dht::unix_now();
                    let stored =
                        lock(&node.search_state().store).put(put.key, put.entry, from.ip(), now);
                    match stored {
                        Ok(()) => {
                            node.search_state().changed();
                            Ok(PutReply::Stored)
                        }
                        Err(IndexError::KeyFull) => Ok(PutReply::Full),
                        Err(IndexError::Full(what)) => {
                            tracing::debug!(what, "index entry refused");
                            Err(Error::Busy("the index store"))
                        }
                        Err(e) => Err(Error::Malformed(e.to_string())),
                    }
                }
            },
        );
        let n = routes.node();
        routes.typed(GET_ROUTE, 64, move |peer, _from, get: IndexGet| {
            let node = n.upgrade();
            async move {
                let node = node.ok_or(Error::Shutdown)?;
                let now = crate::node::dht::unix_now();
                let found = lock(&node.search_state().store).get(&get.key, usize::MAX, now);
                let closer = if found.entries.is_empty() {
                    closer(&node, &get.key, &peer)
                } else {
                    Vec::new()
                };
                Ok(IndexFound {
                    entries: found.entries,
                    full: found.full,
                    closer,
                })
            }
        });
    }

    fn start(&self, ctx: &ServiceContext) {
        if let Some(node) = ctx.node().upgrade() {
            super::persist::keep(
                ctx.tasks(),
                node.shared().search.clone(),
                node.content().store.clone(),
            );
        }
        ctx.spawn(renew(ctx.node()));
        ctx.spawn(sweep(ctx.node()));
        ctx.spawn(repair(ctx.node()));
    }
}

/// The nodes this node knows closer to `key` than itself (never the
/// asker), closest first, each with its first addresses only; none when
/// this node is itself among the key's holders as far as it knows (fewer
/// than `replicas` closer): its empty answer is the key's.
fn closer(node: &Node, key: &NodeId, asker: &NodeId) -> Vec<NodeAddr> {
    use crate::peers::table::distance;
    let r = node.search_state().settings.replicas.max(1);
    let mine = distance(&node.id(), key);
    let mut near = node.members().closest(key, MAX_CLOSER.max(r) + 1);
    near.retain(|c| distance(&c.id, key) < mine);
    if near.len() < r {
        return Vec::new();
    }
    near.retain(|c| c.id != *asker);
    near.truncate(MAX_CLOSER);
    for c in &mut near {
        c.addrs.truncate(crate::dht::messages::MAX_CONTACT_ADDRS);
    }
    near
}

/// Renews this node's entries and profile every republish interval (and
/// the profile soon after it first has one).
async fn renew(weak: WeakNode) {
    let Some((every, changed)) = weak.upgrade().map(|n| {
        let s = n.search_state();
        (s.settings.republish_interval, s.profile_changed.clone())
    }) else {
        return;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(node) = weak.upgrade() else { return };
                node.republish_index().await;
            }
            _ = changed.notified() => {
                // A burst of indexing: one publication at its end.
                tokio::time::sleep(PROFILE_SETTLE).await;
                let Some(node) = weak.upgrade() else { return };
                node.publish_profile(false).await;
            }
        }
    }
}

async fn sweep(weak: WeakNode) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        lock(&node.search_state().store).expire(crate::node::dht::unix_now());
    }
}

/// When a known host leaves, the keys this node holds that it was one of
/// the closest holders of (and this node is one now) are pushed to the
/// keys' closest nodes; when one joins among a key's closest, it is handed
/// the key's entries.
async fn repair(weak: WeakNode) {
    let Some(mut events) = weak.upgrade().map(|n| n.events()) else {
        return;
    };
    while let Some((gone, joined)) = crate::node::handover::next_changes(&mut events).await {
        let Some(node) = weak.upgrade() else { return };
        let r = node.search_state().settings.replicas.max(1);
        let keys = lock(&node.search_state().store).keys();
        for key in keys {
            let targets = crate::node::handover::targets(&node, &key, &gone, &joined, r);
            if targets.is_empty() {
                continue;
            }
            let entries = lock(&node.search_state().store).all(&key);
            let pushes = targets.into_iter().map(|target| {
                let node = node.clone();
                let entries = &entries;
                async move {
                    for entry in entries {
                        if let Err(e) = node.put_entry(target.clone(), key, entry).await {
                            tracing::debug!(error = %e, "index repair push failed");
                            return;
                        }
                    }
                }
            });
            futures_util::future::join_all(pushes).await;
        }
    }
}
