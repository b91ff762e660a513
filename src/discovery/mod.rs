//! Finding peers: UDP multicast on the LAN (this module), introducers (later).
//!
//! Nothing learned here is trusted: a beacon only names a candidate, which enters
//! the known-hosts table after a QUIC handshake proved it holds the key it claims.

pub mod beacon;
pub(crate) mod multicast;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// LAN discovery settings.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Whether the node uses multicast at all.
    pub enabled: bool,
    /// Multicast group and port (an administratively scoped IPv4 group).
    pub group: SocketAddrV4,
    /// Interfaces (by IPv4 address) to use; empty: every non-loopback IPv4 interface.
    pub interfaces: Vec<Ipv4Addr>,
    /// First interval between active pings; doubles up to `max_interval` while the
    /// node still wants hosts.
    pub min_interval: Duration,
    /// Longest interval between active pings.
    pub max_interval: Duration,
}

/// Default multicast group of Butter nodes.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 42, 98), 7355);

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            enabled: true,
            group: DEFAULT_GROUP,
            interfaces: Vec::new(),
            min_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
        }
    }
}
