//! [`NodeBuilder`]: the node's configuration, and [`NodeBuilder::spawn`],
//! which binds the socket and wires the layers and services together.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::service::{Routes, Service, ServiceContext, WeakNode};
use super::{accept, info, Node, NodeInner, Shared};
use crate::addr::NodeAddr;
use crate::config::{Limits, TransportSettings};
use crate::discovery::DiscoverySettings;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::identity::{Identity, NodeId};
use crate::nat::NatSettings;
use crate::peers::{Membership, MembershipSettings};
use crate::router::{Body, Handler, Request, Router, StreamRequest, RESERVED_PREFIX};
use crate::stats::Stats;
use crate::tasks::Tasks;
use crate::wire::MAX_HEADER;

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
    dht: super::dht::DhtSettings,
    content: super::content::ContentSettings,
    search: super::search::SearchSettings,
    messaging: super::messaging::MessagingSettings,
    store_path: Option<PathBuf>,
    services: Vec<Box<dyn Service>>,
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
            dht: Default::default(),
            content: Default::default(),
            search: Default::default(),
            messaging: Default::default(),
            store_path: None,
            services: Vec::new(),
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

    /// Replaces the DHT settings.
    pub fn dht(mut self, settings: super::dht::DhtSettings) -> Self {
        self.dht = settings;
        self
    }

    /// Replaces the content settings (replicas, chunk size, storage).
    pub fn content(mut self, settings: super::content::ContentSettings) -> Self {
        self.content = settings;
        self
    }

    /// Replaces the search settings (index replicas, probes per query,
    /// whether shared files are indexed).
    pub fn search(mut self, settings: super::search::SearchSettings) -> Self {
        self.search = settings;
        self
    }

    /// Replaces the messaging settings (mailbox replicas, how often the
    /// mailbox is drained, bounds, messages' time to live).
    pub fn messaging(mut self, settings: super::messaging::MessagingSettings) -> Self {
        self.messaging = settings;
        self
    }

    /// Bytes of content the node's store may hold (its own, replicas for
    /// others, what it fetched). The store lives in the data dir
    /// (`store.redb`), or in memory without one.
    pub fn storage(mut self, bytes: u64) -> Self {
        self.content.storage_bytes = bytes;
        self
    }

    /// Keeps the store in this file (instead of `store.redb` in the data
    /// dir, or memory), whatever else is set: e.g. a one-shot sharer of a
    /// large file.
    pub fn store_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.store_path = Some(path.into());
        self
    }

    /// A node to join the network through (verified like any host, retried
    /// until it answers); repeatable.
    pub fn bootstrap(mut self, addr: NodeAddr) -> Self {
        self.dht.bootstrap.push(addr);
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

    /// Adds a service: its routes are registered and its tasks started when
    /// the node starts (see [`Service`]). Services may use the reserved
    /// `butter/` namespace (the platform's own are services too), but never a
    /// name taken already.
    pub fn service(mut self, service: impl Service) -> Self {
        self.services.push(Box::new(service));
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
        let id = identity.id();
        let stats = Arc::new(Stats::default());
        let members = Arc::new(Membership::new(id, self.membership));
        let tasks = Tasks::new();
        let handle = WeakNode::default();
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
        // The platform's services first, then the application's.
        let mut services: Vec<Box<dyn Service>> = vec![
            Box::new(info::PingService {
                id,
                started: Instant::now(),
                members: members.clone(),
            }),
            Box::new(info::StatsService(stats.clone())),
            Box::new(info::RoutesService),
            Box::new(super::membership::PeersService(members.clone())),
            Box::new(super::goodbye::GoodbyeService(members.clone())),
            Box::new(super::punch::PunchService),
            Box::new(super::relay::RelayInService),
            Box::new(super::udp::UdpService),
            Box::new(super::introducers::IntroducerClient),
        ];
        if self.dht.serve {
            services.push(Box::new(super::dht::DhtService));
            services.push(Box::new(super::content::ContentService));
            services.push(Box::new(super::search::SearchService {
                serve: self.search.serve,
            }));
        }
        services.push(Box::new(super::messaging::MessagingService {
            serve: self.dht.serve && self.messaging.serve,
        }));
        if let Some(socket) = lan {
            services.push(Box::new(super::lan::LanService::new(socket, discovery)));
        }
        services.extend(self.services);
        let mut router = self.router;
        let mut error = None;
        for service in &services {
            service.routes(&mut Routes::new(
                &mut router,
                service.name(),
                handle.clone(),
                &mut error,
            ));
        }
        if let Some(e) = error {
            return Err(e);
        }
        // Connections (dialed or accepted) are served by tasks that need the node's
        // shared state, which does not exist yet while the endpoint is built.
        let weak_shared: Arc<OnceLock<Weak<Shared>>> = Arc::default();
        let hook = weak_shared.clone();
        let on_connection = Box::new(move |peer: NodeId, conn: quinn::Connection| {
            if let Some(shared) = hook.get().and_then(Weak::upgrade) {
                let tasks = shared.tasks.clone();
                tasks.spawn(accept::serve_connection(shared, peer, conn));
            }
        });
        let endpoint = Endpoint::bind(
            &identity,
            self.listen,
            &self.limits,
            self.transport,
            stats.clone(),
            tasks.clone(),
            on_connection,
        )?;
        let budget = crate::budget::BodyBudget::new(
            self.limits.max_buffered_bytes,
            self.limits.buffered_per_addr,
            self.limits.buffered_per_prefix,
        );
        let admission = crate::admission::Admission::new(&self.limits);
        let stun_limits = super::udp::StunLimits::new(&self.limits);
        let upnp = Arc::new(tokio::sync::watch::channel(crate::nat::UpnpStatus::Disabled).0);
        if let Some(local) =
            super::upnp::UpnpService::wanted(&self.nat.upnp, endpoint.local_addr().ok())
        {
            services.push(Box::new(super::upnp::UpnpService {
                settings: self.nat.upnp.clone(),
                local,
                label: format!("butter {}", id.short()),
                status: upnp.clone(),
                stats: stats.clone(),
            }));
        }
        let budget_bytes = self.content.storage_bytes;
        // A guest (serving no DHT) keeps nothing: its store is in memory,
        // and it can share a data dir (its identity) with a running node.
        let store = match (&self.store_path, &self.data_dir) {
            (Some(path), _) => crate::store::Store::open(path, budget_bytes)?,
            (None, Some(dir)) if self.dht.serve => {
                crate::store::Store::open(dir.join("store.redb"), budget_bytes)?
            }
            (None, _) => crate::store::Store::in_memory(budget_bytes)?,
        };
        let dht = Arc::new(super::dht::DhtState::new(self.dht));
        let search_state = Arc::new(super::search::SearchState::new(self.search));
        let taken = super::search::persist::restore(&search_state, &store);
        if taken != (0, 0) {
            tracing::debug!(
                held = taken.0,
                indexed = taken.1,
                "index entries taken back from the store"
            );
        }
        let mut messaging = super::messaging::MessagingState::new(self.messaging);
        let taken = super::messaging::persist::restore(&mut messaging, &store);
        if taken != (0, 0) {
            tracing::debug!(
                waiting = taken.0,
                held = taken.1,
                "messages taken back from the store"
            );
        }
        let restored = super::dht::persist::restore(&dht, &store);
        if restored != Default::default() {
            tracing::debug!(
                records = restored.records,
                providers = restored.providers,
                "DHT entries taken back from the store"
            );
        }
        let shared = Arc::new(Shared {
            endpoint,
            router,
            budget,
            admission,
            stun_limits,
            predictions: Default::default(),
            shut: Default::default(),
            closing: Default::default(),
            verify_slots: Arc::new(tokio::sync::Semaphore::new(
                super::membership::VERIFY_AT_ONCE,
            )),
            verify_waiting: std::sync::Mutex::new(
                crate::peers::waiting::Waiting::new(
                    super::membership::WAITING,
                    super::membership::WAITING_PER_PREFIX,
                    super::membership::MAX_WAIT,
                )
                .lan_exempt(members.settings.lan_exempt),
            ),
            limits: self.limits,
            stats,
            identity,
            members,
            dht,
            content: super::content::ContentState::new(self.content, store),
            search: search_state,
            messaging: Arc::new(messaging),
            stun: Default::default(),
            nat: self.nat,
            traversals: Default::default(),
            observed: Default::default(),
            upnp,
            punch_watch: Default::default(),
            tasks: tasks.clone(),
        });
        let _ = weak_shared.set(Arc::downgrade(&shared));
        let _ = shared.stats.store.set(shared.content.store.clone());
        tasks.spawn(accept::accept_loop(
            shared.endpoint.quinn.clone(),
            Arc::downgrade(&shared),
        ));
        let inner = Arc::new(NodeInner {
            shared,
            services: std::sync::Mutex::new(Vec::new()),
        });
        handle.set(&inner);
        let node = Node { inner };
        let ctx = ServiceContext {
            node: handle,
            tasks,
        };
        for service in &services {
            service.start(&ctx);
        }
        // Kept as long as the node: a service's state lives with it.
        *node
            .inner
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = services;
        tracing::info!(addr = %node.addr(), "node started");
        Ok(node)
    }
}
