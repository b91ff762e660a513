//! The sender's task: for each recipient with messages due, one delivery
//! at a time (batches in order, directly); when the recipient cannot be
//! reached, what no mailbox holder took yet is sealed and stored in its
//! mailbox, and the recipient is tried again after its backoff.

use std::time::Duration;

use super::{lock, now_ms};
use crate::addr::Target;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::messaging::envelope::{Envelope, MAX_TTL};
use crate::messaging::messages::{
    mailbox_key, Deliver, Outcome, PutReply, DELIVER_ROUTE, MAX_BATCH, MAX_BATCH_BYTES, PUT_ROUTE,
};
use crate::messaging::{MessageError, MessageId};
use crate::node::service::WeakNode;
use crate::node::Node;

/// Recipients delivered to at once, at most.
const AT_ONCE: usize = 32;

/// How long to wait before trying a recipient that answered "not now".
const LATER: Duration = Duration::from_millis(50);

/// How often the task looks for expired messages.
const EXPIRE_EVERY: Duration = Duration::from_secs(10);

/// Runs until the node stops.
pub(super) async fn run(weak: WeakNode) {
    let mut last_expiry = tokio::time::Instant::now();
    loop {
        let Some(node) = weak.upgrade() else { return };
        // Held while waiting: the state, not the node.
        let state = node.shared().messaging.clone();
        let wake = state.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let now = now_ms();
        if last_expiry.elapsed() >= EXPIRE_EVERY {
            last_expiry = tokio::time::Instant::now();
            let gone = lock(&state.outbox).expire(now);
            if !gone.is_empty() {
                tracing::info!(messages = gone.len(), "messages given up undelivered");
                state.failed(&gone, MessageError::Expired);
            }
        }
        let due = lock(&state.outbox).due(now);
        for to in due {
            let mut active = lock(&state.active);
            if active.len() >= AT_ONCE || !active.insert(to) {
                continue;
            }
            drop(active);
            let n = node.clone();
            node.shared().tasks.spawn(async move {
                deliver_to(&n, to).await;
                lock(&n.messaging().active).remove(&to);
                n.messaging().wake.notify_one();
            });
        }
        let wait = lock(&state.outbox)
            .next_retry()
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
            .unwrap_or(EXPIRE_EVERY)
            .clamp(Duration::from_millis(5), EXPIRE_EVERY);
        drop(node);
        tokio::select! {
            _ = &mut wake => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Delivers `to`'s messages, batch after batch, until none is left or
/// the recipient does not take them.
async fn deliver_to(node: &Node, to: NodeId) {
    let state = node.messaging();
    let mut looked_up = false;
    loop {
        let letters = lock(&state.outbox).take_batch(&to, MAX_BATCH, MAX_BATCH_BYTES);
        if letters.is_empty() {
            return;
        }
        let ids: Vec<MessageId> = letters.iter().map(|l| l.id).collect();
        let sent = node
            .call_typed::<_, Vec<Outcome>>(to, DELIVER_ROUTE, &Deliver { letters })
            .await;
        let sent = match sent {
            Err(Error::Unreachable(why)) if !looked_up => {
                // Perhaps only its address is unknown: the DHT may know it.
                looked_up = true;
                match node.dht().find_node(to).await {
                    Ok(found) => {
                        node.add_peer_addr(&found.addr);
                        lock(&state.outbox).returned(&ids);
                        continue;
                    }
                    Err(_) => Err(Error::Unreachable(why)),
                }
            }
            other => other,
        };
        match sent {
            Ok(outcomes) if outcomes.len() == ids.len() => {
                let mut acked = Vec::new();
                let mut later = Vec::new();
                let mut refused = Vec::new();
                for (id, outcome) in ids.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Taken | Outcome::Seen => acked.push(*id),
                        Outcome::Later => later.push(*id),
                        Outcome::Refused(e) => refused.push((*id, e)),
                    }
                }
                state.acked(&to, &acked);
                for (id, why) in refused {
                    tracing::warn!(peer = %to.short(), %id, %why, "message refused by its recipient");
                    // Given up: acknowledged so it does not come again.
                    lock(&state.outbox).acked(&to, &id);
                    state.failed(&[id], why);
                }
                if !later.is_empty() {
                    // The recipient is up but its application is behind.
                    let mut out = lock(&state.outbox);
                    out.returned(&later);
                    out.later(&to, now_ms() + LATER.as_millis() as u64);
                    return;
                }
            }
            Ok(_) => {
                tracing::debug!(peer = %to.short(), "a delivery answered the wrong count");
                lock(&state.outbox).failed(&to, now_ms(), &mut rand::rng());
                return;
            }
            Err(e) => {
                tracing::debug!(peer = %to.short(), error = %e, "recipient not reached; to its mailbox");
                lock(&state.outbox).failed(&to, now_ms(), &mut rand::rng());
                store_in_mailbox(node, to).await;
                return;
            }
        }
    }
}

/// Seals what no holder took yet of `to`'s messages and stores it in
/// `to`'s mailbox (on its `replicas` closest nodes).
async fn store_in_mailbox(node: &Node, to: NodeId) {
    let state = node.messaging();
    let letters = lock(&state.outbox).unstored(&to);
    if letters.is_empty() {
        return;
    }
    let r = state.settings.replicas.max(1);
    let mut messages = 0;
    let holders: Vec<_> = node
        .index_holders(mailbox_key(&to), r, &mut messages)
        .await
        .into_iter()
        .filter(|h| h.id != to)
        .collect();
    let now = now_ms() / 1000;
    let ttl = (state.settings.outbox.ttl.as_secs()).clamp(1, MAX_TTL);
    let mut stored = 0;
    for letter in letters {
        let expires = (letter.sent_at_ms / 1000 + ttl).min(now + MAX_TTL);
        let env = match Envelope::seal(node.identity(), to, &letter, expires) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot seal a message");
                continue;
            }
        };
        let mut took = false;
        // The holder may be this node itself.
        if state.settings.serve && node.should_hold_mailbox(&to, &holders, r) {
            took |= lock(&state.mailbox).put_own(env.clone(), now).is_ok();
        }
        let puts = holders.iter().map(|h| put(node, h.clone(), &env));
        for reply in futures_util::future::join_all(puts).await {
            match reply {
                Ok(PutReply::Stored) => took = true,
                Ok(PutReply::Refused(why)) => {
                    tracing::debug!(%why, "a mailbox holder refused a message")
                }
                Err(e) => tracing::debug!(error = %e, "a mailbox put failed"),
            }
        }
        if took {
            stored += 1;
            lock(&state.outbox).stored(&to, &letter.id);
            state.changed();
        }
    }
    tracing::debug!(peer = %to.short(), stored, holders = holders.len(), "messages stored in a mailbox");
}

pub(super) async fn put(
    node: &Node,
    to: crate::addr::NodeAddr,
    env: &Envelope,
) -> Result<PutReply> {
    let timeout = node.dht_state().settings.query_timeout;
    tokio::time::timeout(
        timeout,
        node.call_typed::<_, PutReply>(Target::Addr(to), PUT_ROUTE, env),
    )
    .await
    .map_err(|_| Error::Timeout("a mailbox put"))?
}

impl Node {
    /// Whether this node is among the `r` closest to `owner`'s mailbox key
    /// of itself and `others`.
    pub(crate) fn should_hold_mailbox(
        &self,
        owner: &NodeId,
        others: &[crate::addr::NodeAddr],
        r: usize,
    ) -> bool {
        let ids: Vec<NodeId> = others.iter().map(|a| a.id).collect();
        crate::content::repair::should_hold(&self.id(), &mailbox_key(owner), &ids, r)
    }
}
