//! Services: a bundle of routes (each with its body limit and guard) and
//! background tasks, registered on the builder through one trait. The
//! platform's own protocols are services (ping, stats, peers, goodbye,
//! punch, relay-in, the STUN responder, LAN discovery, the introducer client,
//! UPnP; the introducer and the DHT next); `node` only wires them.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use butter::node::{Routes, Service, ServiceContext};
//!
//! /// Counts the calls it gets; a task reports the count every second.
//! #[derive(Default)]
//! struct Counter(Arc<AtomicU64>);
//!
//! impl Service for Counter {
//!     fn name(&self) -> &'static str {
//!         "counter"
//!     }
//!     fn routes(&self, routes: &mut Routes<'_>) {
//!         let n = self.0.clone();
//!         // Requests are tiny: 16 bytes is plenty, larger ones are refused unread.
//!         routes.typed("counter/add", 16, move |_peer, _from, by: u64| {
//!             let n = n.clone();
//!             async move { Ok(n.fetch_add(by, Ordering::Relaxed) + by) }
//!         });
//!     }
//!     fn start(&self, ctx: &ServiceContext) {
//!         let n = self.0.clone();
//!         // Owned by the node: cancelled on shutdown or when the node is dropped.
//!         ctx.spawn(async move {
//!             let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
//!             loop {
//!                 every.tick().await;
//!                 tracing::debug!(calls = n.load(Ordering::Relaxed), "counter");
//!             }
//!         });
//!     }
//! }
//!
//! # async fn run() -> butter::Result<()> {
//! let node = butter::Node::builder()
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .service(Counter::default())
//!     .spawn()
//!     .await?;
//! let total: u64 = node.call_typed(node.addr(), "counter/add", &5u64).await?;
//! assert_eq!(total, 5);
//! node.shutdown().await;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Node, NodeInner};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::router::{Body, GuardFn, Handler, Request, Router, StreamRequest};
use crate::tasks::Tasks;

/// Routes and background tasks that belong together (a protocol).
pub trait Service: Send + Sync + 'static {
    /// A short name, for logs and errors.
    fn name(&self) -> &'static str;

    /// Registers the service's routes; called once, when the node starts.
    /// A name taken already (by another service or an application route) is
    /// an error from [`NodeBuilder::spawn`](super::NodeBuilder::spawn).
    fn routes(&self, routes: &mut Routes<'_>);

    /// Starts the service's background tasks once the node runs (on
    /// [`ServiceContext::spawn`], so the node owns them). None by default.
    fn start(&self, ctx: &ServiceContext) {
        let _ = ctx;
    }
}

/// A handle to the node that does not keep it alive: what route handlers and
/// tasks hold (a strong one would keep a dropped node running forever).
#[derive(Clone, Default)]
pub struct WeakNode(Arc<OnceLock<Weak<NodeInner>>>);

impl WeakNode {
    /// The node, while it runs (`None` before it started and once every
    /// [`Node`] handle is gone).
    pub fn upgrade(&self) -> Option<Node> {
        self.0
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Node { inner })
    }

    pub(super) fn set(&self, inner: &Arc<NodeInner>) {
        let _ = self.0.set(Arc::downgrade(inner));
    }
}

impl std::fmt::Debug for WeakNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.upgrade() {
            Some(node) => write!(f, "WeakNode({})", node.id().short()),
            None => f.write_str("WeakNode(gone)"),
        }
    }
}

/// Where a service registers its routes.
pub struct Routes<'a> {
    router: &'a mut Router,
    service: &'static str,
    node: WeakNode,
    error: &'a mut Option<Error>,
}

impl<'a> Routes<'a> {
    pub(super) fn new(
        router: &'a mut Router,
        service: &'static str,
        node: WeakNode,
        error: &'a mut Option<Error>,
    ) -> Self {
        Routes {
            router,
            service,
            node,
            error,
        }
    }

    /// The node, for handlers to call once it runs (they upgrade it per request).
    pub fn node(&self) -> WeakNode {
        self.node.clone()
    }

    fn insert(&mut self, name: &str, handler: Handler, max_body: Option<usize>) -> &mut Self {
        if name.is_empty() || name.len() > 1024 {
            self.error.get_or_insert(Error::Config(format!(
                "service {}: bad route name {name:?}",
                self.service
            )));
        } else if !self.router.insert_new(name, handler) {
            self.error.get_or_insert(Error::Config(format!(
                "service {}: route {name:?} is registered already",
                self.service
            )));
        } else if let Some(limit) = max_body {
            self.router.set_limit(name, limit);
        }
        self
    }

    /// A buffered route taking bodies of at most `max_body` bytes (larger
    /// ones are refused before they are read).
    pub fn buffered<F, Fut, R>(&mut self, name: &str, max_body: usize, handler: F) -> &mut Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        self.insert(name, Handler::buffered(handler), Some(max_body))
    }

    /// A typed route (postcard request and reply) taking bodies of at most
    /// `max_body` bytes; the handler gets the caller and the address its
    /// connection comes from.
    pub fn typed<F, Fut, Req, Resp>(&mut self, name: &str, max_body: usize, handler: F) -> &mut Self
    where
        F: Fn(NodeId, SocketAddr, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
    {
        let handler = Arc::new(handler);
        let buffered = Handler::buffered(move |req: Request| {
            let handler = handler.clone();
            async move {
                let value: Req = req.decode()?;
                let reply = handler(req.peer(), req.remote_addr(), value).await?;
                postcard::to_allocvec(&reply)
                    .map_err(|e| Error::handler(format!("cannot encode reply: {e}")))
            }
        });
        self.insert(name, buffered, Some(max_body))
    }

    /// A streaming route (bodies of any size, read as they arrive).
    pub fn streaming<F, Fut, R>(&mut self, name: &str, handler: F) -> &mut Self
    where
        F: Fn(StreamRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        self.insert(name, Handler::streaming(handler), None)
    }

    /// Runs `guard` on every request to `route` (registered already) once its
    /// header is read and before any of its body is: an error refuses the
    /// request. For rate limits per source, allow lists.
    pub fn guard<G>(&mut self, route: &str, guard: G) -> &mut Self
    where
        G: Fn(&NodeId, SocketAddr) -> Result<()> + Send + Sync + 'static,
    {
        let guard: Arc<GuardFn> = Arc::new(guard);
        if !self.router.set_guard(route, guard) {
            self.error.get_or_insert(Error::Config(format!(
                "service {}: guard for unknown route {route:?}",
                self.service
            )));
        }
        self
    }
}

/// What a starting service gets: the node (weakly) and the node's tasks.
pub struct ServiceContext {
    pub(super) node: WeakNode,
    pub(super) tasks: Tasks,
}

impl ServiceContext {
    /// The node.
    pub fn node(&self) -> WeakNode {
        self.node.clone()
    }

    /// Runs `task` as one of the node's: cancelled (dropped at its next await)
    /// on shutdown or when the last node handle is dropped.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// The node's tasks, for a service whose task must finish cleanly on
    /// shutdown ([`Tasks::spawn_graceful`] and [`Tasks::cancelled`]).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }
}
