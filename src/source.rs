//! Where remote input comes from, at the granularity the node's limits are
//! kept: identities are free, so every limit holds per source address and per
//! source prefix (an IPv4 /24, an IPv6 /64: what one network operator hands one
//! customer), not only per NodeId.
//!
//! [`SourceCounts`] is plain data (no sockets, no clock): a bounded tally of
//! something (connections, buffered bytes) per address and per prefix, with a
//! cap on each.
//!
//! ```
//! use butter::source::{prefix_of, SourceCounts};
//! let mut conns = SourceCounts::new(2, 3, 100);
//! let a = "198.51.100.7".parse().unwrap();
//! let b = "198.51.100.8".parse().unwrap();
//! assert!(conns.try_add(a, 1) && conns.try_add(a, 1));
//! assert!(!conns.try_add(a, 1), "two per address");
//! assert!(conns.try_add(b, 1));
//! assert!(!conns.try_add(b, 1), "three per /24");
//! assert_eq!(prefix_of(a), prefix_of(b));
//! conns.remove(a, 1);
//! assert!(conns.try_add(b, 1));
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The prefix a source address belongs to: its IPv4 /24 or IPv6 /64 (an
/// IPv4-mapped IPv6 address counts as IPv4).
pub fn prefix_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Whether two addresses share their /24 or /64 ([`prefix_of`]).
pub fn same_prefix(a: IpAddr, b: IpAddr) -> bool {
    prefix_of(a) == prefix_of(b)
}

/// The site an address belongs to: its IPv4 /24 or IPv6 /48, the unit
/// one operator usually holds (what diversity limits count, and what
/// address scoping treats as "the same network").
pub fn site_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => prefix_of(IpAddr::V4(v4)),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Whether two addresses share their /24 or /48 ([`site_of`]).
pub fn same_site(a: IpAddr, b: IpAddr) -> bool {
    site_of(a) == site_of(b)
}

/// The key an address is limited under: IPv4 as it is, IPv6 by its /64 (one
/// host on IPv6 has a whole /64 to pick addresses from).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 @ IpAddr::V6(_) => prefix_of(v6),
    }
}

/// Addresses of a private network: RFC 1918, shared (CGNAT) space, link-local,
/// IPv6 unique-local and link-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let s0 = v6.segments()[0];
            (s0 & 0xfe00) == 0xfc00 || (s0 & 0xffc0) == 0xfe80
        }
    }
}

/// Loopback or a private network ([`is_private`]): one operator's.
pub fn is_lan(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback() || is_private(ip)
}

/// Amounts per source address and per source prefix, each capped; the number of
/// sources tracked is bounded too (entries leave when they drop to zero).
#[derive(Debug, Clone)]
pub struct SourceCounts {
    per_addr: HashMap<IpAddr, u64>,
    per_prefix: HashMap<IpAddr, u64>,
    total: u64,
    max_per_addr: u64,
    max_per_prefix: u64,
    max_sources: usize,
    lan_exempt: bool,
}

impl SourceCounts {
    /// At most `max_per_addr` per address, `max_per_prefix` per prefix, and
    /// `max_sources` distinct addresses at once.
    pub fn new(max_per_addr: u64, max_per_prefix: u64, max_sources: usize) -> Self {
        SourceCounts {
            per_addr: HashMap::new(),
            per_prefix: HashMap::new(),
            total: 0,
            max_per_addr,
            max_per_prefix,
            max_sources,
            lan_exempt: false,
        }
    }

    /// Sources on loopback or a private network ([`is_lan`]) are capped per
    /// address only, not per prefix.
    pub fn lan_exempt(mut self, exempt: bool) -> Self {
        self.lan_exempt = exempt;
        self
    }

