//! [`Node`] and [`NodeBuilder`]: wire the layers together and own the background
//! tasks (membership upkeep in `membership`, LAN discovery in `lan`).

mod introducers;
mod lan;
mod membership;
mod reach;
mod udp;
mod upgrade;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::addr::{NodeAddr, Target};
use crate::admission::Verdict;
use crate::config::{Limits, TransportSettings};
use crate::discovery::DiscoverySettings;
use crate::endpoint::{connection_error, Endpoint};
use crate::error::{Error, Result};
use crate::identity::{tls, Identity, NodeId};
use crate::nat::NatSettings;
use crate::peers::{
    HostInfo, Membership, MembershipSettings, PeerEvent, PeerRecord, PeersRequest, Quality,
    PEERS_ROUTE,
};
use crate::router::{
    self, Body, Handler, RecvBody, Request, Router, StreamRequest, RESERVED_PREFIX,
};
use crate::stats::{Stats, StatsSnapshot};
use crate::wire::{self, RequestHeader, ResponseHeader, FLAG_STREAMED, MAX_HEADER};

/// Route of the built-in liveness and identity check.
pub const PING_ROUTE: &str = "butter/ping";

/// Route of a node's counters.
pub const STATS_ROUTE: &str = "butter/stats";

/// Route a departing node calls on its known hosts: they drop it at once
/// instead of waiting for a liveness check to fail. The connection
/// authenticates who says goodbye.
pub const GOODBYE_ROUTE: &str = "butter/goodbye";

/// How long a departing node waits for its known hosts to hear its goodbye.
const GOODBYE_WAIT: Duration = Duration::from_millis(500);

/// Request of `butter/ping` (an empty body means all defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {
    /// The caller keeps the callee in its known-hosts table (liveness check); the
    /// callee counts how many hosts know it.
    pub in_table: bool,
}

/// Reply of `butter/ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReply {
    /// The answering node.
    pub id: NodeId,
    /// Its Butter version.
    pub version: String,
    /// How long it has been running, in milliseconds.
    pub uptime_ms: u64,
    /// How many hosts it knows.
    pub known_hosts: u32,
    /// How many hosts told it recently that they keep it in their table.
    pub known_by: u32,
    /// Storage it offers, in bytes.
    pub storage_bytes: u64,
    /// Whether it is an introducer.
    pub introducer: bool,
}

impl PingReply {
    /// The quality of the answering host, with our measured round trip.
    pub fn quality(&self, rtt: Duration) -> Quality {
        Quality {
            uptime_ms: self.uptime_ms,
            storage_bytes: self.storage_bytes,
            degree: self.known_hosts,
            known_by: self.known_by,
            rtt_us: rtt.as_micros().min(u32::MAX as u128) as u32,
            introducer: self.introducer,
        }
    }
}

/// Result of [`Node::ping`].
#[derive(Debug, Clone)]
pub struct Ping {
    /// What the peer said.
    pub reply: PingReply,
    /// Round trip of the call (on an established connection: one stream).
    pub rtt: Duration,
    /// The address the connection runs over.
    pub remote: SocketAddr,
}

/// Configures and starts a [`Node`].
///
/// ```
/// # async fn run() -> butter::Result<()> {
/// let node = butter::Node::builder()
///     .listen("127.0.0.1:0".parse().unwrap())
///     .route("reverse", |req: butter::Request| async move {
///         Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
///     })
///     .spawn()
///     .await?;
/// println!("listening as {}", node.addr());
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until .spawn()"]
pub struct NodeBuilder {
    identity: Option<Identity>,
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    router: Router,
    limits: Limits,
    transport: TransportSettings,
    membership: MembershipSettings,
    discovery: DiscoverySettings,
    nat: NatSettings,
    error: Option<Error>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            identity: None,
            data_dir: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            router: Router::default(),
            limits: Limits::default(),
            transport: TransportSettings::default(),
            membership: MembershipSettings::default(),
            discovery: DiscoverySettings::default(),
            nat: NatSettings::default(),
            error: None,
        }
    }
}

