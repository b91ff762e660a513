//! Messaging survives a restart: the sender's waiting messages and
//! sequence numbers, the recipient's order per sender, and the mailboxes
//! held for others are kept as one snapshot in the node's store (like the
//! DHT's: a few seconds after a change, and on shutdown) and taken back
//! when the node starts (envelopes verified and bounded again).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{lock, now_ms, MessagingState};
use crate::identity::NodeId;
use crate::messaging::envelope::Envelope;
use crate::messaging::outbox::Pending;
use crate::messaging::MessageId;
use crate::store::Store;
use crate::tasks::Tasks;

/// Name of the snapshot in the store.
const NAME: &str = "messaging";

#[derive(Serialize, Deserialize)]
struct Waiting {
    to: NodeId,
    id: MessageId,
    topic: String,
    seq: u64,
    sent_at_ms: u64,
    body: Vec<u8>,
    stored: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct Snapshot {
    epoch: u64,
    waiting: Vec<Waiting>,
    seqs: Vec<(NodeId, String, u64)>,
    streams: Vec<(NodeId, String, u64, u64)>,
    held: Vec<(Envelope, Option<IpAddr>)>,
    acked: Vec<(MessageId, u64)>,
}

fn snapshot(state: &MessagingState) -> Snapshot {
    let (epoch, (pending, seqs)) = {
        let out = lock(&state.outbox);
        (out.epoch(), out.snapshot())
    };
    let (held, acked) = lock(&state.mailbox).held();
    Snapshot {
        epoch,
        waiting: pending
            .into_iter()
            .map(|(to, p)| Waiting {
                to,
                id: p.id,
                topic: p.topic,
                seq: p.seq,
                sent_at_ms: p.sent_at_ms,
                body: p.body.to_vec(),
                stored: p.stored,
            })
            .collect(),
        seqs,
        streams: lock(&state.inbox)
            .streams()
            .into_iter()
            .map(|((from, topic), epoch, next)| (from, topic, epoch, next))
            .collect(),
        held,
        acked,
    }
}

fn save(state: &MessagingState, store: &Store) {
    crate::node::dht::persist::save_if_dirty(&state.dirty, store, NAME, || snapshot(state));
}

/// Takes back what the last snapshot held: (messages waiting, envelopes
/// held for others).
pub(crate) fn restore(state: &mut MessagingState, store: &Store) -> (usize, usize) {
    let bytes = match store.get_state(NAME) {
        Ok(Some(b)) => b,
        Ok(None) => return (0, 0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the messaging snapshot");
            return (0, 0);
        }
    };
    let snap: Snapshot = match postcard::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "the messaging snapshot is unreadable: starting empty");
            return (0, 0);
        }
    };
    let now = now_ms() / 1000;
    *state.outbox.get_mut().unwrap_or_else(|p| p.into_inner()) =
        crate::messaging::outbox::Outbox::new(state.settings.outbox.clone(), snap.epoch.max(1));
    let mut waiting = 0;
    {
        let mut out = lock(&state.outbox);
        for (to, topic, next) in snap.seqs {
            out.restore_seq(to, topic, next);
        }
        for w in snap.waiting {
            let p = Pending {
                id: w.id,
                topic: w.topic,
                seq: w.seq,
                sent_at_ms: w.sent_at_ms,
                body: Bytes::from(w.body),
                stored: w.stored,
                in_flight: false,
            };
            waiting += usize::from(out.restore_pending(w.to, p));
        }
    }
    {
        let mut inbox = lock(&state.inbox);
        for (from, topic, epoch, next) in snap.streams {
            inbox.restore(from, topic, epoch, next);
        }
    }
    let mut held = 0;
    {
        let mut mailbox = lock(&state.mailbox);
        for (id, until) in snap.acked {
            mailbox.restore_acked(id, until, now);
        }
        for (env, source) in snap.held {
            held += usize::from(mailbox.restore(env, source, now).is_ok());
        }
    }
    state.changed();
    (waiting, held)
}

/// Keeps the snapshot current until shutdown, then writes it a last time.
pub(crate) fn keep(tasks: &Tasks, state: Arc<MessagingState>, store: Arc<Store>) {
    crate::node::dht::persist::keep_with(tasks, state, store, save);
}
