//! The envelopes a node holds for recipients that were offline, plain data
//! (no sockets, no clock): bounded per mailbox (messages and bytes), per
//! sender within a mailbox, per source address and prefix, and in all.
//! Only envelopes their sender signed are taken; a mailbox is read and
//! emptied by its owner only (the caller checks who asks); an acknowledged
//! id is remembered until its envelope would have expired, so a replay of
//! it is refused.
//!
//! A full mailbox makes room for a sender holding fewer messages by
//! dropping the newest of the sender holding the most: one sender's flood
//! cannot keep the others out.
//!
//! ```
//! use butter::messaging::envelope::{Envelope, Letter};
//! use butter::messaging::mailbox::{MailboxLimits, MailboxStore, Put};
//! use butter::messaging::{MessageError, MessageId};
//! use butter::Identity;
//!
//! let now = 1_800_000_000;
//! let (alice, bob) = (Identity::generate(), Identity::generate());
//! let letter = Letter { id: MessageId::random(), topic: "t".into(), seq: 1, floor: 1,
//!     epoch: 1, sent_at_ms: 0, body: b"hi".to_vec() };
//! let e = Envelope::seal(&alice, bob.id(), &letter, now + 600).unwrap();
//! let mut store = MailboxStore::new(MailboxLimits::default());
//! let from = "192.0.2.1".parse().unwrap();
//! assert_eq!(store.put(e.clone(), from, now), Ok(Put::Stored));
//! assert_eq!(store.list(&bob.id(), None, 1 << 20).0, vec![e.clone()]);
//! assert_eq!(store.ack(&bob.id(), &[e.id], now), 1);
//! assert_eq!(store.put(e, from, now), Err(MessageError::Replayed));
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use super::envelope::Envelope;
use super::{MessageError, MessageId};
use crate::identity::NodeId;
use crate::source::SourceCounts;

/// Bounds of a mailbox store.
#[derive(Debug, Clone)]
pub struct MailboxLimits {
    /// Messages in one mailbox.
    pub per_mailbox: usize,
    /// Bytes in one mailbox.
    pub per_mailbox_bytes: usize,
    /// Messages of one sender in one mailbox.
    pub per_sender: usize,
    /// Bytes of one sender in one mailbox.
    pub per_sender_bytes: usize,
    /// Messages sent from one source address, in all mailboxes (twice that
    /// per /24 or /64).
    pub per_source: usize,
    /// Messages in all.
    pub max_messages: usize,
    /// Bytes in all.
    pub max_bytes: usize,
    /// Acknowledged ids remembered (the oldest are forgotten first).
    pub max_acked: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            per_mailbox: 4096,
            per_mailbox_bytes: 32 << 20,
            per_sender: 1024,
            per_sender_bytes: 8 << 20,
            per_source: 8192,
            max_messages: 100_000,
            max_bytes: 256 << 20,
            max_acked: 200_000,
        }
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored.
    Stored,
    /// Held already (a retry or a repair): nothing changed.
    Held,
}

#[derive(Debug, Clone)]
struct Held {
    env: Envelope,
    source: Option<IpAddr>,
}

#[derive(Debug, Default)]
struct Mailbox {
    held: Vec<Held>,
    bytes: usize,
}

impl Mailbox {
    fn of_sender(&self, from: &NodeId) -> (usize, usize) {
        self.held
            .iter()
            .filter(|h| h.env.from == *from)
            .fold((0, 0), |(n, b), h| (n + 1, b + h.env.size()))
    }

    /// The sender holding the most messages here, with its count.
    fn largest_sender(&self) -> Option<(NodeId, usize)> {
        let mut counts: HashMap<NodeId, usize> = HashMap::new();
        for h in &self.held {
            *counts.entry(h.env.from).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(id, n)| (*n, *id))
    }
}

/// Envelopes held for others.
#[derive(Debug)]
pub struct MailboxStore {
    limits: MailboxLimits,
    boxes: HashMap<NodeId, Mailbox>,
    messages: usize,
    bytes: usize,
    per_source: SourceCounts,
    /// Acknowledged ids, until when they are remembered.
    acked: HashMap<MessageId, u64>,
    acked_order: VecDeque<MessageId>,
}

