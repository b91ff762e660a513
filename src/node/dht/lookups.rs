//! Runs a [`Lookup`] over the network: the state machine says whom to ask,
//! this sends the queries (each timed out), feeds the answers back, and
//! takes every node that answered into the table (its key proven by the
//! connection, its address by the packets that came from it).

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::LookupReport;
use crate::addr::{NodeAddr, Target};
use crate::dht::lookup::{Lookup, LookupConfig};
use crate::dht::messages::{
    Check, Closer, FindNode, FindValue, FoundValue, GetProviders, Providers, FIND_NODE_ROUTE,
    FIND_VALUE_ROUTE, GET_PROVIDERS_ROUTE, MAX_CONTACT_ADDRS,
};
use crate::dht::record::Record;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::node::Node;

/// What a lookup asks each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// `find_node`: its contacts closest to the target.
    Node,
    /// `find_value`: the record under the target, or contacts.
    Value,
    /// `get_providers`: who holds the target's content, and contacts.
    Providers,
}

/// What an answer carried besides contacts.
pub(super) enum Reply {
    /// Contacts only.
    Closer,
    /// A record under the target, verified.
    Record(Record),
    /// Providers of the target (possibly none).
    Providers(Vec<NodeAddr>),
}

/// A finished lookup.
pub(super) struct Done {
    /// The closest nodes that answered, closest first.
    pub(super) closest: Vec<NodeAddr>,
    pub(super) report: LookupReport,
}

/// Runs a lookup for `target`; `on_reply` sees every answer's payload and
/// returns `true` to end the lookup (a value was found).
pub(super) async fn run(
    node: &Node,
    target: NodeId,
    ask: Ask,
    config: LookupConfig,
    mut on_reply: impl FnMut(&NodeId, &Reply) -> bool,
) -> Result<Done> {
    let started = Instant::now();
    let k = config.k;
    let timeout = config.timeout;
    let mut seeds = node.members().closest(&target, k);
    if seeds.is_empty() {
        seeds = node.dht_state().settings.bootstrap.clone();
    }
    seeds.retain(|s| s.id != node.id());
    if seeds.is_empty() {
        return Err(Error::NotFound(
            "no node to ask: the table is empty and no bootstrap node is set".into(),
        ));
    }
    node.members()
        .touch(crate::peers::table::bucket_index(&node.id(), &target));
    let mut lookup = Lookup::new(target, seeds.into_iter().map(|a| (a.id, a)), config);
    let mut inflight = FuturesUnordered::new();
    let serving = node.dht_state().settings.serve;
    let mut ended = false;
    loop {
        for q in lookup.poll(Instant::now()) {
            inflight.push(query(node, q.contact, ask, target, serving, timeout));
        }
        if lookup.is_finished() || ended {
            break;
        }
        let wake = lookup
            .next_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            Some((from, result)) = inflight.next() => {
                let now = Instant::now();
                match result {
                    Ok((contacts, reply)) => {
                        admit_responder(node, &from);
                        ended = on_reply(&from, &reply);
                        if matches!(reply, Reply::Record(_)) {
                            lookup.on_value(&from, now);
                        } else {
                            let me = node.id();
                            let contacts = contacts
                                .into_iter()
                                .filter_map(|mut c| {
                                    c.addrs.retain(|a| !crate::nat::scope::is_unusable(*a));
                                    (c.id != me && !c.addrs.is_empty()).then_some((c.id, c))
                                });
                            lookup.on_response(&from, contacts, now);
                        }
                    }
                    Err(e) => {
                        tracing::trace!(peer = %from.short(), error = %e, "dht query failed");
                        // A host that answers without the route is alive
                        // (it does not serve the DHT); other failures count
                        // against it.
                        if !matches!(e, Error::NoSuchRoute(_)) {
                            node.members().call_failed(&from);
                        }
                        lookup.on_failure(&from, now);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake), if !inflight.is_empty() => {}
            else => break,
        }
    }
    let stats = lookup.stats();
    Ok(Done {
        closest: lookup.closest().into_iter().map(|(_, a)| a).collect(),
        report: LookupReport {
            hops: stats.hops,
            queries: stats.queries,
            responses: stats.responses,
            failures: stats.failures,
            elapsed: started.elapsed(),
        },
    })
}

/// One query, timed out; the contacts it returned (checked) and its payload.
async fn query(
    node: &Node,
    to: NodeAddr,
    ask: Ask,
    target: NodeId,
    serving: bool,
    timeout: Duration,
) -> (NodeId, Result<(Vec<NodeAddr>, Reply)>) {
    let id = to.id;
    let target_of = Target::Addr(to);
    // A query that timed out counts against the host (a few in a row and
    // it leaves the table): only time this process was running counts.
    let answer = crate::patience::within(timeout, async {
        match ask {
            Ask::Node => {
                let reply: Closer = node
                    .call_typed(target_of, FIND_NODE_ROUTE, &FindNode { target, serving })
                    .await?;
                reply.check()?;
                Ok((reply.contacts, Reply::Closer))
            }
            Ask::Value => {
                let reply: FoundValue = node
                    .call_typed(
                        target_of,
                        FIND_VALUE_ROUTE,
                        &FindValue {
                            key: target,
                            serving,
                        },
                    )
                    .await?;
                reply.check()?;
                let payload = match reply.record {
                    Some(r) => {
                        // A record under another key, forged or expired, is a
                        // bad answer: the lookup goes on without it.
                        if r.key() != target {
                            return Err(Error::Malformed("a record under another key".into()));
                        }
                        r.verify(super::unix_now())
                            .map_err(|e| Error::Malformed(e.to_string()))?;
                        Reply::Record(r)
                    }
                    None => Reply::Closer,
                };
                Ok((reply.closer.contacts, payload))
            }
            Ask::Providers => {
                let reply: Providers = node
                    .call_typed(
                        target_of,
                        GET_PROVIDERS_ROUTE,
                        &GetProviders {
                            key: target,
                            serving,
                        },
                    )
                    .await?;
                reply.check()?;
                let providers = reply
                    .providers
                    .into_iter()
                    .map(|mut p| {
                        p.addrs.truncate(MAX_CONTACT_ADDRS);
                        p
                    })
                    .collect();
                Ok((reply.closer.contacts, Reply::Providers(providers)))
            }
        }
    })
    .await
    .unwrap_or(Err(Error::Timeout("dht query")));
    (id, answer)
}

/// A node that answered is taken into the table (if its bucket has room,
/// or after a ping of the bucket's oldest) at the address its packets came
/// from; a relayed one is not (no proven address).
fn admit_responder(node: &Node, id: &NodeId) {
    if !node.dht_state().settings.serve {
        return;
    }
    let Some(conn) = node.shared().endpoint.cached(id) else {
        return;
    };
    let remote = conn.remote_address();
    if crate::net::is_virtual(remote) {
        return;
    }
    if node.members().contains(id) {
        node.members().seen(id, conn.rtt(), None);
    } else {
        node.admit_host(NodeAddr::new(*id, [remote]), conn.rtt(), None);
    }
}
