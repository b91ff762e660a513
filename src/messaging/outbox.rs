//! The sender's side, plain data (times are milliseconds the caller
//! passes): sequence numbers per recipient and topic, the messages waiting
//! for their acknowledgement (bounded), which of them are stored in the
//! recipient's mailbox already, and when to try a recipient again
//! ([`Backoff`] per recipient).
//!
//! ```
//! use butter::messaging::outbox::{Outbox, OutboxLimits};
//! use butter::Identity;
//!
//! let bob = Identity::generate().id();
//! let mut out = Outbox::new(OutboxLimits::default(), 1);
//! let now = 1_000;
//! let (id, seq) = out.send(bob, "chat", b"hi".to_vec().into(), now).unwrap();
//! assert_eq!(seq, 1);
//! let batch = out.take_batch(&bob, 64, 1 << 20);
//! assert_eq!(batch[0].id, id);
//! assert!(out.acked(&bob, &id));
//! assert!(out.is_empty());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use super::envelope::Letter;
use super::{check_topic, MessageError, MessageId, MAX_BODY};
use crate::backoff::Backoff;
use crate::identity::NodeId;

/// Bounds and timing of an outbox.
#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Messages waiting for their acknowledgement, in all.
    pub max_pending: usize,
    /// Their bytes, in all.
    pub max_pending_bytes: usize,
    /// How long a message is tried (and kept in a mailbox) before it is
    /// given up.
    pub ttl: Duration,
    /// First wait before a recipient that could not be reached is tried
    /// again.
    pub retry_first: Duration,
    /// Longest such wait.
    pub retry_max: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_pending: 100_000,
            max_pending_bytes: 256 << 20,
            ttl: Duration::from_secs(7 * 24 * 3600),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// A message waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its id.
    pub id: MessageId,
    /// Its topic.
    pub topic: String,
    /// Its place in the order.
    pub seq: u64,
    /// When it was sent (ms).
    pub sent_at_ms: u64,
    /// Its body.
    pub body: Bytes,
    /// Whether a mailbox holder took it.
    pub stored: bool,
    /// Whether it is on its way now (in a batch not answered yet).
    pub in_flight: bool,
}

/// One recipient's messages and retry schedule.
#[derive(Debug)]
struct Peer {
    /// Next sequence number per topic.
    next_seq: HashMap<String, u64>,
    /// Waiting messages by (topic, seq).
    pending: BTreeMap<(String, u64), Pending>,
    /// How many of them are on their way.
    in_flight: usize,
    backoff: Backoff,
    /// When it may be tried again (ms); 0: now.
    retry_at: u64,
}

/// The sender's state.
#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    epoch: u64,
    peers: HashMap<NodeId, Peer>,
    ids: HashMap<MessageId, (NodeId, String, u64)>,
    bytes: usize,
}