impl NodeBuilder {
    /// Uses this identity (otherwise: loaded from, or created in, the data dir; with
    /// no data dir, a fresh one for this run).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Where the node keeps its key (and later its data).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The UDP address to listen on (default `0.0.0.0:0`, any free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Registers a buffered route: the handler gets the whole body in memory.
    /// Names starting with `butter/` are reserved ([`Error::ReservedRoute`] at spawn).
    pub fn route<F, Fut, R>(self, name: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        self.add_route(name, Handler::buffered(handler))
    }

    /// Registers a streaming route: the handler reads the body as it arrives and
    /// may reply with a stream ([`Body::from_reader`]); sizes are unbounded.
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// // Echo whatever arrives, without holding it in memory.
    /// let node = butter::Node::builder()
    ///     .stream_route("echo", |req: butter::StreamRequest| async move { Ok(req.body) })
    ///     .spawn()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn stream_route<F, Fut, R>(self, name: &str, handler: F) -> Self
    where
        F: Fn(StreamRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        self.add_route(name, Handler::streaming(handler))
    }

    /// Registers a typed route: request and reply are serde types sent as postcard.
    /// Call it with [`Node::call_typed`].
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// let node = butter::Node::builder()
    ///     .listen("127.0.0.1:0".parse().unwrap())
    ///     .typed_route("add", |_peer, (a, b): (u32, u32)| async move { Ok(a + b) })
    ///     .spawn()
    ///     .await?;
    /// let sum: u32 = node.call_typed(node.addr(), "add", &(2u32, 3u32)).await?;
    /// assert_eq!(sum, 5);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn typed_route<F, Fut, Req, Resp>(self, name: &str, handler: F) -> Self
    where
        F: Fn(NodeId, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
    {
        self.add_route(name, Handler::typed(handler))
    }

    fn add_route(mut self, name: &str, handler: Handler) -> Self {
        if name.starts_with(RESERVED_PREFIX) {
            self.error
                .get_or_insert(Error::ReservedRoute(name.to_string()));
        } else if name.is_empty() || name.len() > 1024 {
            self.error
                .get_or_insert(Error::Config(format!("bad route name {name:?}")));
        } else {
            self.router.insert(name, handler);
        }
        self
    }

    /// Sets the largest body a buffered (or typed) route already registered
    /// takes, instead of [`Limits::max_body`]: a route that expects a small
    /// request says so, and larger ones are refused before they are read.
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// let node = butter::Node::builder()
    ///     .listen("127.0.0.1:0".parse().unwrap())
    ///     .typed_route("add", |_peer, (a, b): (u32, u32)| async move { Ok(a + b) })
    ///     .body_limit("add", 64)
    ///     .spawn()
    ///     .await?;
    /// let too_big = node.call(node.addr(), "add", vec![0u8; 65]).await;
    /// assert!(matches!(too_big, Err(butter::Error::TooLarge { limit: 64, .. })));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn body_limit(mut self, route: &str, max_body: usize) -> Self {
        if !self.router.set_limit(route, max_body) {
            self.error
                .get_or_insert(Error::Config(format!("body_limit: no route {route:?}")));
        }
        self
    }

    /// Runs `guard` on every request to `route` once its header is read and
    /// before its body is: an error refuses the request (the caller gets it as
    /// a remote error). For Butter's own services (rate limits per source).
    #[doc(hidden)]
    pub fn platform_guard<G>(mut self, route: &str, guard: G) -> Self
    where
        G: Fn(&NodeId, SocketAddr) -> Result<()> + Send + Sync + 'static,
    {
        if !self.router.set_guard(route, Arc::new(guard)) {
            self.error
                .get_or_insert(Error::Config(format!("guard: no route {route:?}")));
        }
        self
    }

