//! Candidates waiting for a verification slot.
//!
//! A node verifies newcomers a few at a time (a handshake and a ping each).
//! When every slot is busy — a burst of joins, a slow machine — a candidate
//! used to be dropped, and a node that joined during the burst could end up
//! in nobody's table until the next bucket refresh, minutes later. Instead it
//! waits here, and the next slot that frees takes it.
//!
//! Plain data (no sockets, the caller passes `now`), and bounded against
//! hostile peers with free identities: `capacity` candidates in all, at most
//! `per_prefix` from one IPv4 /24 or IPv6 /64 (a flood from one network
//! cannot crowd out the others), each for at most `max_wait`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use butter::peers::waiting::Waiting;
//! use butter::{NodeAddr, NodeId};
//!
//! let mut w: Waiting<()> = Waiting::new(64, 2, Duration::from_secs(30));
//! let now = Instant::now();
//! let at = |i: u8| NodeAddr::new(NodeId::from_bytes([i; 32]), [format!("198.51.100.{i}:7400").parse().unwrap()]);
//! assert!(w.push(at(1), (), now));
//! assert!(w.push(at(2), (), now));
//! assert!(!w.push(at(3), (), now), "two per /24");
//! assert_eq!(w.pop(now).unwrap().0.id, at(1).id, "first come, first verified");
//! assert!(w.pop(now + Duration::from_secs(31)).is_none(), "waited too long");
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::addr::NodeAddr;
use crate::identity::NodeId;
use crate::nat::scope::is_private;
use crate::source::prefix_of;

/// A bounded first-in first-out queue of candidates, one entry per id,
/// bounded per source prefix. `R` is what the caller keeps with each
/// (how to reach it).
#[derive(Debug)]
pub struct Waiting<R> {
    queue: VecDeque<(NodeAddr, R, Instant, Option<IpAddr>)>,
    per_prefix: HashMap<IpAddr, usize>,
    capacity: usize,
    max_per_prefix: usize,
    max_wait: Duration,
    lan_exempt: bool,
}

impl<R> Waiting<R> {
    /// At most `capacity` candidates, `per_prefix` from one prefix, each
    /// for `max_wait`.
    pub fn new(capacity: usize, per_prefix: usize, max_wait: Duration) -> Self {
        Waiting {
            queue: VecDeque::new(),
            per_prefix: HashMap::new(),
            capacity,
            max_per_prefix: per_prefix,
            max_wait,
            lan_exempt: false,
        }
    }

    /// Loopback and private addresses are not bounded per prefix (one
    /// operator's LAN or container network, as the table treats them); the
    /// total bound still holds.
    pub fn lan_exempt(mut self, exempt: bool) -> Self {
        self.lan_exempt = exempt;
        self
    }

    /// Queues a candidate (counted under the prefix of its first address).
    /// False when it is already waiting, or the queue or its prefix is full.
    pub fn push(&mut self, addr: NodeAddr, reach: R, now: Instant) -> bool {
        self.expire(now);
        if self.queue.len() >= self.capacity || self.contains(&addr.id) {
            return false;
        }
        let prefix = addr
            .addrs
            .first()
            .map(|a| a.ip())
            .filter(|ip| !(self.lan_exempt && (ip.is_loopback() || is_private(*ip))))
            .map(prefix_of);
        if let Some(p) = prefix {
            let n = self.per_prefix.entry(p).or_default();
            if *n >= self.max_per_prefix {
                return false;
            }
            *n += 1;
        }
        self.queue.push_back((addr, reach, now, prefix));
        true
    }

    /// The candidate that has waited longest (and not too long).
    pub fn pop(&mut self, now: Instant) -> Option<(NodeAddr, R)> {
        self.expire(now);
        let (addr, reach, _, prefix) = self.queue.pop_front()?;
        self.release(prefix);
        Some((addr, reach))
    }

    /// Whether `id` is waiting.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.queue.iter().any(|(a, ..)| a.id == *id)
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, _, since, prefix)) = self.queue.front() {
            if now.saturating_duration_since(*since) <= self.max_wait {
                break;
            }
            let prefix = *prefix;
            self.queue.pop_front();
            self.release(prefix);
        }
    }

    fn release(&mut self, prefix: Option<IpAddr>) {
        if let Some(p) = prefix {
            if let Some(n) = self.per_prefix.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.per_prefix.remove(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(i: u32, ip: &str) -> NodeAddr {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        NodeAddr::new(
            NodeId::from_bytes(id),
            [format!("{ip}:7400").parse().unwrap()],
        )
    }

    #[test]
    fn a_flood_from_one_prefix_leaves_room_for_others() {
        let now = Instant::now();
        let mut w = Waiting::new(16, 4, Duration::from_secs(30));
        // 1,000 fresh identities from one /24.
        let taken = (0..1000)
            .filter(|i| w.push(cand(*i, &format!("203.0.113.{}", i % 250)), (), now))
            .count();
        assert_eq!(taken, 4);
        // Honest candidates from other networks still get in.
        for i in 0..12 {
            assert!(w.push(cand(2000 + i, &format!("198.51.{i}.1")), (), now));
        }
        assert_eq!(w.len(), 16);
        assert!(!w.push(cand(9999, "192.0.2.1"), (), now), "full");
    }

    #[test]
    fn a_lan_is_exempt_from_the_prefix_bound_when_asked() {
        let now = Instant::now();
        let mut strict = Waiting::new(16, 2, Duration::from_secs(30));
        let mut lan = Waiting::new(16, 2, Duration::from_secs(30)).lan_exempt(true);
        let taken = |w: &mut Waiting<()>| {
            (0..10)
                .filter(|i| w.push(cand(*i, &format!("127.0.0.{}", i + 1)), (), now))
                .count()
        };
        assert_eq!(taken(&mut strict), 2);
        assert_eq!(taken(&mut lan), 10);
        assert!(lan.push(cand(100, "203.0.113.1"), (), now));
        assert!(lan.push(cand(101, "203.0.113.2"), (), now));
        assert!(
            !lan.push(cand(102, "203.0.113.3"), (), now),
            "public prefixes stay bounded"
        );
    }

    #[test]
    fn one_entry_per_id_and_prefix_slots_come_back() {
        let now = Instant::now();
        let mut w = Waiting::new(16, 1, Duration::from_secs(30));
        assert!(w.push(cand(1, "198.51.100.1"), 1, now));
        assert!(!w.push(cand(1, "198.51.101.1"), 2, now), "already waiting");
        assert!(!w.push(cand(2, "198.51.100.2"), 3, now), "prefix full");
        assert_eq!(
            w.pop(now).map(|(a, r)| (a.id, r)),
            Some((cand(1, "198.51.100.1").id, 1))
        );
        assert!(w.push(cand(2, "198.51.100.2"), 3, now), "slot released");
    }

    #[test]
    fn old_candidates_expire_and_release_their_prefix() {
        let now = Instant::now();
        let mut w = Waiting::new(16, 1, Duration::from_secs(30));
        assert!(w.push(cand(1, "198.51.100.1"), (), now));
        let later = now + Duration::from_secs(31);
        assert!(w.push(cand(2, "198.51.100.2"), (), later));
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop(later).unwrap().0.id, cand(2, "198.51.100.2").id);
        assert!(w.is_empty());
    }
}
