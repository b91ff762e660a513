//! The rendezvous table: who is registered, where they were seen, until when.
//! Plain data (no sockets) so the policy is unit-tested directly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::nat::protocol::MAX_ADDRS;
use crate::{NodeAddr, NodeId};
use rand::seq::SliceRandom;

/// One registered node.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its own addresses (LAN, mapped), as it told us.
    pub addrs: Vec<SocketAddr>,
    /// The address its connection comes from, as we see it.
    pub observed: SocketAddr,
    expires: Instant,
}

impl Registration {
    /// Candidates for reaching it: the observed address first, then its own
    /// (which may repeat the observed one: a node on a public address or
    /// behind a port mapping advertises it, and the dialer reads that as "this
    /// address is its own, reaching it is direct, not punched").
    pub fn candidates(&self, id: NodeId) -> NodeAddr {
        let mut addrs = vec![self.observed];
        addrs.extend(self.addrs.iter().copied());
        addrs.truncate(MAX_ADDRS);
        NodeAddr::new(id, addrs)
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The table is full of live registrations.
    #[error("the introducer's table is full")]
    Full,
    /// This source address already holds its share of the table.
    #[error("too many registrations from this address")]
    TooManyFromSource,
}

/// Bounded table of registrations, expiring unless refreshed.
#[derive(Debug)]
pub struct Registry {
    regs: HashMap<NodeId, Registration>,
    per_source: HashMap<IpAddr, usize>,
    max: usize,
    max_per_source: usize,
    ttl: Duration,
}

impl Registry {
    /// A table of at most `max` registrations, `max_per_source` from one IP.
    pub fn new(max: usize, max_per_source: usize, ttl: Duration) -> Self {
        Registry {
            regs: HashMap::new(),
            per_source: HashMap::new(),
            max,
            max_per_source,
            ttl,
        }
    }

    /// How long a registration lives without a refresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Live registrations.
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    /// Whether nobody is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or refreshes a registration.
    pub fn register(
        &mut self,
        id: NodeId,
        observed: SocketAddr,
        mut addrs: Vec<SocketAddr>,
        now: Instant,
    ) -> Result<(), Refused> {
        addrs.truncate(MAX_ADDRS);
        // Never unusable addresses; loopback only from a node on loopback.
        addrs.retain(|a| {
            !crate::nat::scope::is_unusable(*a)
                && (!a.ip().is_loopback() || observed.ip().is_loopback())
        });
        let source = observed.ip();
        let previous = self.regs.get(&id).map(|r| r.observed.ip());
        if previous != Some(source) {
            if self.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
                self.expire(now);
                if self.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
                    return Err(Refused::TooManyFromSource);
                }
            }
            if previous.is_none() && self.regs.len() >= self.max {
                self.expire(now);
                if self.regs.len() >= self.max {
                    return Err(Refused::Full);
                }
            }
        }
        let reg = Registration {
            addrs,
            observed,
            expires: now + self.ttl,
        };
        if let Some(old) = self.regs.insert(id, reg) {
            self.release(old.observed.ip());
        }
        *self.per_source.entry(source).or_default() += 1;
        Ok(())
    }

    fn release(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Drops expired registrations.
    pub fn expire(&mut self, now: Instant) {
        let dead: Vec<NodeId> = self
            .regs
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Some(r) = self.regs.remove(&id) {
                self.release(r.observed.ip());
            }
        }
    }

    /// A live registration.
    pub fn get(&self, id: &NodeId, now: Instant) -> Option<&Registration> {
        self.regs.get(id).filter(|r| r.expires > now)
    }

    /// Up to `max` registered peers other than `who`, those from other
    /// subnetworks (another /24, or /48 for IPv6) than `from` first, random
    /// within each group.
    pub fn sample(&self, who: &NodeId, from: IpAddr, max: usize, now: Instant) -> Vec<NodeAddr> {
        let mut rng = rand::rng();
        let mut far = Vec::new();
        let mut near = Vec::new();
        for (id, r) in &self.regs {
            if id == who || r.expires <= now {
                continue;
            }
            if same_subnet(r.observed.ip(), from) {
                near.push(r.candidates(*id));
            } else {
                far.push(r.candidates(*id));
            }
        }
        far.shuffle(&mut rng);
        near.shuffle(&mut rng);
        far.into_iter().chain(near).take(max).collect()
    }
}