    /// Replaces all limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Largest body held in memory (see [`Limits::max_body`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.limits.max_body = bytes;
        self
    }

    /// Time limit of a buffered call (see [`Limits::call_timeout`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.limits.call_timeout = timeout;
        self
    }

    /// Replaces the QUIC transport settings.
    pub fn transport(mut self, settings: TransportSettings) -> Self {
        self.transport = settings;
        self
    }

    /// Closes connections idle for this long (see [`TransportSettings::idle_timeout`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.transport.idle_timeout = timeout;
        self
    }

    /// Sends keep-alives on every connection (see [`TransportSettings::keep_alive`]).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.transport.keep_alive = Some(interval);
        self
    }

    /// Replaces the membership settings (known hosts, liveness).
    pub fn membership(mut self, settings: MembershipSettings) -> Self {
        self.membership = settings;
        self
    }

    /// Memory allowed for known hosts; the table's capacity follows from it
    /// (see [`MembershipSettings::memory_bytes`]).
    pub fn memory(mut self, bytes: u64) -> Self {
        self.membership.memory_bytes = bytes;
        self
    }

    /// Hosts the node wants to know; below this it discovers actively.
    pub fn want_hosts(mut self, n: usize) -> Self {
        self.membership.want_hosts = n;
        self
    }

    /// Base interval of liveness checks of known hosts.
    pub fn liveness_interval(mut self, interval: Duration) -> Self {
        self.membership.liveness_interval = interval;
        self
    }

    /// Replaces the LAN discovery settings.
    pub fn discovery(mut self, settings: DiscoverySettings) -> Self {
        self.discovery = settings;
        self
    }

    /// Turns LAN multicast discovery on or off (on by default).
    pub fn lan_discovery(mut self, enabled: bool) -> Self {
        self.discovery.enabled = enabled;
        self
    }

    /// Adds an introducer: the node registers with it, asks it for peers when
    /// lonely, and reaches peers behind NATs through it (punch, or relay).
    ///
    /// ```
    /// # fn f(intro: butter::NodeAddr) {
    /// let builder = butter::Node::builder().introducer(intro);
    /// # let _ = builder; }
    /// ```
    pub fn introducer(mut self, addr: NodeAddr) -> Self {
        self.nat.introducers.push(addr);
        self
    }

    /// Replaces the NAT-traversal settings (introducers, punch and
    /// registration timing).
    pub fn nat(mut self, settings: NatSettings) -> Self {
        self.nat = settings;
        self
    }

    /// Registers a route in the reserved `butter/` namespace. For Butter's own
    /// services built on a node (the `butter-introducer` binary); applications
    /// use [`NodeBuilder::route`] and friends.
    #[doc(hidden)]
    pub fn platform_route<F, Fut, Req, Resp>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(NodeId, std::net::SocketAddr, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
    {
        let handler = Arc::new(handler);
        self.router.insert(
            name,
            Handler::buffered(move |req: Request| {
                let handler = handler.clone();
                async move {
                    let value: Req = req.decode()?;
                    let reply = handler(req.peer(), req.remote_addr(), value).await?;
                    postcard::to_allocvec(&reply)
                        .map_err(|e| Error::handler(format!("cannot encode reply: {e}")))
                }
            }),
        );
        self
    }

    /// Registers a streaming route in the reserved `butter/` namespace (see
    /// [`NodeBuilder::platform_route`]).
    #[doc(hidden)]
    pub fn platform_stream_route<F, Fut, R>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(StreamRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        self.router.insert(name, Handler::streaming(handler));
        self
    }

    /// Binds the socket and starts serving. Must run inside a tokio runtime.
    pub async fn spawn(self) -> Result<Node> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.limits.max_header > MAX_HEADER {
            return Err(Error::Config(format!(
                "max_header is capped at {MAX_HEADER}"
            )));
        }
        let identity = match (self.identity, &self.data_dir) {
            (Some(i), _) => i,
            (None, Some(dir)) => Identity::load_or_generate(dir)?,
            (None, None) => Identity::generate(),
        };
        let started = Instant::now();
        let mut router = self.router;
        let id = identity.id();
        let stats = Arc::new(Stats::default());
        let members = Arc::new(Membership::new(id, self.membership));
        let m = members.clone();
        router.insert(
            PING_ROUTE,
            Handler::buffered(move |req: Request| {
                let m = m.clone();
                async move {
                    let ping: PingRequest = if req.body().is_empty() {
                        PingRequest::default()
                    } else {
                        req.decode()?
                    };
                    if ping.in_table {
                        m.known_by_peer(req.peer());
                    }
                    let reply = PingReply {
                        id,
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        uptime_ms: started.elapsed().as_millis() as u64,
                        known_hosts: m.len() as u32,
                        known_by: m.known_by_count(),
                        storage_bytes: m.settings.storage_bytes,
                        introducer: m.settings.introducer,
                    };
                    postcard::to_allocvec(&reply).map_err(|e| Error::handler(e.to_string()))
                }
            }),
        );
        router.set_limit(PING_ROUTE, 1024);
        let m = members.clone();
        router.insert(
            PEERS_ROUTE,
            Handler::typed(move |peer, req: PeersRequest| {
                let m = m.clone();
                async move { Ok(m.sample(req.max as usize, &peer)) }
            }),
        );
        router.set_limit(PEERS_ROUTE, 64);
        let st = stats.clone();
        router.insert(
            STATS_ROUTE,
            Handler::typed(move |_peer, (): ()| {
                let st = st.clone();
                async move { Ok(st.snapshot()) }
            }),
        );
        // Connections (dialed or accepted) are served by tasks that need the node's
        // shared state, which does not exist yet while the endpoint is built.
        router.set_limit(STATS_ROUTE, 64);
        let m = members.clone();
        router.insert(
            GOODBYE_ROUTE,
            Handler::typed(move |peer, (): ()| {
                let m = m.clone();
                async move {
                    m.remove(&peer, "said goodbye");
                    Ok(())
                }
            }),
        );
        router.set_limit(GOODBYE_ROUTE, 16);
        let weak_shared: Arc<OnceLock<Weak<Shared>>> = Arc::default();
        router.insert(
            crate::nat::protocol::PUNCH_ROUTE,
            reach::punch_route(weak_shared.clone()),
        );
        router.set_limit(crate::nat::protocol::PUNCH_ROUTE, 4096);
        router.insert(
            crate::nat::protocol::RELAY_IN_ROUTE,
            reach::relay_in_route(weak_shared.clone()),
        );
        let hook = weak_shared.clone();
        let on_connection = Box::new(move |peer: NodeId, conn: quinn::Connection| {
            if let Some(shared) = hook.get().and_then(Weak::upgrade) {
                tokio::spawn(serve_connection(shared, peer, conn));
            }
        });
        let endpoint = Endpoint::bind(
            &identity,
            self.listen,
            &self.limits,
            self.transport,
            stats.clone(),
            on_connection,
        )?;
        // A node bound to one address discovers only on that address's interface;
        // one bound to loopback is not on any LAN.
        let mut discovery = self.discovery;
        if discovery.interfaces.is_empty() && !self.listen.ip().is_unspecified() {
            match self.listen.ip() {
                IpAddr::V4(v4) if !v4.is_loopback() => discovery.interfaces = vec![v4],
                _ => discovery.enabled = false,
            }
        }
        let lan = if discovery.enabled {
            Some(crate::discovery::multicast::MulticastSocket::open(
                &discovery,
            )?)
        } else {
            None
        };
        let budget = crate::budget::BodyBudget::new(
            self.limits.max_buffered_bytes,
            self.limits.buffered_per_addr,
            self.limits.buffered_per_prefix,
        );
        let admission = crate::admission::Admission::new(&self.limits);
        let stun_limits = udp::StunLimits::new(&self.limits);
        let shared = Arc::new(Shared {
            endpoint,
            router,
            budget,
            admission,
            stun_limits,
            predictions: Default::default(),
            shut: Default::default(),
            closing: Default::default(),
            verify_slots: Arc::new(tokio::sync::Semaphore::new(membership::VERIFY_AT_ONCE)),
            limits: self.limits,
            stats,
            identity,
            members,
            stun: Default::default(),
            nat: self.nat,
            traversals: Default::default(),
            observed: Default::default(),
            upnp: Arc::new(tokio::sync::watch::channel(crate::nat::UpnpStatus::Disabled).0),
            punch_watch: Default::default(),
        });
        let _ = weak_shared.set(Arc::downgrade(&shared));
        tokio::spawn(accept_loop(
            shared.endpoint.quinn.clone(),
            Arc::downgrade(&shared),
        ));
        let (closed_tx, closed) = tokio::sync::watch::channel(());
        let upnp_task =
            upnp_wanted(&shared.nat.upnp, shared.endpoint.local_addr().ok()).map(|local| {
                tokio::spawn(crate::nat::upnp::run(
                    shared.nat.upnp.clone(),
                    local,
                    format!("butter {}", id.short()),
                    shared.upnp.clone(),
                    shared.stats.clone(),
                    closed.clone(),
                ))
            });
        let inner = Arc::new(NodeInner {
            shared,
            closed: closed_tx,
            upnp_task: Mutex::new(upnp_task),
        });
        let node = Node { inner };
        tokio::spawn(membership::upkeep(
            Arc::downgrade(&node.inner),
            closed.clone(),
        ));
        let side = node.shared().endpoint.socket.subscribe(1024);
        tokio::spawn(udp::run(Arc::downgrade(&node.inner), side, closed.clone()));
        for intro in node.shared().nat.introducers.clone() {
            node.add_peer_addr(&intro);
            tokio::spawn(introducers::run(
                Arc::downgrade(&node.inner),
                intro,
                closed.clone(),
            ));
        }
        if let Some(socket) = lan {
            tokio::spawn(lan::run(
                Arc::downgrade(&node.inner),
                socket,
                discovery,
                closed,
            ));
        }
        tracing::info!(addr = %node.addr(), "node started");
        Ok(node)
    }
}

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
    limits: Limits,
    stats: Arc<Stats>,
    identity: Identity,
    members: Arc<Membership>,
    stun: crate::nat::PendingStun,
    nat: NatSettings,
    traversals: reach::Traversals,
    observed: introducers::Observed,
    upnp: Arc<tokio::sync::watch::Sender<crate::nat::UpnpStatus>>,
    punch_watch: crate::nat::punch::PunchWatch,
}

