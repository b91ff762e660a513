//! Address scope: which of the addresses a peer claims as its own are worth
//! sending packets to (punch packets, QUIC Initials) from where we are. A
//! peer's claims are not checked by anyone, so without this filter it could
//! make nodes spray packets at third parties, or at hosts on their own private
//! network. Plain functions, no sockets.
//!
//! The rule: an address the peer was *observed* at is fine; one on the same IP
//! as that observed address (a mapped port) is fine; a private or loopback
//! address only when both sides sit behind the same public address (the same
//! NAT, so the same private network) or when we ourselves were observed on such
//! a network (a private deployment); any other public address not at all.
//!
//! ```
//! use butter::nat::scope::worth_dialing;
//! let peer_seen = "203.0.113.5".parse().unwrap();
//! let me_seen = "198.51.100.7".parse().unwrap();
//! assert!(worth_dialing("203.0.113.5:41000".parse().unwrap(), peer_seen, me_seen));
//! assert!(!worth_dialing("192.168.1.20:7400".parse().unwrap(), peer_seen, me_seen));
//! assert!(!worth_dialing("198.18.0.1:53".parse().unwrap(), peer_seen, me_seen), "a third party");
//! // Behind the same NAT, the peer's LAN address is the best path.
//! assert!(worth_dialing("192.168.1.20:7400".parse().unwrap(), peer_seen, peer_seen));
//! ```

use std::net::{IpAddr, SocketAddr};

pub use crate::source::is_private;

/// Never a destination: unspecified, multicast, broadcast, reserved (240/4,
/// where the node's relay paths live), or port 0.
pub fn is_unusable(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    addr.port() == 0
        || ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] >= 240)
}

fn same_network(a: IpAddr, b: IpAddr) -> bool {
    crate::source::same_site(a, b)
}

/// Whether `candidate`, claimed by a peer that was observed at `peer_seen`, is
/// worth dialing for a node observed at `me_seen` (see the module docs).
pub fn worth_dialing(candidate: SocketAddr, peer_seen: IpAddr, me_seen: IpAddr) -> bool {
    if is_unusable(candidate) {
        return false;
    }
    let ip = candidate.ip().to_canonical();
    let (peer_seen, me_seen) = (peer_seen.to_canonical(), me_seen.to_canonical());
    if ip == peer_seen {
        return true;
    }
    if ip.is_loopback() {
        return me_seen.is_loopback() && peer_seen.is_loopback();
    }
    if is_private(ip) {
        return peer_seen == me_seen || is_private(me_seen) || me_seen.is_loopback();
    }
    // A public address other than where the peer was seen: only next to it
    // (a host with several addresses in one /24 or /48).
    same_network(ip, peer_seen)
}

/// Keeps the addresses of `candidates` worth dialing (see [`worth_dialing`]).
pub fn filter(candidates: &mut Vec<SocketAddr>, peer_seen: IpAddr, me_seen: IpAddr) {
    candidates.retain(|c| worth_dialing(*c, peer_seen, me_seen));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nothing_unusable_ever() {
        for bad in [
            "0.0.0.0:7400",
            "224.0.0.1:7400",
            "255.255.255.255:7400",
            "240.0.0.9:7400",
            "203.0.113.5:0",
            "[ff02::1]:7400",
            "[::]:7400",
        ] {
            let c = a(bad);
            assert!(!worth_dialing(c, c.ip(), c.ip()), "{bad}");
        }
    }

    #[test]
    fn loopback_only_between_loopback_peers() {
        assert!(worth_dialing(
            a("127.0.0.1:9"),
            ip("127.0.0.1"),
            ip("127.0.0.2")
        ));
        assert!(!worth_dialing(
            a("127.0.0.1:9"),
            ip("203.0.113.5"),
            ip("198.51.100.7")
        ));
        assert!(!worth_dialing(
            a("127.0.0.1:9"),
            ip("203.0.113.5"),
            ip("203.0.113.5")
        ));
    }

    #[test]
    fn private_addresses_only_within_the_same_nat_or_a_private_deployment() {
        let lan = a("10.1.0.20:7400");
        assert!(worth_dialing(lan, ip("203.0.113.5"), ip("203.0.113.5")));
        assert!(!worth_dialing(lan, ip("203.0.113.5"), ip("198.51.100.7")));
        assert!(
            worth_dialing(lan, ip("172.20.0.3"), ip("172.20.0.4")),
            "compose network"
        );
        assert!(!worth_dialing(
            a("[fd00::5]:7400"),
            ip("2001:db8::1"),
            ip("2001:db9::1")
        ));
        assert!(!worth_dialing(
            a("100.64.3.3:7400"),
            ip("203.0.113.5"),
            ip("198.51.100.7")
        ));
    }

    #[test]
    fn public_addresses_only_where_or_next_to_where_the_peer_was_seen() {
        let seen = ip("203.0.113.5");
        let me = ip("198.51.100.7");
        assert!(
            worth_dialing(a("203.0.113.5:50000"), seen, me),
            "a mapped port"
        );
        assert!(worth_dialing(a("203.0.113.9:7400"), seen, me), "same /24");
        assert!(!worth_dialing(a("192.0.2.1:53"), seen, me), "a third party");
        assert!(
            !worth_dialing(a("[2001:db8::1]:7400"), seen, me),
            "unverifiable v6"
        );
        assert!(
            worth_dialing(a("[::ffff:203.0.113.5]:7400"), seen, me),
            "mapped v4"
        );
    }
}
