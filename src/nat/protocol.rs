//! The introducer protocol: route names and messages (postcard) exchanged between
//! nodes and introducers. Both sides use these types, so they live here.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::addr::NodeAddr;
use crate::identity::NodeId;

/// Node → introducer: "I am here" ([`Register`] → [`Registered`]).
pub const REGISTER_ROUTE: &str = "butter/intro/register";
/// Node → introducer: "introduce me to peers I don't know" ([`Introduce`] → `Vec<NodeAddr>`).
pub const INTRODUCE_ROUTE: &str = "butter/intro/introduce";
/// Node → introducer: "help me reach this node" ([`Connect`] → [`Rendezvous`]).
pub const CONNECT_ROUTE: &str = "butter/intro/connect";
/// Node → introducer: how a coordinated punch ended ([`PunchReport`] → `()`).
pub const REPORT_ROUTE: &str = "butter/intro/report";
/// Node → introducer: open a relay tunnel (streaming; first frame [`RelayOpen`]).
pub const RELAY_ROUTE: &str = "butter/intro/relay";
/// Anyone → introducer: its figures (`()` → [`IntroducerStats`]).
pub const INTRO_STATS_ROUTE: &str = "butter/intro/stats";
/// Introducer → node: "start punching towards this peer" ([`Punch`] → `()`).
pub const PUNCH_ROUTE: &str = "butter/punch";
/// Introducer → node: an incoming relay tunnel (streaming; first frame [`RelayIn`]).
pub const RELAY_IN_ROUTE: &str = "butter/relay-in";

/// Most addresses a node may register or a peer may be given.
pub const MAX_ADDRS: usize = 8;
/// Most peers one introduction returns.
pub const MAX_INTRODUCTIONS: u16 = 32;

/// A registration: the addresses the node can be reached at on its own networks
/// (LAN, UPnP-mapped). The introducer adds the address it observes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The node's own addresses (at most [`MAX_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
}

/// The introducer's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The node's address as the introducer sees it (its reflexive address).
    pub observed: SocketAddr,
    /// The registration expires unless refreshed within this time.
    pub ttl_ms: u64,
}

/// Asks for peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introduce {
    /// How many at most (capped at [`MAX_INTRODUCTIONS`]).
    pub max: u16,
}

/// Asks the introducer to coordinate a hole punch to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// Whom to reach.
    pub target: NodeId,
    /// The caller's own addresses (the introducer adds the observed one).
    pub addrs: Vec<SocketAddr>,
}

/// The introducer's answer to [`Connect`]: the target was told to punch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendezvous {
    /// The target and its candidate addresses (observed first).
    pub peer: NodeAddr,
    /// Start dialing after this delay (the target is punching by then).
    pub start_in_ms: u32,
}

/// Told to the target of a [`Connect`]: send punch packets to this peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Punch {
    /// The peer that will dial, with its candidate addresses (observed first).
    pub peer: NodeAddr,
}

/// How a coordinated punch ended, for the introducer's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchReport {
    /// The peer that was punched to.
    pub target: NodeId,
    /// Whether a direct connection resulted.
    pub succeeded: bool,
}

/// First frame of a relay tunnel, from the node that opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayOpen {
    /// The node to relay to.
    pub target: NodeId,
}

/// First frame of a relay tunnel, as delivered to its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayIn {
    /// The node at the other end (authenticated by the introducer; the QUIC
    /// handshake inside the tunnel authenticates it again, end to end).
    pub from: NodeId,
}

/// The running figures of an introducer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntroducerStats {
    /// Live registrations.
    pub registrations: u64,
    /// Registrations accepted since start (new or refreshed).
    pub registers_total: u64,
    /// Introductions answered.
    pub introductions: u64,
    /// Punches coordinated.
    pub punches_tried: u64,
    /// Punches reported successful by the dialing node.
    pub punches_succeeded: u64,
    /// Relay tunnels opened since start.
    pub relays_opened: u64,
    /// Relay tunnels open now.
    pub relays_active: u64,
    /// Bytes moved through relay tunnels (both directions).
    pub relayed_bytes: u64,
    /// Requests refused by the per-source rate limit or the table bounds.
    pub rejected: u64,
    /// Non-QUIC datagrams that were not valid STUN (dropped).
    pub udp_garbage: u64,
    /// STUN binding requests answered.
    pub stun_answered: u64,
}