    /// Adds `n` for `ip` if neither its address nor its prefix goes over its cap
    /// (and a new source fits); otherwise changes nothing and returns false.
    pub fn try_add(&mut self, ip: IpAddr, n: u64) -> bool {
        let (addr, prefix) = (address_key(ip), prefix_of(ip));
        let have_addr = self.per_addr.get(&addr).copied().unwrap_or(0);
        let have_prefix = self.per_prefix.get(&prefix).copied().unwrap_or(0);
        if have_addr == 0 && self.per_addr.len() >= self.max_sources {
            return false;
        }
        let prefix_capped = !(self.lan_exempt && is_lan(ip));
        if have_addr.saturating_add(n) > self.max_per_addr
            || (prefix_capped && have_prefix.saturating_add(n) > self.max_per_prefix)
        {
            return false;
        }
        if n == 0 {
            return true;
        }
        *self.per_addr.entry(addr).or_default() += n;
        *self.per_prefix.entry(prefix).or_default() += n;
        self.total += n;
        true
    }

    /// Takes back `n` for `ip` (what an earlier [`SourceCounts::try_add`] added).
    pub fn remove(&mut self, ip: IpAddr, n: u64) {
        let (addr, prefix) = (address_key(ip), prefix_of(ip));
        for (map, key) in [(&mut self.per_addr, addr), (&mut self.per_prefix, prefix)] {
            if let Some(have) = map.get_mut(&key) {
                *have = have.saturating_sub(n);
                if *have == 0 {
                    map.remove(&key);
                }
            }
        }
        self.total = self.total.saturating_sub(n);
    }

    /// What `ip`'s address holds now.
    pub fn of(&self, ip: IpAddr) -> u64 {
        self.per_addr.get(&address_key(ip)).copied().unwrap_or(0)
    }

    /// The sum over all sources.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Distinct addresses holding something.
    pub fn sources(&self) -> usize {
        self.per_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_sites() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_prefix(ip("10.1.2.3"), ip("10.1.2.200")));
        assert!(!same_prefix(ip("10.1.2.3"), ip("10.1.3.3")));
        assert!(same_prefix(ip("::ffff:10.1.2.3"), ip("10.1.2.9")));
        assert!(same_prefix(
            ip("2001:db8:1:2::1"),
            ip("2001:db8:1:2:ffff::9")
        ));
        assert!(!same_prefix(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1")));
        // A site is an IPv6 /48: one operator's allocation.
        assert!(same_site(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1")));
        assert!(!same_site(ip("2001:db8:1::1"), ip("2001:db8:2::1")));
        assert!(same_site(ip("192.0.2.1"), ip("192.0.2.254")));
        assert!(!same_site(ip("192.0.2.1"), ip("2001:db8::1")));
    }

    #[test]
    fn ipv6_hosts_are_limited_by_their_64() {
        let mut c = SourceCounts::new(2, 100, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(c.try_add(a, 1) && c.try_add(b, 1));
        assert!(!c.try_add("2001:db8:1:2::77".parse().unwrap(), 1));
        assert!(c.try_add("2001:db8:1:3::1".parse().unwrap(), 1));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let mut c = SourceCounts::new(1, 10, 10);
        assert!(c.try_add("198.51.100.1".parse().unwrap(), 1));
        assert!(!c.try_add("::ffff:198.51.100.1".parse().unwrap(), 1));
    }

    #[test]
    fn sources_are_bounded_and_leave_at_zero() {
        let mut c = SourceCounts::new(10, 10, 2);
        let ip = |i: u8| IpAddr::from([10, i, 0, 1]);
        assert!(c.try_add(ip(1), 5) && c.try_add(ip(2), 5));
        assert!(!c.try_add(ip(3), 1), "a third source");
        c.remove(ip(1), 5);
        assert_eq!(c.sources(), 1);
        assert!(c.try_add(ip(3), 1));
        assert_eq!(c.total(), 6);
    }

    #[test]
    fn a_refused_add_changes_nothing() {
        let mut c = SourceCounts::new(10, 15, 10);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        assert!(c.try_add(a, 10));
        assert!(!c.try_add(b, 6));
        assert_eq!((c.of(b), c.total()), (0, 10));
        assert!(c.try_add(b, 5));
    }
}