/// The address to map on the gateway, if the node should: UPnP on, and bound
/// to IPv4 beyond loopback (igd-next maps IPv4 ports; a loopback node is not
/// on any LAN).
fn upnp_wanted(
    settings: &crate::nat::UpnpSettings,
    local: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let local = local?;
    (settings.enabled && local.is_ipv4() && !local.ip().is_loopback() && local.port() != 0)
        .then_some(local)
}

/// Owned by the handles only: dropping the last handle shuts the node down.
struct NodeInner {
    shared: Arc<Shared>,
    /// Dropped with the node: background tasks watching it stop.
    closed: tokio::sync::watch::Sender<()>,
    /// Holds the UPnP mapping; shutdown waits for it to remove the mapping.
    upnp_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        self.shared.endpoint.close_all();
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Weak<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let remote = incoming.remote_address();
        // Relay tunnels come only from this node's introducers (bounded there);
        // every other source is counted before any cryptography is spent.
        let slot = if crate::net::is_virtual(remote) {
            None
        } else {
            match shared
                .admission
                .consider(remote.ip(), incoming.remote_address_validated())
            {
                Verdict::Accept(slot) => Some(slot),
                Verdict::Retry => {
                    shared
                        .stats
                        .handshakes_retried
                        .fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                Verdict::Refuse => {
                    shared
                        .stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "incoming connection refused: over a limit");
                    incoming.refuse();
                    continue;
                }
            }
        };
        tokio::spawn(async move {
            let mut slot = slot;
            let outcome = incoming.await;
            if let Some(s) = &mut slot {
                s.handshake_done();
            }
            match outcome {
                Ok(conn) => match tls::peer_id(&conn) {
                    Some(peer) => {
                        shared.stats.handshakes_in.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %peer.short(), %remote, "accepted connection");
                        shared.endpoint.register_incoming(peer, conn.clone());
                        let stats = shared.stats.clone();
                        drop(shared);
                        // The slot is held as long as the connection lives.
                        stats.connections_in.fetch_add(1, Ordering::Relaxed);
                        conn.closed().await;
                        stats.connections_in.fetch_sub(1, Ordering::Relaxed);
                        drop(slot);
                    }
                    None => conn.close(1u32.into(), b"no peer identity"),
                },
                Err(e) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, error = %e, "incoming handshake failed");
                }
            }
        });
    }
}

