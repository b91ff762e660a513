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
    /// Time a caller has to send a buffered route's whole body, from its header on.
    pub body_timeout: Duration,
    /// Longest a stream may make no progress (a peer that stops reading a reply
    /// or stops sending a streamed body) before it is given up.
    pub stall_timeout: Duration,
    /// Bytes of buffered request bodies held at once, over all peers (a
    /// semaphore: readers wait for room until their body deadline).
    pub max_buffered_bytes: usize,
    /// ... of which one source address may hold (refused beyond: [`Status::Busy`](crate::wire::Status::Busy)).
    pub buffered_per_addr: usize,
    /// ... and one source prefix (IPv4 /24, IPv6 /64).
    pub buffered_per_prefix: usize,
    /// Incoming connections (and handshakes in progress) at once, in all.
    pub max_connections: usize,
    /// ... from one source address (an IPv6 /64 counts as one address).
    pub max_connections_per_addr: usize,
    /// ... from one source prefix (IPv4 /24, IPv6 /64... the same for IPv6).
    /// Loopback and private prefixes are exempt when `lan_prefix_exempt`.
    pub max_connections_per_prefix: usize,
    /// Sources on loopback or a private network (one operator's LAN or
    /// container network, where a whole network of nodes shares one /24)
    /// are bounded per address and in all, not per prefix: the routing
    /// table's rule for them too. Off: every prefix is bounded.
    pub lan_prefix_exempt: bool,
    /// Incoming handshakes in progress at once; beyond this, a client whose
    /// address is not validated yet is asked to retry (a stateless QUIC Retry
    /// proves it owns its address), one that is validated is refused.
    pub max_handshakes: usize,
    /// STUN binding requests answered per second per source address (twice
    /// that at once): a node is no reflector for spoofed requests.
    pub stun_per_source: f64,
    /// ... and in all.
    pub stun_total: f64,
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
            body_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            max_buffered_bytes: 128 * 1024 * 1024,
            buffered_per_addr: 32 * 1024 * 1024,
            buffered_per_prefix: 64 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_addr: 16,
            max_connections_per_prefix: 64,
            lan_prefix_exempt: true,
            max_handshakes: 128,
            stun_per_source: 10.0,
            stun_total: 1000.0,
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
    /// Bytes a peer may send on one stream ahead of what the node has read
    /// (QUIC stream flow-control window).
    pub stream_receive_window: u32,
    /// Bytes a peer may send on one connection, over all its streams, ahead of
    /// what the node has read (QUIC connection flow-control window). With the
    /// connection limits this bounds what peers can make the node buffer.
    pub receive_window: u32,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            idle_timeout: Duration::from_secs(30),
            keep_alive: None,
            dial_stagger: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(10),
            stream_receive_window: 1_250_000,
            receive_window: 4 * 1024 * 1024,
        }
    }
}
