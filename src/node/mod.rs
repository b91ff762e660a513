//! [`Node`]: a running peer. The module wires the layers together
//! ([`NodeBuilder::spawn`]) and registers the platform's protocols as
//! [services](Service), each owning its routes, limits and tasks; every task
//! runs on the node's [`Tasks`] and ends on shutdown.
//!
//! | file | job |
//! | --- | --- |
//! | `builder` | configuration, spawn wiring |
//! | `service` | the [`Service`] trait, [`Routes`], [`ServiceContext`], [`WeakNode`] |
//! | `accept` | incoming connections admitted, their streams served |
//! | `calls` | the caller's side: streams opened on the right connection |
//! | `info` | `butter/ping`, `butter/stats` |
//! | `goodbye` | `butter/goodbye`, [`Node::shutdown`] |
//! | `membership` | `butter/peers`, liveness, peer exchange, verification |
//! | `neighbours` | the quick checks of the closest hosts (repair hears of their deaths fast) |
//! | `messaging` | messages: direct delivery, mailboxes, [`Node::send_message`] |
//! | `handover` | held index keys and mailboxes handed over as hosts change |
//! | `lan` | multicast discovery |
//! | `introducers` | the introducer client (registration, introductions) |
//! | `udp` | STUN answers and STUN client, punch packets seen |
//! | `reach` | connection by NodeId: direct, then the traversal timeline |
//! | `punch` | coordinated hole punching (`butter/punch`) |
//! | `predict` | port prediction between a keeping and a per-destination NAT |
//! | `relay` | relay tunnels (`butter/relay-in`) |
//! | `upgrade` | relayed → direct |
//! | `upnp` | the gateway's port mapping |
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! let a = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
//! let b = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
//! let ping = a.ping(b.addr()).await?;
//! assert_eq!(ping.reply.id, b.id());
//! a.shutdown().await;
//! assert_eq!(a.running_tasks(), 0);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod accept;
mod builder;
mod calls;
mod content;
mod dht;
mod goodbye;
mod handover;
mod info;
mod introducers;
mod lan;
mod membership;
mod messaging;
mod neighbours;
mod predict;
mod punch;
mod reach;
mod relay;
mod search;
mod service;
mod udp;
mod upgrade;
mod upnp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::addr::{NodeAddr, Target};
use crate::config::Limits;
use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::identity::{Identity, NodeId};
use crate::nat::NatSettings;
use crate::peers::{HostInfo, Membership, PeerEvent};
use crate::router::Router;
use crate::stats::{Stats, StatsSnapshot};
use crate::tasks::Tasks;

pub use builder::NodeBuilder;
pub use content::{ContentSettings, Fetched, Shared as SharedFile, StorageUse};
pub use dht::{Dht, DhtSettings, FoundNode, FoundRecord, LookupReport, ProviderStream, Published};
pub use goodbye::GOODBYE_ROUTE;
pub use info::{Ping, PingReply, PingRequest, PING_ROUTE, ROUTES_ROUTE, STATS_ROUTE};
pub use messaging::{Drained, MessageStatus, Messages, MessagingSettings};
pub use search::{
    Document, Hit, HitStream, Indexed, PeerHit, Query, SearchReport, SearchSettings, Searched,
};
pub use service::{Routes, Service, ServiceContext, WeakNode};

/// State shared by the node handle and its background tasks.
struct Shared {
    endpoint: Endpoint,
    router: Router,
    budget: Arc<crate::budget::BodyBudget>,
    admission: Arc<crate::admission::Admission>,
    stun_limits: udp::StunLimits,
    /// Set by [`Node::shutdown`]: calls then fail with [`Error::Shutdown`].
    shut: std::sync::atomic::AtomicBool,
    /// Set once [`Node::shutdown`] began (it runs once).
    closing: std::sync::atomic::AtomicBool,
    /// Port predictions running, and when each peer last had one.
    predictions: crate::nat::predict::Predictions,
    /// Candidates verified at once.
    verify_slots: Arc<tokio::sync::Semaphore>,
    /// Candidates waiting for a verification slot (bounded per prefix).
    verify_waiting: std::sync::Mutex<crate::peers::waiting::Waiting<membership::Reach>>,
    limits: Limits,
    stats: Arc<Stats>,
    identity: Identity,
    members: Arc<Membership>,
    dht: Arc<dht::DhtState>,
    content: content::ContentState,
    search: Arc<search::SearchState>,
    messaging: Arc<messaging::MessagingState>,
    stun: crate::nat::PendingStun,
    nat: NatSettings,
    traversals: reach::Traversals,
    observed: introducers::Observed,
    upnp: Arc<tokio::sync::watch::Sender<crate::nat::UpnpStatus>>,
    punch_watch: crate::nat::punch::PunchWatch,
    /// Every task the node runs.
    tasks: Tasks,
}

/// Owned by the handles only: dropping the last handle shuts the node down.
struct NodeInner {
    shared: Arc<Shared>,
    /// The services, kept as long as the node runs.
    services: Mutex<Vec<Box<dyn Service>>>,
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        // The tasks hold the shared state, not the handles: cancelling them
        // lets it go (the UPnP task still removes its mapping).
        self.shared.tasks.cancel();
        self.shared.endpoint.close_all();
    }
}