fn same_subnet(a: IpAddr, b: IpAddr) -> bool {
    crate::source::same_site(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeId {
        crate::Identity::generate().id()
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn registrations_expire_unless_refreshed() {
        let mut r = Registry::new(10, 10, Duration::from_secs(30));
        let t0 = Instant::now();
        let a = id();
        r.register(a, at("198.51.100.1:7400"), vec![], t0).unwrap();
        assert!(r.get(&a, t0 + Duration::from_secs(29)).is_some());
        r.register(
            a,
            at("198.51.100.1:7400"),
            vec![],
            t0 + Duration::from_secs(20),
        )
        .unwrap();
        assert!(r.get(&a, t0 + Duration::from_secs(45)).is_some());
        assert!(r.get(&a, t0 + Duration::from_secs(51)).is_none());
        r.expire(t0 + Duration::from_secs(51));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn the_table_and_each_source_are_bounded() {
        let mut r = Registry::new(5, 3, Duration::from_secs(30));
        let t0 = Instant::now();
        for _ in 0..3 {
            r.register(id(), at("198.51.100.1:1000"), vec![], t0)
                .unwrap();
        }
        assert_eq!(
            r.register(id(), at("198.51.100.1:1001"), vec![], t0),
            Err(Refused::TooManyFromSource)
        );
        r.register(id(), at("198.51.100.2:1000"), vec![], t0)
            .unwrap();
        r.register(id(), at("198.51.100.3:1000"), vec![], t0)
            .unwrap();
        assert_eq!(
            r.register(id(), at("198.51.100.4:1000"), vec![], t0),
            Err(Refused::Full)
        );
        assert_eq!(r.len(), 5);
        // Once they expire there is room again.
        let later = t0 + Duration::from_secs(31);
        r.register(id(), at("198.51.100.4:1000"), vec![], later)
            .unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn introductions_favour_other_subnetworks() {
        let mut r = Registry::new(100, 100, Duration::from_secs(30));
        let t0 = Instant::now();
        let me = id();
        for i in 0..5 {
            r.register(id(), at(&format!("203.0.113.{}:7400", i + 10)), vec![], t0)
                .unwrap();
        }
        let far = id();
        r.register(far, at("198.51.100.9:7400"), vec![], t0)
            .unwrap();
        for _ in 0..20 {
            let s = r.sample(&me, "203.0.113.1".parse().unwrap(), 2, t0);
            assert_eq!(s.len(), 2);
            assert_eq!(s[0].id, far, "the other subnetwork comes first");
        }
        assert!(r
            .sample(&far, "198.51.100.9".parse().unwrap(), 10, t0)
            .iter()
            .all(|a| a.id != far));
    }

    #[test]
    fn candidates_put_the_observed_address_first() {
        let mut r = Registry::new(10, 10, Duration::from_secs(30));
        let t0 = Instant::now();
        let a = id();
        r.register(
            a,
            at("198.51.100.1:4000"),
            vec![at("10.0.0.5:7400"), at("0.0.0.0:1")],
            t0,
        )
        .unwrap();
        let c = r.get(&a, t0).unwrap().candidates(a);
        assert_eq!(c.addrs, vec![at("198.51.100.1:4000"), at("10.0.0.5:7400")]);
        // A node that advertises the address it is observed at keeps it in its list.
        let b = id();
        r.register(
            b,
            at("198.51.100.2:7400"),
            vec![at("198.51.100.2:7400")],
            t0,
        )
        .unwrap();
        let c = r.get(&b, t0).unwrap().candidates(b);
        assert_eq!(
            c.addrs,
            vec![at("198.51.100.2:7400"), at("198.51.100.2:7400")]
        );
    }
}