/// Serves the request streams a peer opens on one connection, each in its own task.
async fn serve_connection(shared: Arc<Shared>, peer: NodeId, conn: quinn::Connection) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let remote = conn.remote_address();
                tokio::spawn(async move {
                    let ctx = router::Serving {
                        limits: &shared.limits,
                        stats: &shared.stats,
                        budget: &shared.budget,
                    };
                    shared.router.serve(peer, remote, send, recv, &ctx).await
                });
            }
            Err(e) => {
                tracing::trace!(peer = %peer.short(), reason = %e, "connection ended");
                break;
            }
        }
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
    /// an unspecified address, every interface address (non-loopback first);
    /// then the UPnP-mapped address, while the gateway holds one.
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
        let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| ip.is_ipv4() == local.is_ipv4() || (local.is_ipv6() && !ip.is_ipv4()))
            .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
            .collect();
        ips.sort_by_key(|ip| (ip.is_loopback(), *ip));
        ips.dedup();
        if ips.is_empty() {
            ips.push(if local.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            });
        }
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

    /// Asks a node for a sample of its known hosts (`butter/peers`).
    pub async fn peers_of(&self, target: impl Into<Target>, max: u16) -> Result<Vec<PeerRecord>> {
        self.call_typed(target, PEERS_ROUTE, &PeersRequest { max })
            .await
    }

    /// Fetches a node's counters (`butter/stats`).
    pub async fn stats_of(&self, target: impl Into<Target>) -> Result<StatsSnapshot> {
        self.call_typed(target, STATS_ROUTE, &()).await
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
        self.members().admit(HostInfo {
            addr: NodeAddr::new(addr.id, [ping.remote]),
            quality: ping.reply.quality(ping.rtt),
            last_seen: Instant::now(),
        });
        Ok(())
    }

    /// Remembers addresses for a node, so it can then be called by id alone.
    pub fn add_peer_addr(&self, addr: &NodeAddr) {
        self.shared().endpoint.learn(addr);
    }

    /// Opens a request stream on the (cached or new) connection to `target`, retrying
    /// once on a fresh connection if the cached one turns out to be dead.
    async fn open(&self, target: &Target) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let endpoint = &self.shared().endpoint;
        if self.shared().shut.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        for attempt in 0..2 {
            let conn = match self.connection(target).await {
                Ok(c) => c,
                Err(e) => {
                    // Failures seen by any call count for liveness too.
                    if matches!(e, Error::Unreachable(_) | Error::IdentityMismatch(_)) {
                        self.shared()
                            .members
                            .remove(&target.id(), "a call to it failed");
                    }
                    return Err(e);
                }
            };
            match conn.open_bi().await {
                Ok(streams) => {
                    self.shared()
                        .stats
                        .calls_made
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(streams);
                }
                Err(e) => {
                    endpoint.invalidate(&target.id(), &conn);
                    let err = connection_error(e);
                    if attempt == 1 || matches!(err, Error::IdentityMismatch(_)) {
                        return Err(err);
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn send_request(
        &self,
        target: &Target,
        route: &str,
        body: Body,
    ) -> Result<(
        quinn::RecvStream,
        Option<tokio::task::JoinHandle<Result<()>>>,
    )> {
        let limits = &self.shared().limits;
        let header = RequestHeader {
            route: route.to_string(),
            flags: if body.len().is_none() {
                FLAG_STREAMED
            } else {
                0
            },
            body_len: body.len().map(|n| n as u64),
        };
        let frame = wire::encode_frame(&header, limits.max_header)?;
        let (mut send, recv) = self.open(target).await?;
        send.write_all(&frame).await.map_err(router::write_error)?;
        if body.len().is_some() {
            // A refusal (the callee stopped reading) is reported by the reply status.
            match body.write_to(&mut send, limits.stall_timeout).await {
                Ok(()) | Err(Error::Remote(_)) => Ok((recv, None)),
                Err(e) => Err(e),
            }
        } else {
            // Streams upload while the caller waits for (and reads) the reply.
            let stall = limits.stall_timeout;
            let writer = tokio::spawn(async move { body.write_to(&mut send, stall).await });
            Ok((recv, Some(writer)))
        }
    }

    async fn read_status(recv: &mut quinn::RecvStream, route: &str) -> Result<()> {
        let header: ResponseHeader = wire::read_frame(recv, MAX_HEADER).await?;
        match header.status.into_error(route) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Calls `route` on a peer with an in-memory body and returns the reply.
    ///
    /// Bodies and replies are bounded by [`Limits::max_body`] (use
    /// [`Node::call_stream`] for larger ones); the whole call by
    /// [`Limits::call_timeout`].
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// let server = butter::Node::builder()
    ///     .listen("127.0.0.1:0".parse().unwrap())
    ///     .route("reverse", |req: butter::Request| async move {
    ///         Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
    ///     })
    ///     .spawn().await?;
    /// let client = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
    /// let reply = client.call(server.addr(), "reverse", "hello").await?;
    /// assert_eq!(&reply[..], b"olleh");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn call(
        &self,
        target: impl Into<Target>,
        route: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes> {
        let target = target.into();
        let body: Bytes = body.into();
        let limits = &self.shared().limits;
        if body.len() > limits.max_body {
            return Err(Error::TooLarge {
                what: "request body (use call_stream)",
                limit: limits.max_body as u64,
            });
        }
        let call = async {
            let (mut recv, _) = self.send_request(&target, route, body.into()).await?;
            Self::read_status(&mut recv, route).await?;
            router::read_to_end(&mut recv, limits.max_body, "reply body").await
        };
        tokio::time::timeout(limits.call_timeout, call)
            .await
            .map_err(|_| Error::Timeout("call"))?
    }

    /// Calls `route` with a body of any size ([`Body::from_reader`] streams it) and
    /// returns the reply as a stream. No overall time limit applies once the reply
    /// has started; a dead peer ends the stream with an error after the idle timeout.
    pub async fn call_stream(
        &self,
        target: impl Into<Target>,
        route: &str,
        body: impl Into<Body>,
    ) -> Result<RecvBody> {
        let target = target.into();
        let limits = &self.shared().limits;
        let call = async {
            let (mut recv, writer) = self.send_request(&target, route, body.into()).await?;
            // The upload may legitimately take long (the handler may answer
            // only once it read everything); a peer that stops reading it is
            // caught by the stall timeout, one that never answers by the
            // call timeout.
            let status =
                tokio::time::timeout(limits.call_timeout, Self::read_status(&mut recv, route))
                    .await
                    .unwrap_or(Err(Error::Timeout("reply header")));
            Ok::<_, Error>((recv, writer, status))
        };
        let (recv, writer, status) = call.await?;
        match status {
            Ok(()) => Ok(RecvBody::new(recv, Some(limits.stall_timeout))),
            Err(e) => {
                if let Some(w) = writer {
                    w.abort();
                }
                Err(e)
            }
        }
    }

    /// Calls a typed route (see [`NodeBuilder::typed_route`]): `req` is sent as
    /// postcard, the reply decoded into `Resp`.
    pub async fn call_typed<Req, Resp>(
        &self,
        target: impl Into<Target>,
        route: &str,
        req: &Req,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body =
            postcard::to_allocvec(req).map_err(|e| Error::Malformed(format!("encode: {e}")))?;
        let reply = self.call(target, route, body).await?;
        postcard::from_bytes(&reply).map_err(|e| Error::Malformed(format!("reply of {route}: {e}")))
    }

    /// Checks a peer is alive and is who we think: calls `butter/ping`.
    pub async fn ping(&self, target: impl Into<Target>) -> Result<Ping> {
        self.ping_with(target.into(), false).await
    }

    pub(crate) async fn ping_with(&self, target: Target, in_table: bool) -> Result<Ping> {
        // Dial first, so the round trip measures one call rather than a handshake.
        let conn = self.connection(&target).await?;
        let start = Instant::now();
        let reply: PingReply = self
            .call_typed(target.clone(), PING_ROUTE, &PingRequest { in_table })
            .await?;
        let rtt = start.elapsed();
        if reply.id != target.id() {
            return Err(Error::mismatch(
                &target.id(),
                format!("ping answered by {}", reply.id.short()),
            ));
        }
        Ok(Ping {
            reply,
            rtt,
            remote: conn.remote_address(),
        })
    }

    /// Asks a STUN server (any RFC 8489 server, or another node) for this node's
    /// reflexive address: how its UDP port looks from the server's side of the
    /// NATs. Sent from the node's own port, so the answer is the mapping its QUIC
    /// connections use too.
    pub async fn stun(&self, server: SocketAddr) -> Result<SocketAddr> {
        let (tid, request) = crate::nat::stun::binding_request()?;
        let mut answer = self.shared().stun.start(tid);
        // Retransmit like RFC 8489 (doubling), within a bounded total.
        let mut wait = Duration::from_millis(250);
        for _ in 0..4 {
            if let Err(e) = self.shared().endpoint.socket.send_raw(server, &request) {
                tracing::debug!(%server, error = %e, "STUN send failed");
            }
            match tokio::time::timeout(wait, &mut answer).await {
                Ok(Ok(mapped)) => return Ok(mapped),
                Ok(Err(_)) => break,
                Err(_) => wait *= 2,
            }
        }
        Err(Error::Timeout("STUN binding request"))
    }

    /// Closes every connection and the socket, waiting (briefly) for peers to
    /// be told.
    pub async fn shutdown(&self) {
        if self.shared().closing.swap(true, Ordering::SeqCst) {
            return;
        }
        // Known hosts hear it first (briefly bounded; never a traversal).
        let hosts = self.members().hosts();
        let goodbyes = hosts.into_iter().map(|h| async move {
            let target = Target::Addr(h.addr);
            self.shared().endpoint.connection(&target).await?;
            self.call_typed::<_, ()>(target, GOODBYE_ROUTE, &()).await
        });
        let said =
            tokio::time::timeout(GOODBYE_WAIT, futures_util::future::join_all(goodbyes)).await;
        tracing::debug!(
            told = said.map_or(0, |r| r.iter().filter(|r| r.is_ok()).count()),
            "said goodbye"
        );
        self.shared().shut.store(true, Ordering::SeqCst);
        // Stops the background tasks (they watch this channel).
        self.inner.closed.send_replace(());
        self.shared().endpoint.close_all();
        let endpoint = &self.shared().endpoint.quinn;
        let upnp = self
            .inner
            .upnp_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // The mapping removal is itself bounded (a dead gateway cannot hold us).
        let removed = async {
            if let Some(task) = upnp {
                let _ = task.await;
            }
        };
        let idle = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle());
        let _ = tokio::join!(removed, idle);
    }

    /// Where the node's UPnP port mapping stands.
    ///
    /// ```
    /// # async fn f(node: butter::Node) {
    /// if let butter::UpnpStatus::Mapped { external, .. } = node.upnp_status() {
    ///     println!("reachable from outside at {external}");
    /// }
    /// # }
    /// ```
    pub fn upnp_status(&self) -> crate::nat::UpnpStatus {
        self.shared().upnp.borrow().clone()
    }

    /// Follows the UPnP status as it changes (mapped, renewed, lost, released).
    pub fn upnp_changes(&self) -> tokio::sync::watch::Receiver<crate::nat::UpnpStatus> {
        self.shared().upnp.subscribe()
    }

    /// The node's shared UDP socket (for the NAT layer: STUN, punching).
    pub fn socket(&self) -> &crate::net::DemuxSocket {
        &self.shared().endpoint.socket
    }
}