impl MailboxStore {
    /// An empty store.
    pub fn new(limits: MailboxLimits) -> Self {
        MailboxStore {
            per_source: SourceCounts::new(
                limits.per_source as u64,
                limits.per_source as u64 * 2,
                limits.max_messages.max(1),
            ),
            limits,
            boxes: HashMap::new(),
            messages: 0,
            bytes: 0,
            acked: HashMap::new(),
            acked_order: VecDeque::new(),
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.messages
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held for `owner`.
    pub fn count(&self, owner: &NodeId) -> usize {
        self.boxes.get(owner).map_or(0, |b| b.held.len())
    }

    /// Stores `env` (verified here), sent from `source`.
    pub fn put(&mut self, env: Envelope, source: IpAddr, now: u64) -> Result<Put, MessageError> {
        self.put_from(env, Some(source), now)
    }

    /// [`put`](Self::put) of an envelope this node sealed itself (no
    /// source's share).
    pub fn put_own(&mut self, env: Envelope, now: u64) -> Result<Put, MessageError> {
        self.put_from(env, None, now)
    }

    fn put_from(
        &mut self,
        env: Envelope,
        source: Option<IpAddr>,
        now: u64,
    ) -> Result<Put, MessageError> {
        env.verify(now)?;
        if self.acked.get(&env.id).is_some_and(|until| *until > now) {
            return Err(MessageError::Replayed);
        }
        let size = env.size();
        if let Some(b) = self.boxes.get(&env.to) {
            if b.held.iter().any(|h| h.env.id == env.id) {
                return Ok(Put::Held);
            }
            let (n, bytes) = b.of_sender(&env.from);
            if n >= self.limits.per_sender || bytes + size > self.limits.per_sender_bytes {
                return Err(MessageError::OverQuota(
                    "the sender's share of this mailbox is used up".into(),
                ));
            }
        }
        if self.messages >= self.limits.max_messages || self.bytes + size > self.limits.max_bytes {
            self.expire(now);
            if self.messages >= self.limits.max_messages
                || self.bytes + size > self.limits.max_bytes
            {
                return Err(MessageError::OverQuota("the holder's store is full".into()));
            }
        }
        if let Some(ip) = source {
            if !self.per_source.try_add(ip, 1) {
                return Err(MessageError::OverQuota(
                    "the source address's share of this holder is used up".into(),
                ));
            }
        }
        if let Err(e) = self.make_room(&env, size) {
            if let Some(ip) = source {
                self.per_source.remove(ip, 1);
            }
            return Err(e);
        }
        let b = self.boxes.entry(env.to).or_default();
        b.bytes += size;
        b.held.push(Held { env, source });
        self.messages += 1;
        self.bytes += size;
        Ok(Put::Stored)
    }

    /// Makes room in `env`'s mailbox when it is full, by dropping the newest
    /// message of the sender holding the most, if that sender holds more
    /// than `env`'s would after it is stored.
    fn make_room(&mut self, env: &Envelope, size: usize) -> Result<(), MessageError> {
        loop {
            let Some(b) = self.boxes.get(&env.to) else {
                return Ok(());
            };
            if b.held.len() < self.limits.per_mailbox
                && b.bytes + size <= self.limits.per_mailbox_bytes
            {
                return Ok(());
            }
            let mine = b.of_sender(&env.from).0 + 1;
            match b.largest_sender() {
                Some((top, n)) if top != env.from && n > mine => {
                    let i = b
                        .held
                        .iter()
                        .rposition(|h| h.env.from == top)
                        .expect("the largest sender holds one");
                    self.remove_at(&env.to, i);
                }
                _ => return Err(MessageError::OverQuota("the mailbox is full".into())),
            }
        }
    }

    fn remove_at(&mut self, owner: &NodeId, i: usize) -> Option<Envelope> {
        let b = self.boxes.get_mut(owner)?;
        let h = b.held.remove(i);
        let size = h.env.size();
        b.bytes -= size;
        if b.held.is_empty() {
            self.boxes.remove(owner);
        }
        self.messages -= 1;
        self.bytes -= size;
        if let Some(ip) = h.source {
            self.per_source.remove(ip, 1);
        }
        Some(h.env)
    }

    /// `owner`'s envelopes in the order they came, after the one with id
    /// `after` (from the first without), up to about `max_bytes`; and
    /// whether more follow.
    pub fn list(
        &self,
        owner: &NodeId,
        after: Option<MessageId>,
        max_bytes: usize,
    ) -> (Vec<Envelope>, bool) {
        let Some(b) = self.boxes.get(owner) else {
            return (Vec::new(), false);
        };
        let start = after
            .and_then(|id| b.held.iter().position(|h| h.env.id == id).map(|i| i + 1))
            .unwrap_or(0);
        let mut out = Vec::new();
        let mut bytes = 0;
        for h in &b.held[start.min(b.held.len())..] {
            if !out.is_empty() && bytes + h.env.size() > max_bytes {
                return (out, true);
            }
            bytes += h.env.size();
            out.push(h.env.clone());
        }
        (out, false)
    }

    /// Every envelope of `owner` (for a repair push).
    pub fn all(&self, owner: &NodeId) -> Vec<Envelope> {
        self.list(owner, None, usize::MAX).0
    }

    /// The mailboxes held (their owners).
    pub fn owners(&self) -> Vec<NodeId> {
        self.boxes.keys().copied().collect()
    }

    /// Removes `owner`'s envelopes `ids` (its acknowledgement) and
    /// remembers the ids, so a replay is refused; returns how many were held.
    pub fn ack(&mut self, owner: &NodeId, ids: &[MessageId], now: u64) -> usize {
        let mut removed = 0;
        for id in ids {
            let pos = self
                .boxes
                .get(owner)
                .and_then(|b| b.held.iter().position(|h| h.env.id == *id));
            let until = match pos.and_then(|i| self.remove_at(owner, i)) {
                Some(env) => {
                    removed += 1;
                    env.expires
                }
                None => now + super::envelope::MAX_TTL,
            };
            self.remember_acked(*id, until);
        }
        removed
    }

    fn remember_acked(&mut self, id: MessageId, until: u64) {
        if self.acked.insert(id, until).is_none() {
            self.acked_order.push_back(id);
        }
        while self.acked_order.len() > self.limits.max_acked {
            if let Some(old) = self.acked_order.pop_front() {
                self.acked.remove(&old);
            }
        }
    }

    /// Drops expired envelopes and forgets acknowledgements of envelopes
    /// that would have expired; returns how many envelopes went.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut gone = 0;
        for owner in self.owners() {
            while let Some(i) = self
                .boxes
                .get(&owner)
                .and_then(|b| b.held.iter().position(|h| h.env.expires <= now))
            {
                self.remove_at(&owner, i);
                gone += 1;
            }
        }
        self.acked.retain(|_, until| *until > now);
        let acked = &self.acked;
        self.acked_order.retain(|id| acked.contains_key(id));
        gone
    }

    /// Everything held, for a snapshot: envelopes with their sources, and
    /// acknowledged ids with how long they are remembered.
    #[allow(clippy::type_complexity)]
    pub fn held(&self) -> (Vec<(Envelope, Option<IpAddr>)>, Vec<(MessageId, u64)>) {
        let envs = self
            .boxes
            .values()
            .flat_map(|b| b.held.iter().map(|h| (h.env.clone(), h.source)))
            .collect();
        let acked = self
            .acked_order
            .iter()
            .filter_map(|id| self.acked.get(id).map(|u| (*id, *u)))
            .collect();
        (envs, acked)
    }

    /// Takes back a snapshot's envelope (verified and bounded again).
    pub fn restore(
        &mut self,
        env: Envelope,
        source: Option<IpAddr>,
        now: u64,
    ) -> Result<Put, MessageError> {
        self.put_from(env, source, now)
    }

    /// Takes back a snapshot's acknowledged id.
    pub fn restore_acked(&mut self, id: MessageId, until: u64, now: u64) {
        if until > now {
            self.remember_acked(id, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::messaging::envelope::Letter;

    const NOW: u64 = 1_800_000_000;

    fn env(from: &Identity, to: &Identity, size: usize) -> Envelope {
        let l = Letter {
            id: MessageId::random(),
            topic: "t".into(),
            seq: 1,
            floor: 1,
            epoch: 1,
            sent_at_ms: 0,
            body: vec![7; size],
        };
        Envelope::seal(from, to.id(), &l, NOW + 600).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_senders_flood_stops_at_its_share_and_others_still_get_in() {
        let limits = MailboxLimits {
            per_mailbox: 10,
            per_sender: 4,
            ..Default::default()
        };
        let mut s = MailboxStore::new(limits);
        let (spam, alice, bob) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        for _ in 0..4 {
            s.put(env(&spam, &bob, 10), ip("192.0.2.1"), NOW).unwrap();
        }
        assert!(matches!(
            s.put(env(&spam, &bob, 10), ip("192.0.2.1"), NOW),
            Err(MessageError::OverQuota(_))
        ));
        assert_eq!(
            s.put(env(&alice, &bob, 10), ip("198.51.100.1"), NOW),
            Ok(Put::Stored)
        );
        assert_eq!(s.count(&bob.id()), 5);
    }

    #[test]
    fn a_full_mailbox_drops_the_largest_senders_newest_for_a_smaller_one() {
        let limits = MailboxLimits {
            per_mailbox: 6,
            per_sender: 6,
            ..Default::default()
        };
        let mut s = MailboxStore::new(limits);
        let (spam, alice, bob) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let floods: Vec<Envelope> = (0..6).map(|_| env(&spam, &bob, 10)).collect();
        for e in &floods {
            s.put(e.clone(), ip("192.0.2.1"), NOW).unwrap();
        }
        let a = env(&alice, &bob, 10);
        assert_eq!(s.put(a.clone(), ip("198.51.100.1"), NOW), Ok(Put::Stored));
        let held = s.all(&bob.id());
        assert_eq!(held.len(), 6);
        assert!(held.contains(&a));
        assert!(!held.contains(&floods[5]), "the flood's newest went");
        assert!(held.contains(&floods[0]));
        // The flooder cannot push alice out in turn.
        assert!(matches!(
            s.put(env(&spam, &bob, 10), ip("192.0.2.1"), NOW),
            Err(MessageError::OverQuota(_))
        ));
        assert!(s.all(&bob.id()).contains(&a));
    }

    #[test]
    fn many_identities_from_one_address_stop_at_its_share() {
        let limits = MailboxLimits {
            per_source: 3,
            ..Default::default()
        };
        let mut s = MailboxStore::new(limits);
        let bob = Identity::generate();
        for _ in 0..3 {
            s.put(env(&Identity::generate(), &bob, 1), ip("192.0.2.1"), NOW)
                .unwrap();
        }
        assert!(matches!(
            s.put(env(&Identity::generate(), &bob, 1), ip("192.0.2.1"), NOW),
            Err(MessageError::OverQuota(_))
        ));
        s.put(env(&Identity::generate(), &bob, 1), ip("192.0.2.2"), NOW)
            .unwrap();
        s.put(env(&Identity::generate(), &bob, 1), ip("198.51.100.1"), NOW)
            .unwrap();
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn byte_bounds_hold() {
        let limits = MailboxLimits {
            per_sender_bytes: 3000,
            max_bytes: 5000,
            ..Default::default()
        };
        let mut s = MailboxStore::new(limits);
        let (a, b, bob) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        s.put(env(&a, &bob, 2000), ip("192.0.2.1"), NOW).unwrap();
        assert!(s.put(env(&a, &bob, 2000), ip("192.0.2.1"), NOW).is_err());
        s.put(env(&b, &bob, 2000), ip("192.0.2.2"), NOW).unwrap();
        assert!(matches!(
            s.put(env(&Identity::generate(), &bob, 2000), ip("192.0.2.3"), NOW),
            Err(MessageError::OverQuota(_))
        ));
        assert!(s.bytes() <= 5000);
    }

    #[test]
    fn list_pages_in_order_and_ack_remembers() {
        let mut s = MailboxStore::new(MailboxLimits::default());
        let (a, bob) = (Identity::generate(), Identity::generate());
        let envs: Vec<Envelope> = (0..5).map(|_| env(&a, &bob, 1000)).collect();
        for e in &envs {
            s.put(e.clone(), ip("192.0.2.1"), NOW).unwrap();
        }
        assert_eq!(
            s.put(envs[0].clone(), ip("192.0.2.1"), NOW),
            Ok(Put::Held),
            "a retry changes nothing"
        );
        let (first, more) = s.list(&bob.id(), None, 2500);
        assert!(more);
        assert_eq!(first, envs[..2]);
        let (rest, more) = s.list(&bob.id(), Some(first[1].id), 1 << 20);
        assert!(!more);
        assert_eq!(rest, envs[2..]);
        assert_eq!(s.ack(&bob.id(), &[envs[0].id, envs[1].id], NOW), 2);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.put(envs[0].clone(), ip("192.0.2.1"), NOW),
            Err(MessageError::Replayed)
        );
        // Another mailbox's owner cannot remove bob's.
        assert_eq!(s.ack(&a.id(), &[envs[2].id], NOW), 0);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn expiry_and_bounded_memory_of_acks() {
        let limits = MailboxLimits {
            max_acked: 2,
            ..Default::default()
        };
        let mut s = MailboxStore::new(limits);
        let (a, bob) = (Identity::generate(), Identity::generate());
        let e = env(&a, &bob, 1);
        s.put(e.clone(), ip("192.0.2.1"), NOW).unwrap();
        assert_eq!(s.expire(NOW + 600), 1);
        assert!(s.is_empty());
        let ids: Vec<MessageId> = (0..5).map(|_| MessageId::random()).collect();
        s.ack(&bob.id(), &ids, NOW);
        assert_eq!(s.held().1.len(), 2);
    }
}
