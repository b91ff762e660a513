//! Limits and transport settings, with the defaults a node starts with.

use std::time::Duration;

use crate::wire::MAX_HEADER;

/// Resource limits of a node. Every limit protects the node from its peers; all have
/// sane defaults and can be changed on the [`NodeBuilder`](crate::NodeBuilder).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest header frame accepted (at most 64 KiB, the wire's hard bound).
    pub max_header: usize,
    /// Largest body held in memory, for requests to buffered routes and replies to
    /// [`Node::call`](crate::Node::call). Larger bodies must use the streaming API.
    pub max_body: usize,
    /// Concurrent request streams a peer may have open on one connection; more
    /// calls wait for a free slot rather than fail.
    pub max_concurrent_streams: u32,
    /// Time limit of a buffered call ([`Node::call`](crate::Node::call)), from
    /// dialing to the last reply byte; for streaming calls, until the reply header.
    pub call_timeout: Duration,
    /// Time a buffered handler may take before the caller gets a timeout status.
    pub handler_timeout: Duration,
    /// Time a caller has to send its request header once it opened a stream.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: MAX_HEADER,
            max_body: 16 * 1024 * 1024,
            max_concurrent_streams: 256,
            call_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// QUIC connection settings.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// A connection with no traffic for this long is closed (and re-dialed on the
    /// next call).
    pub idle_timeout: Duration,
    /// Send keep-alives this often, keeping idle connections (and NAT mappings)
    /// open. `None`: idle connections are dropped after `idle_timeout`.
    pub keep_alive: Option<Duration>,
    /// Delay between starting attempts to a peer's successive addresses (the
    /// first that completes wins: happy eyeballs).
    pub dial_stagger: Duration,
    /// Time limit of one connection attempt.
    pub connect_timeout: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            idle_timeout: Duration::from_secs(30),
            keep_alive: None,
            dial_stagger: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
