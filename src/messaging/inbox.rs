//! The recipient's side, plain data: each message is handed to the
//! application once (de-duplicated by id and by its place in the sender's
//! order) and in its sender's order per topic. A message that arrives
//! before an earlier one waits (bounded per stream and in all); the
//! sender's *floor* (its lowest message not yet acknowledged or given up
//! on) tells the inbox what it need not wait for any more.
//!
//! ```
//! use butter::messaging::inbox::{Inbox, InboxLimits};
//! use butter::messaging::envelope::Letter;
//! use butter::messaging::{MessageError, MessageId};
//! use butter::Identity;
//!
//! let alice = Identity::generate().id();
//! let letter = |seq| Letter { id: MessageId::random(), topic: "chat".into(), seq, floor: 1,
//!     epoch: 1, sent_at_ms: 0, body: vec![seq as u8] };
//! let mut inbox = Inbox::new(InboxLimits::default());
//! let (one, two) = (letter(1), letter(2));
//! assert!(inbox.accept(alice, two.clone()).unwrap().is_empty(), "waits for 1");
//! let out = inbox.accept(alice, one.clone()).unwrap();
//! assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
//! assert_eq!(inbox.accept(alice, one), Err(MessageError::Replayed));
//! ```

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::envelope::Letter;
use super::{check_topic, Message, MessageError, MessageId, MAX_BODY};
use crate::identity::NodeId;

/// Bounds of an inbox.
#[derive(Debug, Clone)]
pub struct InboxLimits {
    /// Messages waiting for an earlier one, per sender and topic.
    pub waiting_per_stream: usize,
    /// Messages waiting in all.
    pub waiting: usize,
    /// Bytes of bodies waiting for an earlier one, per sender and topic.
    pub waiting_bytes_per_stream: usize,
    /// Bytes of bodies waiting, in all.
    pub waiting_bytes: usize,
    /// Senders × topics whose order is remembered (the least recent is
    /// forgotten first).
    pub streams: usize,
    /// Ids remembered to refuse a second copy.
    pub ids: usize,
}

impl Default for InboxLimits {
    fn default() -> Self {
        InboxLimits {
            waiting_per_stream: 1024,
            waiting: 16_384,
            waiting_bytes_per_stream: 8 << 20,
            waiting_bytes: 64 << 20,
            streams: 16_384,
            ids: 100_000,
        }
    }
}

/// One sender's order on one topic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stream {
    /// The sender's epoch.
    pub epoch: u64,
    /// The next sequence number to hand over.
    pub next: u64,
    #[serde(skip)]
    waiting: BTreeMap<u64, Message>,
    #[serde(skip)]
    waiting_bytes: usize,
}

/// The recipient's state.
#[derive(Debug)]
pub struct Inbox {
    limits: InboxLimits,
    streams: LruCache<(NodeId, String), Stream>,
    ids: LruCache<MessageId, ()>,
    waiting: usize,
    waiting_bytes: usize,
}

