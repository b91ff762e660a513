//! The recipient's side of mailboxes: read its mailbox from the nodes
//! closest to its key (and itself, when it is one of them), open and check
//! each envelope, hand the letters over in order, acknowledge to each
//! holder what it took (the holder deletes it) and send each sender a
//! receipt.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{lock, now_ms};
use crate::addr::{NodeAddr, Target};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::messaging::envelope::Envelope;
use crate::messaging::messages::{
    mailbox_key, Fetch, Fetched, Outcome, Receipt, ACK_ROUTE, FETCH_ROUTE, MAX_IDS, RECEIPT_ROUTE,
};
use crate::messaging::MessageId;
use crate::node::Node;

/// Pages read from one holder in one drain, at most.
const MAX_PAGES: usize = 64;

/// What a drain of the mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Holders read.
    pub holders: usize,
    /// Envelopes read (copies from several holders counted each).
    pub read: usize,
    /// Messages taken (new to this node).
    pub taken: usize,
    /// Envelopes refused (not signed by their sender, unreadable...).
    pub refused: usize,
}

impl Node {
    /// Reads this node's mailbox now (it is also read periodically, see
    /// [`MessagingSettings::drain_interval`](super::MessagingSettings)),
    /// hands what it holds to the topics' subscribers, and lets the
    /// holders and senders know.
    pub async fn drain_mailbox(&self) -> Result<Drained> {
        let state = self.messaging();
        let me = self.id();
        let r = state.settings.replicas.max(1);
        let mut messages = 0;
        let holders: Vec<NodeAddr> = self
            .index_holders(mailbox_key(&me), r + 1, &mut messages)
            .await;
        let mut report = Drained::default();
        let mut receipts: HashMap<NodeId, Vec<MessageId>> = HashMap::new();
        // What this node holds of its own mailbox (it is among its closest).
        let own = lock(&state.mailbox).all(&me);
        if !own.is_empty() {
            let ids = self.open_all(own, &mut report, &mut receipts);
            lock(&state.mailbox).ack(&me, &ids, now_ms() / 1000);
        }
        let reads = holders
            .into_iter()
            .filter(|h| h.id != me)
            .map(|h| self.drain_holder(h));
        for (read, taken, refused, from) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
        {
            report.holders += 1;
            report.read += read;
            report.taken += taken;
            report.refused += refused;
            for (sender, ids) in from {
                receipts.entry(sender).or_default().extend(ids);
            }
        }
        for (sender, mut ids) in receipts {
            ids.sort();
            ids.dedup();
            let node = self.clone();
            // Best effort: the sender also tries again directly.
            self.shared().tasks.spawn(async move {
                for chunk in ids.chunks(MAX_IDS) {
                    let receipt = Receipt {
                        ids: chunk.to_vec(),
                    };
                    let sent = tokio::time::timeout(
                        node.shared().limits.call_timeout,
                        node.call_typed::<_, ()>(sender, RECEIPT_ROUTE, &receipt),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        tracing::debug!(peer = %sender.short(), "receipt not sent");
                        return;
                    }
                }
            });
        }
        if report.taken > 0 {
            tracing::debug!(?report, "mailbox drained");
        }
        Ok(report)
    }

    /// Counts what became of letters this node took as their recipient.
    pub(super) fn count_outcomes(&self, outcomes: &[Outcome]) {
        let stats = self.counters();
        for o in outcomes {
            match o {
                Outcome::Taken => stats.messages_received.fetch_add(1, Ordering::Relaxed),
                Outcome::Refused(_) => stats.messages_refused.fetch_add(1, Ordering::Relaxed),
                Outcome::Seen | Outcome::Later => 0,
            };
        }
    }