impl Outbox {
    /// An empty outbox whose order starts at `epoch` (a time in ms, so a
    /// later outbox of the same sender orders after it).
    pub fn new(limits: OutboxLimits, epoch: u64) -> Self {
        Outbox {
            limits,
            epoch,
            peers: HashMap::new(),
            ids: HashMap::new(),
            bytes: 0,
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether message `id` waits for its acknowledgement.
    pub fn is_pending(&self, id: &MessageId) -> bool {
        self.ids.contains_key(id)
    }

    fn peer(&mut self, to: NodeId) -> &mut Peer {
        let limits = &self.limits;
        self.peers.entry(to).or_insert_with(|| Peer {
            next_seq: HashMap::new(),
            pending: BTreeMap::new(),
            in_flight: 0,
            backoff: Backoff::new(limits.retry_first, limits.retry_max),
            retry_at: 0,
        })
    }

    /// Queues `body` for `to` on `topic`; returns its id and place.
    pub fn send(
        &mut self,
        to: NodeId,
        topic: &str,
        body: Bytes,
        now_ms: u64,
    ) -> Result<(MessageId, u64), MessageError> {
        check_topic(topic)?;
        if body.len() > MAX_BODY {
            return Err(MessageError::TooLarge(format!(
                "body of {} bytes (at most {MAX_BODY})",
                body.len()
            )));
        }
        if self.ids.len() >= self.limits.max_pending
            || self.bytes + body.len() > self.limits.max_pending_bytes
        {
            return Err(MessageError::OverQuota(
                "too many messages wait for their acknowledgement".into(),
            ));
        }
        let id = MessageId::random();
        self.bytes += body.len();
        let peer = self.peer(to);
        let seq = peer.next_seq.entry(topic.to_string()).or_insert(1);
        let this = *seq;
        *seq += 1;
        peer.pending.insert(
            (topic.to_string(), this),
            Pending {
                id,
                topic: topic.to_string(),
                seq: this,
                sent_at_ms: now_ms,
                body,
                stored: false,
                in_flight: false,
            },
        );
        self.ids.insert(id, (to, topic.to_string(), this));
        Ok((id, this))
    }

    /// Whether message `id` waits and a mailbox holder took it.
    pub fn is_stored(&self, id: &MessageId) -> bool {
        self.ids.get(id).is_some_and(|(to, topic, seq)| {
            self.peers
                .get(to)
                .and_then(|p| p.pending.get(&(topic.clone(), *seq)))
                .is_some_and(|p| p.stored)
        })
    }

    /// The lowest sequence number still waiting for `to` on `topic` (the
    /// next one when none waits).
    pub fn floor(&self, to: &NodeId, topic: &str) -> u64 {
        let Some(peer) = self.peers.get(to) else {
            return 1;
        };
        peer.pending
            .range((topic.to_string(), 0)..=(topic.to_string(), u64::MAX))
            .next()
            .map(|((_, s), _)| *s)
            .unwrap_or_else(|| peer.next_seq.get(topic).copied().unwrap_or(1))
    }

    fn letter(&self, to: &NodeId, p: &Pending) -> Letter {
        Letter {
            id: p.id,
            topic: p.topic.clone(),
            seq: p.seq,
            floor: self.floor(to, &p.topic),
            epoch: self.epoch,
            sent_at_ms: p.sent_at_ms,
            body: p.body.to_vec(),
        }
    }

    /// The next messages for `to` not on their way already (in order, at
    /// most `max` of them and about `max_bytes`), now marked on their way.
    pub fn take_batch(&mut self, to: &NodeId, max: usize, max_bytes: usize) -> Vec<Letter> {
        let Some(peer) = self.peers.get(to) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        let mut bytes = 0;
        for (k, p) in &peer.pending {
            if p.in_flight {
                continue;
            }
            if keys.len() >= max || (!keys.is_empty() && bytes + p.body.len() > max_bytes) {
                break;
            }
            bytes += p.body.len();
            keys.push(k.clone());
        }
        let letters: Vec<Letter> = keys
            .iter()
            .map(|k| self.letter(to, &peer.pending[k]))
            .collect();
        let peer = self.peers.get_mut(to).expect("looked up");
        for k in keys {
            if let Some(p) = peer.pending.get_mut(&k) {
                p.in_flight = true;
                peer.in_flight += 1;
            }
        }
        letters
    }

    /// `to`'s messages no mailbox holder took yet (to seal and store).
    pub fn unstored(&self, to: &NodeId) -> Vec<Letter> {
        self.peers.get(to).map_or_else(Vec::new, |peer| {
            peer.pending
                .values()
                .filter(|p| !p.stored)
                .map(|p| self.letter(to, p))
                .collect()
        })
    }

    /// Marks message `id` to `to` as taken by a mailbox holder.
    pub fn stored(&mut self, to: &NodeId, id: &MessageId) {
        if let Some((peer_id, topic, seq)) = self.ids.get(id).cloned() {
            if peer_id == *to {
                if let Some(p) = self
                    .peers
                    .get_mut(to)
                    .and_then(|peer| peer.pending.get_mut(&(topic, seq)))
                {
                    p.stored = true;
                }
            }
        }
    }

    /// Message `id` was acknowledged by `by`; false when it does not wait
    /// (or was sent to another node).
    pub fn acked(&mut self, by: &NodeId, id: &MessageId) -> bool {
        let Some((to, topic, seq)) = self.ids.get(id).cloned() else {
            return false;
        };
        if to != *by {
            return false;
        }
        self.ids.remove(id);
        if let Some(peer) = self.peers.get_mut(&to) {
            if let Some(p) = peer.pending.remove(&(topic, seq)) {
                self.bytes -= p.body.len();
                peer.in_flight -= usize::from(p.in_flight);
            }
            peer.backoff.reset();
            peer.retry_at = 0;
        }
        true
    }

    /// A batch to `to` came back unanswered: its messages may go again,
    /// after the recipient's next backoff.
    pub fn failed<R: Rng + ?Sized>(&mut self, to: &NodeId, now_ms: u64, rng: &mut R) {
        if let Some(peer) = self.peers.get_mut(to) {
            for p in peer.pending.values_mut() {
                p.in_flight = false;
            }
            peer.in_flight = 0;
            let wait = peer.backoff.next(rng);
            peer.retry_at = now_ms + wait.as_millis() as u64;
        }
    }

    /// `to` answered "not now" (its application is behind): try it again
    /// at `at_ms`, without counting a failure.
    pub fn later(&mut self, to: &NodeId, at_ms: u64) {
        if let Some(peer) = self.peers.get_mut(to) {
            peer.retry_at = peer.retry_at.max(at_ms);
        }
    }

    /// Messages of a batch answered "not now" (`ids`) may go again later.
    pub fn returned(&mut self, ids: &[MessageId]) {
        for id in ids {
            if let Some((to, topic, seq)) = self.ids.get(id).cloned() {
                if let Some(peer) = self.peers.get_mut(&to) {
                    if let Some(p) = peer.pending.get_mut(&(topic, seq)) {
                        if p.in_flight {
                            p.in_flight = false;
                            peer.in_flight -= 1;
                        }
                    }
                }
            }
        }
    }

    /// Recipients with messages not on their way whose retry time has come
    /// at `now_ms`.
    pub fn due(&self, now_ms: u64) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.retry_at <= now_ms && p.pending.len() > p.in_flight)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The earliest retry time of a recipient with messages waiting.
    pub fn next_retry(&self) -> Option<u64> {
        self.peers
            .values()
            .filter(|p| !p.pending.is_empty())
            .map(|p| p.retry_at)
            .min()
    }

    /// Gives up the messages older than the time to live at `now_ms`;
    /// returns their ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<MessageId> {
        let ttl = self.limits.ttl.as_millis() as u64;
        let mut gone = Vec::new();
        for peer in self.peers.values_mut() {
            peer.pending.retain(|_, p| {
                let keep = p.in_flight || p.sent_at_ms + ttl > now_ms;
                if !keep {
                    gone.push(p.id);
                    self.bytes -= p.body.len();
                }
                keep
            });
        }
        for id in &gone {
            self.ids.remove(id);
        }
        gone
    }