impl Inbox {
    /// An empty inbox.
    pub fn new(limits: InboxLimits) -> Self {
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).expect("at least one");
        Inbox {
            streams: LruCache::new(cap(limits.streams)),
            ids: LruCache::new(cap(limits.ids)),
            limits,
            waiting: 0,
            waiting_bytes: 0,
        }
    }

    /// Messages waiting for an earlier one.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Takes `letter` from `from` (authenticated by the caller: the
    /// connection's peer, or an opened envelope's sender); returns the
    /// messages now ready for the application, in order (none when it
    /// waits for an earlier one). A message seen already is
    /// [`MessageError::Replayed`]; one that cannot wait (the bounds) is
    /// [`MessageError::OverQuota`], not taken (the sender tries again).
    pub fn accept(&mut self, from: NodeId, letter: Letter) -> Result<Vec<Message>, MessageError> {
        check_topic(&letter.topic)?;
        if letter.body.len() > MAX_BODY {
            return Err(MessageError::TooLarge("body".into()));
        }
        if letter.seq == 0 || letter.seq == u64::MAX {
            return Err(MessageError::Malformed(
                "sequence numbers run from 1 to 2^64 - 2".into(),
            ));
        }
        // The sender's floor is its lowest message not acknowledged: this
        // one is not, so the floor is at most its number.
        if letter.floor > letter.seq {
            return Err(MessageError::Malformed(
                "the floor is above the message's own number".into(),
            ));
        }
        if self.ids.contains(&letter.id) {
            return Err(MessageError::Replayed);
        }
        let key = (from, letter.topic.clone());
        if !self.streams.contains(&key) {
            if let Some((_, old)) = self.streams.push(
                key.clone(),
                Stream {
                    epoch: letter.epoch,
                    next: 1,
                    waiting: BTreeMap::new(),
                    waiting_bytes: 0,
                },
            ) {
                self.waiting -= old.waiting.len();
                self.waiting_bytes -= old.waiting_bytes;
            }
        }
        let stream = self.streams.get_mut(&key).expect("just put");
        let mut out = Vec::new();
        if letter.epoch < stream.epoch {
            return Err(MessageError::Replayed);
        }
        if letter.epoch > stream.epoch {
            // The sender started a new order (it lost its state): what
            // waited of the old one is handed over as it is.
            out.extend(std::mem::take(&mut stream.waiting).into_values());
            *stream = Stream {
                epoch: letter.epoch,
                next: 1,
                waiting: BTreeMap::new(),
                waiting_bytes: 0,
            };
        }
        if letter.seq < stream.next {
            return Err(MessageError::Replayed);
        }
        if stream.waiting.contains_key(&letter.seq) {
            return Err(MessageError::Replayed);
        }
        let msg = Message {
            from,
            id: letter.id,
            topic: letter.topic,
            seq: letter.seq,
            sent_at_ms: letter.sent_at_ms,
            body: letter.body.into(),
        };
        // What the sender no longer waits on, neither does the inbox.
        if letter.floor > stream.next {
            let later = stream.waiting.split_off(&letter.floor);
            out.extend(std::mem::replace(&mut stream.waiting, later).into_values());
            stream.next = letter.floor;
        }
        let id = msg.id;
        if msg.seq > stream.next {
            // Full, unless the floor just freed a place.
            let size = msg.body.len();
            if out.is_empty()
                && (stream.waiting.len() >= self.limits.waiting_per_stream
                    || self.waiting >= self.limits.waiting
                    || stream.waiting_bytes + size > self.limits.waiting_bytes_per_stream
                    || self.waiting_bytes + size > self.limits.waiting_bytes)
            {
                return Err(MessageError::OverQuota(
                    "too many messages wait for an earlier one".into(),
                ));
            }
            stream.waiting.insert(msg.seq, msg);
            stream.waiting_bytes += size;
            self.waiting += 1;
            self.waiting_bytes += size;
        } else {
            out.push(msg);
            stream.next += 1;
        }
        while let Some(m) = stream.waiting.remove(&stream.next) {
            stream.next += 1;
            out.push(m);
        }
        let (freed, freed_bytes) = out
            .iter()
            .filter(|m| m.id != id)
            .fold((0, 0), |(n, b), m| (n + 1, b + m.body.len()));
        self.waiting -= freed;
        self.waiting_bytes -= freed_bytes;
        stream.waiting_bytes = stream.waiting.values().map(|m| m.body.len()).sum();
        self.ids.put(id, ());
        Ok(out)
    }

    /// The order of every stream (for a snapshot; what waits is not kept).
    pub fn streams(&self) -> Vec<((NodeId, String), u64, u64)> {
        self.streams
            .iter()
            .map(|(k, s)| (k.clone(), s.epoch, s.next))
            .collect()
    }

    /// Takes back a stream's order from a snapshot.
    pub fn restore(&mut self, from: NodeId, topic: String, epoch: u64, next: u64) {
        self.streams.put(
            (from, topic),
            Stream {
                epoch,
                next,
                waiting: BTreeMap::new(),
                waiting_bytes: 0,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn letter(seq: u64, floor: u64, epoch: u64) -> Letter {
        Letter {
            id: MessageId::random(),
            topic: "t".into(),
            seq,
            floor,
            epoch,
            sent_at_ms: 0,
            body: seq.to_le_bytes().to_vec(),
        }
    }

    fn seqs(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn any_arrival_order_is_handed_over_in_order_once() {
        let from = Identity::generate().id();
        let letters: Vec<Letter> = (1..=50).map(|s| letter(s, 1, 1)).collect();
        let mut order: Vec<usize> = (0..50).collect();
        let mut rng = rand::rng();
        use rand::seq::SliceRandom;
        order.shuffle(&mut rng);
        let mut inbox = Inbox::new(InboxLimits::default());
        let mut out = Vec::new();
        for i in order.iter().chain(order.iter().take(10)) {
            match inbox.accept(from, letters[*i].clone()) {
                Ok(v) => out.extend(v),
                Err(e) => assert_eq!(e, MessageError::Replayed),
            }
        }
        assert_eq!(seqs(&out), (1..=50).collect::<Vec<_>>());
        assert_eq!(inbox.waiting(), 0);
    }

    #[test]
    fn topics_and_senders_are_ordered_apart() {
        let (a, b) = (Identity::generate().id(), Identity::generate().id());
        let mut inbox = Inbox::new(InboxLimits::default());
        assert_eq!(seqs(&inbox.accept(a, letter(1, 1, 1)).unwrap()), [1]);
        assert_eq!(seqs(&inbox.accept(b, letter(1, 1, 1)).unwrap()), [1]);
        let mut other = letter(1, 1, 1);
        other.topic = "u".into();
        assert_eq!(seqs(&inbox.accept(a, other).unwrap()), [1]);
    }

    #[test]
    fn the_floor_ends_a_wait_for_what_the_sender_gave_up() {
        let a = Identity::generate().id();
        let mut inbox = Inbox::new(InboxLimits::default());
        assert!(inbox.accept(a, letter(3, 1, 1)).unwrap().is_empty());
        // 1 and 2 expired at the sender: its floor is now 3... then 5.
        assert_eq!(seqs(&inbox.accept(a, letter(5, 3, 1)).unwrap()), [3]);
        assert_eq!(seqs(&inbox.accept(a, letter(7, 6, 1)).unwrap()), [5]);
        assert_eq!(inbox.waiting(), 1);
        assert_eq!(seqs(&inbox.accept(a, letter(6, 6, 1)).unwrap()), [6, 7]);
        assert_eq!(inbox.waiting(), 0);
    }

    #[test]
    fn numbers_at_the_end_of_the_range_or_a_floor_above_the_message_are_refused() {
        // Found by the fuzzer (CI): seq = floor = 2^64 - 1 overflowed the
        // next number expected.
        let a = Identity::generate().id();
        let mut inbox = Inbox::new(InboxLimits::default());
        for (seq, floor) in [(u64::MAX, u64::MAX), (u64::MAX, 1), (3, 4), (0, 0)] {
            assert!(
                matches!(
                    inbox.accept(a, letter(seq, floor, 1)),
                    Err(MessageError::Malformed(_))
                ),
                "seq {seq} floor {floor}"
            );
        }
        let last = u64::MAX - 1;
        assert_eq!(
            seqs(&inbox.accept(a, letter(last, last, 1)).unwrap()),
            [last]
        );
        assert!(matches!(
            inbox.accept(a, letter(last, last, 1)),
            Err(MessageError::Replayed)
        ));
    }

    #[test]
    fn waiting_is_bounded_and_what_does_not_fit_comes_again() {
        let a = Identity::generate().id();
        let limits = InboxLimits {
            waiting_per_stream: 3,
            ..Default::default()
        };
        let mut inbox = Inbox::new(limits);
        for s in 2..=4 {
            assert!(inbox.accept(a, letter(s, 1, 1)).unwrap().is_empty());
        }
        let five = letter(5, 1, 1);
        assert!(matches!(
            inbox.accept(a, five.clone()),
            Err(MessageError::OverQuota(_))
        ));
        assert_eq!(
            seqs(&inbox.accept(a, letter(1, 1, 1)).unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(seqs(&inbox.accept(a, five).unwrap()), [5], "not seen yet");
    }

    #[test]
    fn waiting_bytes_are_bounded_too() {
        let a = Identity::generate().id();
        let limits = InboxLimits {
            waiting_bytes_per_stream: 100,
            ..Default::default()
        };
        let mut inbox = Inbox::new(limits);
        let big = |seq| {
            let mut l = letter(seq, 1, 1);
            l.body = vec![0; 60];
            l
        };
        assert!(inbox.accept(a, big(2)).unwrap().is_empty());
        assert!(matches!(
            inbox.accept(a, big(3)),
            Err(MessageError::OverQuota(_))
        ));
        assert_eq!(seqs(&inbox.accept(a, big(1)).unwrap()), [1, 2]);
        assert!(inbox.accept(a, big(4)).unwrap().is_empty(), "room again");
    }

    #[test]
    fn many_identities_do_not_grow_it_without_bound() {
        let limits = InboxLimits {
            streams: 8,
            waiting: 8,
            ..Default::default()
        };
        let mut inbox = Inbox::new(limits);
        for _ in 0..100 {
            let _ = inbox.accept(Identity::generate().id(), letter(2, 1, 1));
        }
        assert!(inbox.waiting() <= 8);
        assert!(inbox.streams().len() <= 8);
    }

    #[test]
    fn a_new_epoch_restarts_the_order_and_an_old_one_is_refused() {
        let a = Identity::generate().id();
        let mut inbox = Inbox::new(InboxLimits::default());
        inbox.accept(a, letter(1, 1, 5)).unwrap();
        inbox.accept(a, letter(2, 1, 5)).unwrap();
        assert_eq!(seqs(&inbox.accept(a, letter(1, 1, 9)).unwrap()), [1]);
        assert_eq!(
            inbox.accept(a, letter(3, 1, 5)),
            Err(MessageError::Replayed)
        );
    }
}
