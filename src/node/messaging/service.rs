//! The messaging routes and tasks. Every node takes direct deliveries
//! (`butter/msg/deliver`) and receipts (`butter/msg/receipt`); a node
//! serving the DHT also holds mailboxes for others: `butter/msg/put`
//! stores an envelope (checked and bounded by [`MailboxStore`]),
//! `butter/msg/fetch` and `butter/msg/ack` read and empty the *caller's
//! own* mailbox (the connection proves who calls, so nobody reads or
//! empties another's). Tasks: delivery, the periodic drain of this node's
//! mailbox, expiry, and the hand-over of held mailboxes when a holder
//! leaves or a closer node joins.
//!
//! [`MailboxStore`]: crate::messaging::mailbox::MailboxStore

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{deliver, lock, now_ms};
use crate::error::Error;
use crate::messaging::envelope::{Envelope, MAX_SEALED};
use crate::messaging::mailbox::Put;
use crate::messaging::messages::{
    mailbox_key, Deliver, Fetch, Fetched, Outcome, PutReply, Receipt, ACK_ROUTE, DELIVER_ROUTE,
    FETCH_ROUTE, MAX_BATCH, MAX_BATCH_BYTES, MAX_IDS, MAX_PAGE_BYTES, PUT_ROUTE, RECEIPT_ROUTE,
};
use crate::messaging::{MessageError, MAX_BODY};
use crate::node::service::{Routes, Service, ServiceContext, WeakNode};

/// Messaging (`serve`: holding mailboxes for others too).
pub(crate) struct MessagingService {
    pub(crate) serve: bool,
}

/// Body limit of a receipt or an acknowledgement: `MAX_IDS` ids.
const IDS_LIMIT: usize = MAX_IDS * 17 + 16;

/// A receipt or acknowledgement naming more ids than a caller may.
fn check_ids(r: &Receipt, what: &str) -> Result<(), Error> {
    if r.ids.len() > MAX_IDS {
        return Err(Error::Message(MessageError::Malformed(format!(
            "{} ids in {what} (at most {MAX_IDS})",
            r.ids.len()
        ))));
    }
    Ok(())
}

/// How often expired envelopes are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How long after its start a node first drains its mailbox, at most
/// (sooner once it knows some hosts).
const FIRST_DRAIN: Duration = Duration::from_secs(5);

