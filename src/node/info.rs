//! What a node says about itself: `butter/ping` (liveness, identity, the
//! numbers membership weighs) and `butter/stats` (its counters).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::service::{Routes, Service};
use super::Node;
use crate::addr::Target;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::peers::{Membership, Quality};
use crate::stats::{Stats, StatsSnapshot};

/// Route of the built-in liveness and identity check.
pub const PING_ROUTE: &str = "butter/ping";

/// Route of a node's counters.
pub const STATS_ROUTE: &str = "butter/stats";

/// The route that lists a node's routes (names, sorted).
pub const ROUTES_ROUTE: &str = "butter/routes";

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

/// Answers `butter/ping`.
pub(super) struct PingService {
    pub(super) id: NodeId,
    pub(super) started: Instant,
    pub(super) members: Arc<Membership>,
}

impl Service for PingService {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let (id, started, m) = (self.id, self.started, self.members.clone());
        routes.buffered(PING_ROUTE, 1024, move |req: crate::Request| {
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
        });
    }
}

/// Answers `butter/stats`.
pub(super) struct StatsService(pub(super) Arc<Stats>);

impl Service for StatsService {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let stats = self.0.clone();
        routes.typed(STATS_ROUTE, 64, move |_peer, _from: SocketAddr, (): ()| {
            let stats = stats.clone();
            async move { Ok(stats.snapshot()) }
        });
    }
}

/// `butter/routes`: the names of the node's routes (the platform's and the
/// application's), so a person can see what a node serves.
pub(super) struct RoutesService;

impl Service for RoutesService {
    fn name(&self) -> &'static str {
        "routes"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let n = routes.node();
        routes.typed(ROUTES_ROUTE, 64, move |_peer, _from: SocketAddr, (): ()| {
            let node = n.upgrade();
            async move {
                let node = node.ok_or(crate::Error::Shutdown)?;
                Ok(node.route_names())
            }
        });
    }
}

impl Node {
    /// The names of the routes this node serves, sorted.
    pub fn route_names(&self) -> Vec<String> {
        self.shared().router.names()
    }

    /// The names of the routes a peer serves (`butter/routes`).
    pub async fn routes_of(&self, target: impl Into<Target>) -> Result<Vec<String>> {
        self.call_typed(target, ROUTES_ROUTE, &()).await
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

    /// Fetches a node's counters (`butter/stats`).
    pub async fn stats_of(&self, target: impl Into<Target>) -> Result<StatsSnapshot> {
        self.call_typed(target, STATS_ROUTE, &()).await
    }
}