    /// Opens `envs` and takes their letters; returns the ids to
    /// acknowledge to their holder (taken, seen, or refused for good).
    fn open_all(
        &self,
        envs: Vec<Envelope>,
        report: &mut Drained,
        receipts: &mut HashMap<NodeId, Vec<MessageId>>,
    ) -> Vec<MessageId> {
        let state = self.messaging();
        let now = now_ms() / 1000;
        let mut ack = Vec::new();
        // In each sender's order, whatever order the holder kept.
        let mut opened = Vec::new();
        for env in envs {
            report.read += 1;
            match env.open(self.identity(), now) {
                Ok(letter) => opened.push((env.from, env.id, letter)),
                Err(why) => {
                    tracing::debug!(from = %env.from.short(), %why, "mailbox envelope refused");
                    report.refused += 1;
                    ack.push(env.id);
                }
            }
        }
        let refused_envelopes = ack.len() as u64;
        self.counters()
            .messages_refused
            .fetch_add(refused_envelopes, Ordering::Relaxed);
        opened.sort_by(|a, b| {
            (a.0, &a.2.topic, a.2.epoch, a.2.seq).cmp(&(b.0, &b.2.topic, b.2.epoch, b.2.seq))
        });
        for (from, id, letter) in opened {
            let outcome = state.take(from, letter);
            self.count_outcomes(std::slice::from_ref(&outcome));
            match outcome {
                Outcome::Taken => {
                    report.taken += 1;
                    ack.push(id);
                    receipts.entry(from).or_default().push(id);
                }
                Outcome::Seen => {
                    ack.push(id);
                    receipts.entry(from).or_default().push(id);
                }
                Outcome::Later => {}
                Outcome::Refused(why) => {
                    tracing::debug!(from = %from.short(), %why, "mailbox message refused");
                    report.refused += 1;
                    ack.push(id);
                }
            }
        }
        ack
    }

    /// Reads one holder's pages of this node's mailbox and acknowledges
    /// each page's taken messages: (read, taken, refused, receipts).
    #[allow(clippy::type_complexity)]
    async fn drain_holder(
        &self,
        holder: NodeAddr,
    ) -> Option<(usize, usize, usize, HashMap<NodeId, Vec<MessageId>>)> {
        let timeout = self.shared().limits.call_timeout;
        let mut after = None;
        let mut report = Drained::default();
        let mut receipts = HashMap::new();
        for _ in 0..MAX_PAGES {
            let fetched = tokio::time::timeout(
                timeout,
                self.call_typed::<_, Fetched>(
                    Target::Addr(holder.clone()),
                    FETCH_ROUTE,
                    &Fetch { after },
                ),
            )
            .await
            .map_err(|_| Error::Timeout("a mailbox read"))
            .and_then(|r| r);
            let (envelopes, more) = match fetched {
                Ok(Fetched::Page { envelopes, more }) => (envelopes, more),
                Ok(Fetched::Refused(why)) => {
                    tracing::debug!(holder = %holder.id.short(), %why, "mailbox read refused");
                    break;
                }
                Err(e) => {
                    tracing::debug!(holder = %holder.id.short(), error = %e, "mailbox read failed");
                    break;
                }
            };
            // Only what is addressed to this node counts.
            let me = self.id();
            let (mine, strays): (Vec<_>, Vec<_>) = envelopes.into_iter().partition(|e| e.to == me);
            report.refused += strays.len();
            self.counters()
                .messages_refused
                .fetch_add(strays.len() as u64, Ordering::Relaxed);
            after = mine.last().map(|e| e.id).or(after);
            let ack = self.open_all(mine, &mut report, &mut receipts);
            for chunk in ack.chunks(MAX_IDS) {
                let sent = tokio::time::timeout(
                    timeout,
                    self.call_typed::<_, u32>(
                        Target::Addr(holder.clone()),
                        ACK_ROUTE,
                        &Receipt {
                            ids: chunk.to_vec(),
                        },
                    ),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    tracing::debug!(holder = %holder.id.short(), "mailbox acknowledgement failed");
                }
            }
            if !more {
                break;
            }
        }
        Some((report.read, report.taken, report.refused, receipts))
    }
}