impl Service for MessagingService {
    fn name(&self) -> &'static str {
        "messaging"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let n = routes.node();
        // A batch: its letters' bodies and a little for each header.
        let batch_limit = MAX_BATCH_BYTES + MAX_BODY + MAX_BATCH * 256;
        routes.typed(
            DELIVER_ROUTE,
            batch_limit,
            move |peer, _from, d: Deliver| {
                let node = n.upgrade();
                async move {
                    let node = node.ok_or(Error::Shutdown)?;
                    if d.letters.len() > MAX_BATCH {
                        return Err(Error::Malformed(format!(
                            "{} letters in a delivery (at most {MAX_BATCH})",
                            d.letters.len()
                        )));
                    }
                    let state = node.messaging();
                    Ok(d.letters
                        .into_iter()
                        .map(|l| state.take(peer, l))
                        .collect::<Vec<Outcome>>())
                }
            },
        );
        let n = routes.node();
        routes.typed(RECEIPT_ROUTE, IDS_LIMIT, move |peer, _from, r: Receipt| {
            let node = n.upgrade();
            async move {
                let node = node.ok_or(Error::Shutdown)?;
                check_ids(&r, "a receipt")?;
                node.messaging().acked(&peer, &r.ids);
                Ok(())
            }
        });
        if !self.serve {
            return;
        }
        let n = routes.node();
        routes.typed(
            PUT_ROUTE,
            MAX_SEALED + 1024,
            move |_peer, from, env: Envelope| {
                let node = n.upgrade();
                async move {
                    let node = node.ok_or(Error::Shutdown)?;
                    let state = node.messaging();
                    let now = now_ms() / 1000;
                    let to = env.to;
                    let put = lock(&state.mailbox).put(env, from.ip(), now);
                    Ok(match put {
                        Ok(Put::Stored) => {
                            state.changed();
                            node.counters()
                                .mailbox_stored
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::trace!(owner = %to.short(), "mailbox message stored");
                            PutReply::Stored
                        }
                        Ok(Put::Held) => PutReply::Stored,
                        Err(why) => {
                            node.counters()
                                .mailbox_refused
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%why, "mailbox message refused");
                            PutReply::Refused(why)
                        }
                    })
                }
            },
        );
        let n = routes.node();
        routes.typed(FETCH_ROUTE, 64, move |peer, _from, f: Fetch| {
            let node = n.upgrade();
            async move {
                let node = node.ok_or(Error::Shutdown)?;
                let (envelopes, more) =
                    lock(&node.messaging().mailbox).list(&peer, f.after, MAX_PAGE_BYTES);
                Ok(Fetched::Page { envelopes, more })
            }
        });
        let n = routes.node();
        routes.typed(ACK_ROUTE, IDS_LIMIT, move |peer, _from, r: Receipt| {
            let node = n.upgrade();
            async move {
                let node = node.ok_or(Error::Shutdown)?;
                check_ids(&r, "an acknowledgement")?;
                let state = node.messaging();
                let removed = lock(&state.mailbox).ack(&peer, &r.ids, now_ms() / 1000);
                state.changed();
                Ok(removed as u32)
            }
        });
    }

    fn start(&self, ctx: &ServiceContext) {
        if let Some(node) = ctx.node().upgrade() {
            super::persist::keep(
                ctx.tasks(),
                node.shared().messaging.clone(),
                node.content().store.clone(),
            );
        }
        ctx.spawn(deliver::run(ctx.node()));
        ctx.spawn(drain(ctx.node()));
        if self.serve {
            ctx.spawn(sweep(ctx.node()));
            ctx.spawn(hand_over(ctx.node()));
        }
    }
}

/// Drains this node's mailbox soon after it starts (once it knows a
/// host, or after [`FIRST_DRAIN`]) and then every drain interval.
async fn drain(weak: WeakNode) {
    let Some((every, mut events)) = weak
        .upgrade()
        .map(|n| (n.messaging().settings.drain_interval, n.events()))
    else {
        return;
    };
    let knows_hosts = weak.upgrade().is_some_and(|n| !n.known_hosts().is_empty());
    if !knows_hosts {
        let _ = tokio::time::timeout(FIRST_DRAIN, events.recv()).await;
    }
    drop(events);
    loop {
        let Some(node) = weak.upgrade() else { return };
        if let Err(e) = node.drain_mailbox().await {
            tracing::debug!(error = %e, "mailbox drain failed");
        }
        drop(node);
        tokio::time::sleep(every).await;
    }
}

async fn sweep(weak: WeakNode) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        if lock(&node.messaging().mailbox).expire(now_ms() / 1000) > 0 {
            node.messaging().changed();
        }
    }
}

/// Hands held mailboxes over as holders leave and closer nodes join.
async fn hand_over(weak: WeakNode) {
    let Some(mut events) = weak.upgrade().map(|n| n.events()) else {
        return;
    };
    while let Some((gone, joined)) = crate::node::handover::next_changes(&mut events).await {
        let Some(node) = weak.upgrade() else { return };
        let state = node.messaging();
        let r = state.settings.replicas.max(1);
        let owners = lock(&state.mailbox).owners();
        for owner in owners {
            let targets =
                crate::node::handover::targets(&node, &mailbox_key(&owner), &gone, &joined, r);
            let envelopes = lock(&state.mailbox).all(&owner);
            let pushes = targets.into_iter().filter(|t| t.id != owner).map(|target| {
                let node = node.clone();
                let envelopes = &envelopes;
                async move {
                    for env in envelopes {
                        if let Err(e) = deliver::put(&node, target.clone(), env).await {
                            tracing::debug!(error = %e, "mailbox hand-over failed");
                            return;
                        }
                    }
                }
            });
            futures_util::future::join_all(pushes).await;
        }
    }
}