/// A running Butter peer: listener and caller at once. Cheap to clone; the node
/// shuts down when the last clone is dropped (or on [`Node::shutdown`]).
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({})", self.id().short())
    }
}

impl Node {
    /// Starts configuring a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The shared state, for tasks: it does not keep the node's handles alive.
    fn shared_arc(&self) -> Arc<Shared> {
        self.inner.shared.clone()
    }

    /// A handle that does not keep the node alive.
    pub fn downgrade(&self) -> WeakNode {
        let weak = WeakNode::default();
        weak.set(&self.inner);
        weak
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared().identity.id()
    }

    /// This node's identity (key pair).
    pub fn identity(&self) -> &Identity {
        &self.shared().identity
    }

    /// The bound socket address (may be unspecified, e.g. `0.0.0.0:7400`).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared()
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
    }

    /// Where others can reach this node: the bound address, or, when bound to
    /// an unspecified address, the addresses of the interfaces that are up
    /// (not a bridge without carrier, not one set down), routable ones
    /// first, loopback only when there is nothing else; then the
    /// UPnP-mapped address, while the gateway holds one.
    pub fn addr(&self) -> NodeAddr {
        let mut addr = self.interface_addr();
        if let crate::nat::UpnpStatus::Mapped { external, .. } = *self.shared().upnp.borrow() {
            if !addr.addrs.contains(&external) {
                addr.addrs.push(external);
            }
        }
        addr
    }

    fn interface_addr(&self) -> NodeAddr {
        let local = self.local_addr();
        if !local.ip().is_unspecified() {
            return NodeAddr::new(self.id(), [local]);
        }
        let ips = crate::net::advertised_ips(local.is_ipv4());
        NodeAddr::new(
            self.id(),
            ips.into_iter().map(|ip| SocketAddr::new(ip, local.port())),
        )
    }

    /// This node's addresses as seen from outside its NATs, as its introducers
    /// reported them (empty before the first registration).
    pub fn reflexive_addrs(&self) -> Vec<SocketAddr> {
        self.shared().observed.addrs()
    }

    /// Closes the connections with `peer`, if any (the next call to it
    /// dials again, resuming the TLS session); returns whether one was open.
    /// The peer is not held at fault.
    pub fn disconnect(&self, peer: &NodeId) -> bool {
        self.shared().endpoint.disconnect(peer)
    }

    /// Counters (handshakes, calls served, malformed requests...).
    pub fn stats(&self) -> StatsSnapshot {
        self.shared().stats.snapshot()
    }

    /// Number of peers this node has a live connection with.
    pub fn connection_count(&self) -> usize {
        self.shared().endpoint.live_connections()
    }

    /// Round-trip time of the live connection to `peer`, if there is one.
    pub fn rtt(&self, peer: &NodeId) -> Option<Duration> {
        self.shared().endpoint.cached(peer).map(|c| c.rtt())
    }

    /// A snapshot of the known-hosts table.
    pub fn known_hosts(&self) -> Vec<HostInfo> {
        self.shared().members.hosts()
    }

    /// Changes of the known-hosts table from now on (host added, host removed).
    /// A node takes hosts in from its spawn on (bootstrap, discovery): to
    /// follow the whole table, subscribe first, then read
    /// [`known_hosts`](Self::known_hosts) (a host added in between shows
    /// in both).
    ///
    /// ```
    /// # async fn run(node: butter::Node) {
    /// let mut events = node.events();
    /// while let Ok(event) = events.recv().await {
    ///     if let butter::PeerEvent::Added(addr) = event {
    ///         println!("now knows {addr}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<PeerEvent> {
        self.shared().members.subscribe()
    }

    pub(crate) fn members(&self) -> &Membership {
        &self.shared().members
    }

    pub(crate) fn counters(&self) -> &Stats {
        &self.shared().stats
    }

    pub(crate) fn forget_connection(&self, id: &NodeId) {
        if let Some(conn) = self.shared().endpoint.cached(id) {
            self.shared().endpoint.invalidate(id, &conn);
            conn.close(0u32.into(), b"unresponsive");
        }
    }

    /// Adds a host to the known hosts (a bootstrap peer): it is verified like
    /// any candidate (a handshake proves its key, a ping measures it) and then
    /// offered to the table, which may still decline it.
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// let a = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
    /// let b = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
    /// a.add_known_host(b.addr()).await?;
    /// assert!(a.known_hosts().iter().any(|h| h.addr.id == b.id()));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn add_known_host(&self, addr: NodeAddr) -> Result<()> {
        let target = Target::Addr(addr.clone());
        self.shared().endpoint.connection(&target).await?;
        let ping = self.ping_with(target, true).await?;
        self.admit_host(
            NodeAddr::new(addr.id, [ping.remote]),
            ping.rtt,
            Some(ping.reply.quality(ping.rtt)),
        );
        Ok(())
    }

    /// Remembers addresses for a node, so it can then be called by id alone.
    pub fn add_peer_addr(&self, addr: &NodeAddr) {
        self.shared().endpoint.learn(addr);
    }

    /// The node's shared UDP socket (for the NAT layer: STUN, punching).
    pub(crate) fn socket(&self) -> &crate::net::DemuxSocket {
        &self.shared().endpoint.socket
    }
}