    /// Everything waiting, for a snapshot: (recipient, message) pairs and
    /// the next sequence numbers.
    #[allow(clippy::type_complexity)]
    pub fn snapshot(&self) -> (Vec<(NodeId, Pending)>, Vec<(NodeId, String, u64)>) {
        let mut pending = Vec::new();
        let mut seqs = Vec::new();
        for (to, peer) in &self.peers {
            for p in peer.pending.values() {
                pending.push((*to, p.clone()));
            }
            for (topic, next) in &peer.next_seq {
                seqs.push((*to, topic.clone(), *next));
            }
        }
        (pending, seqs)
    }

    /// Takes back a snapshot's next sequence number.
    pub fn restore_seq(&mut self, to: NodeId, topic: String, next: u64) {
        let peer = self.peer(to);
        let seq = peer.next_seq.entry(topic).or_insert(1);
        *seq = (*seq).max(next);
    }

    /// Takes back a snapshot's waiting message (bounded again).
    pub fn restore_pending(&mut self, to: NodeId, mut p: Pending) -> bool {
        if self.ids.len() >= self.limits.max_pending
            || self.bytes + p.body.len() > self.limits.max_pending_bytes
            || self.ids.contains_key(&p.id)
        {
            return false;
        }
        p.in_flight = false;
        self.bytes += p.body.len();
        self.ids.insert(p.id, (to, p.topic.clone(), p.seq));
        let peer = self.peer(to);
        let next = peer.next_seq.entry(p.topic.clone()).or_insert(1);
        *next = (*next).max(p.seq + 1);
        peer.pending.insert((p.topic.clone(), p.seq), p);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn sequence_numbers_count_per_recipient_and_topic() {
        let (a, b) = (Identity::generate().id(), Identity::generate().id());
        let mut out = Outbox::new(OutboxLimits::default(), 1);
        assert_eq!(out.send(a, "x", Bytes::new(), 0).unwrap().1, 1);
        assert_eq!(out.send(a, "x", Bytes::new(), 0).unwrap().1, 2);
        assert_eq!(out.send(a, "y", Bytes::new(), 0).unwrap().1, 1);
        assert_eq!(out.send(b, "x", Bytes::new(), 0).unwrap().1, 1);
        assert_eq!(out.floor(&a, "x"), 1);
    }

    #[test]
    fn the_floor_follows_acknowledgements_and_expiry() {
        let a = Identity::generate().id();
        let limits = OutboxLimits {
            ttl: Duration::from_secs(10),
            ..Default::default()
        };
        let mut out = Outbox::new(limits, 1);
        let ids: Vec<MessageId> = (0..4)
            .map(|i| out.send(a, "x", Bytes::new(), i * 5_000).unwrap().0)
            .collect();
        assert!(out.acked(&a, &ids[1]));
        assert_eq!(out.floor(&a, "x"), 1, "1 still waits");
        assert_eq!(out.expire(12_000), vec![ids[0]]);
        assert_eq!(out.floor(&a, "x"), 3);
        assert!(out.acked(&a, &ids[2]) && out.acked(&a, &ids[3]));
        assert_eq!(out.floor(&a, "x"), 5, "none waits: the next");
    }

    #[test]
    fn only_the_recipient_acknowledges() {
        let (a, eve) = (Identity::generate().id(), Identity::generate().id());
        let mut out = Outbox::new(OutboxLimits::default(), 1);
        let (id, _) = out.send(a, "x", Bytes::new(), 0).unwrap();
        assert!(!out.acked(&eve, &id));
        assert!(out.is_pending(&id));
    }

    #[test]
    fn batches_do_not_repeat_what_is_on_its_way_and_failures_back_off() {
        let a = Identity::generate().id();
        let mut out = Outbox::new(OutboxLimits::default(), 1);
        for _ in 0..5 {
            out.send(a, "x", Bytes::from_static(b"abc"), 0).unwrap();
        }
        let first = out.take_batch(&a, 3, 1 << 20);
        assert_eq!(first.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let second = out.take_batch(&a, 3, 1 << 20);
        assert_eq!(second.iter().map(|l| l.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(out.due(0).is_empty(), "all on their way");
        out.failed(&a, 1_000, &mut rand::rng());
        assert!(out.due(1_000).is_empty(), "backs off");
        assert_eq!(out.due(10_000), vec![a]);
        assert_eq!(out.unstored(&a).len(), 5);
        // "Not now" is no failure: a short wait, the backoff untouched.
        let again = out.take_batch(&a, 5, 1 << 20);
        out.returned(&again.iter().map(|l| l.id).collect::<Vec<_>>());
        out.later(&a, 12_000);
        assert!(out.due(11_999).is_empty());
        assert_eq!(out.due(12_000), vec![a]);
        out.stored(&a, &first[0].id);
        assert_eq!(out.unstored(&a).len(), 4);
    }

    #[test]
    fn it_is_bounded() {
        let a = Identity::generate().id();
        let limits = OutboxLimits {
            max_pending: 2,
            ..Default::default()
        };
        let mut out = Outbox::new(limits, 1);
        out.send(a, "x", Bytes::new(), 0).unwrap();
        out.send(a, "x", Bytes::new(), 0).unwrap();
        assert!(matches!(
            out.send(a, "x", Bytes::new(), 0),
            Err(MessageError::OverQuota(_))
        ));
        assert!(matches!(
            out.send(a, "x", vec![0; MAX_BODY + 1].into(), 0),
            Err(MessageError::TooLarge(_))
        ));
    }
}
