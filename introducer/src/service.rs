//! The introducer's routes, on an ordinary Butter node: registration,
//! introductions, punch coordination, relay tunnels, figures. Every request is
//! rate limited per source address; every table is bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use butter::nat::protocol::*;
use butter::wire::{self, MAX_HEADER};
use butter::{Body, Error, Node, NodeAddr, NodeBuilder, NodeId, StreamRequest};

use crate::limits::{Pacer, RateLimiter};
use crate::registry::Registry;

/// What an operator can tune.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most registrations held.
    pub max_registrations: usize,
    /// Most registrations from one source IP.
    pub max_per_source: usize,
    /// Registrations expire after this unless refreshed.
    pub ttl: Duration,
    /// Requests per second per source IP (sustained).
    pub rate: f64,
    /// Requests at once per source IP.
    pub burst: f64,
    /// Relay tunnels open at once, in all.
    pub relay_max: usize,
    /// Relay tunnels open at once per peer.
    pub relay_per_peer: usize,
    /// Bytes per second per tunnel and direction.
    pub relay_rate: u64,
}

#[derive(Default)]
struct Counters {
    registers_total: AtomicU64,
    introductions: AtomicU64,
    punches_tried: AtomicU64,
    punches_succeeded: AtomicU64,
    relays_opened: AtomicU64,
    relayed_bytes: AtomicU64,
    rejected: AtomicU64,
}

struct State {
    config: Config,
    registry: Mutex<Registry>,
    limiter: Mutex<RateLimiter>,
    relays: Mutex<std::collections::HashMap<NodeId, usize>>,
    counters: Counters,
    node: OnceLock<Node>,
}

/// A running introducer.
#[derive(Clone)]
pub struct Introducer {
    state: Arc<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn node(&self) -> Result<&Node, Error> {
        self.node.get().ok_or(Error::Shutdown)
    }

    fn admit(&self, source: IpAddr) -> Result<(), Error> {
        if lock(&self.limiter).allow(source, Instant::now()) {
            Ok(())
        } else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            Err(Error::handler("rate limited: slow down"))
        }
    }

    fn stats(&self) -> IntroducerStats {
        let c = &self.counters;
        let node = self.node.get().map(Node::stats).unwrap_or_default();
        IntroducerStats {
            registrations: lock(&self.registry).len() as u64,
            registers_total: c.registers_total.load(Ordering::Relaxed),
            introductions: c.introductions.load(Ordering::Relaxed),
            punches_tried: c.punches_tried.load(Ordering::Relaxed),
            punches_succeeded: c.punches_succeeded.load(Ordering::Relaxed),
            relays_opened: c.relays_opened.load(Ordering::Relaxed),
            relays_active: lock(&self.relays).values().sum::<usize>() as u64,
            relayed_bytes: c.relayed_bytes.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            udp_garbage: node.udp_garbage,
            stun_answered: node.stun_answered,
        }
    }
}

/// One open tunnel's place in the relay limits; released on drop.
struct TunnelSlot {
    state: Arc<State>,
    peer: NodeId,
}

impl TunnelSlot {
    fn take(state: &Arc<State>, peer: NodeId) -> Result<Arc<Self>, Error> {
        let mut relays = lock(&state.relays);
        let total: usize = relays.values().sum();
        let mine = relays.get(&peer).copied().unwrap_or(0);
        if total >= state.config.relay_max || mine >= state.config.relay_per_peer {
            state.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::handler("relay capacity reached"));
        }
        *relays.entry(peer).or_default() += 1;
        state.counters.relays_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(TunnelSlot {
            state: state.clone(),
            peer,
        }))
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut relays = lock(&self.state.relays);
        if let Some(n) = relays.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                relays.remove(&self.peer);
            }
        }
    }
}

/// Moves one direction of a tunnel: opaque bytes, counted and paced. The relay
/// does not parse them; they are QUIC packets encrypted end to end.
fn pipe(
    reader: impl AsyncRead + Send + Unpin + 'static,
    slot: Arc<TunnelSlot>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let pacer = Pacer::new(slot.state.config.relay_rate);
    futures_util::stream::unfold(
        (reader, pacer, slot),
        |(mut r, mut pacer, slot)| async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            match r.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    slot.state
                        .counters
                        .relayed_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    let wait = pacer.delay_for(n, Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    Some((Ok(buf.freeze()), (r, pacer, slot)))
                }
                Err(e) => Some((Err(e), (r, pacer, slot))),
            }
        },
    )
    // An error ends the stream after it is reported.
    .scan(false, |failed, item| {
        let out = if *failed { None } else { Some(item) };
        if let Some(Err(_)) = &out {
            *failed = true;
        }
        futures_util::future::ready(out)
    })
}

impl Introducer {
    /// Adds the introducer's routes to a node builder; start the node, then
    /// call [`Introducer::attach`].
    pub fn new(config: Config) -> Self {
        let registry = Registry::new(config.max_registrations, config.max_per_source, config.ttl);
        let limiter = RateLimiter::new(config.rate, config.burst, 100_000);
        Introducer {
            state: Arc::new(State {
                config,
                registry: Mutex::new(registry),
                limiter: Mutex::new(limiter),
                relays: Default::default(),
                counters: Default::default(),
                node: OnceLock::new(),
            }),
        }
    }

    /// The routes, on `builder`.
    pub fn routes(&self, builder: NodeBuilder) -> NodeBuilder {
        let s = self.state.clone();
        let builder = builder.platform_route(
            REGISTER_ROUTE,
            move |peer, remote: SocketAddr, req: Register| {
                let s = s.clone();
                async move {
                    s.admit(remote.ip())?;
                    let mut registry = lock(&s.registry);
                    registry
                        .register(peer, remote, req.addrs, Instant::now())
                        .map_err(|e| {
                            s.counters.rejected.fetch_add(1, Ordering::Relaxed);
                            Error::handler(e.to_string())
                        })?;
                    s.counters.registers_total.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %peer.short(), %remote, "registered");
                    Ok(Registered {
                        observed: remote,
                        ttl_ms: registry.ttl().as_millis() as u64,
                    })
                }
            },
        );
        let s = self.state.clone();
        let builder = builder.platform_route(
            INTRODUCE_ROUTE,
            move |peer, remote: SocketAddr, req: Introduce| {
                let s = s.clone();
                async move {
                    s.admit(remote.ip())?;
                    let max = req.max.min(MAX_INTRODUCTIONS) as usize;
                    let peers = lock(&s.registry).sample(&peer, remote.ip(), max, Instant::now());
                    s.counters.introductions.fetch_add(1, Ordering::Relaxed);
                    Ok(peers)
                }
            },
        );
        let s = self.state.clone();
        let builder = builder.platform_route(CONNECT_ROUTE, move |peer, remote: SocketAddr, req: Connect| {
            let s = s.clone();
            async move {
                s.admit(remote.ip())?;
                let target = lock(&s.registry)
                    .get(&req.target, Instant::now())
                    .map(|r| r.candidates(req.target))
                    .ok_or_else(|| Error::handler(format!("{} is not registered here", req.target.short())))?;
                // Observed first, then the caller's own (which may repeat it: the
                // target tells from that whether the caller's NAT keeps ports).
                let mut theirs = vec![remote];
                theirs.extend(req.addrs);
                theirs.truncate(MAX_ADDRS);
                s.counters.punches_tried.fetch_add(1, Ordering::Relaxed);
                let punch = Punch { peer: NodeAddr::new(peer, theirs) };
                let node = s.node()?;
                tokio::time::timeout(
                    Duration::from_secs(3),
                    node.call_typed::<_, ()>(req.target, PUNCH_ROUTE, &punch),
                )
                .await
                .map_err(|_| Error::Timeout("the target did not answer the punch request"))??;
                tracing::debug!(from = %peer.short(), to = %req.target.short(), "punch coordinated");
                // A moment for the target's first punch packets to leave its NAT.
                Ok(Rendezvous { peer: target, start_in_ms: 25 })
            }
        });
        let s = self.state.clone();
        let builder = builder.platform_route(
            REPORT_ROUTE,
            move |_peer, remote: SocketAddr, req: PunchReport| {
                let s = s.clone();
                async move {
                    s.admit(remote.ip())?;
                    if req.succeeded {
                        s.counters.punches_succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
            },
        );
        let s = self.state.clone();
        let builder = builder.platform_route(
            INTRO_STATS_ROUTE,
            move |_peer, _remote: SocketAddr, (): ()| {
                let s = s.clone();
                async move { Ok(s.stats()) }
            },
        );
        let s = self.state.clone();
        builder.platform_stream_route(RELAY_ROUTE, move |req: StreamRequest| {
            let s = s.clone();
            async move { relay(s, req).await }
        })
    }

    /// Gives the service its running node (needed to call registered nodes).
    pub fn attach(&self, node: Node) {
        let _ = self.state.node.set(node);
    }

    /// The figures.
    pub fn stats(&self) -> IntroducerStats {
        self.state.stats()
    }

    /// Drops expired registrations (also done lazily when the table fills).
    pub fn expire(&self) {
        lock(&self.state.registry).expire(Instant::now());
    }
}

async fn relay(s: Arc<State>, mut req: StreamRequest) -> Result<Body, Error> {
    s.admit(req.remote_addr().ip())?;
    let from = req.peer();
    let open: RelayOpen = wire::read_frame(&mut req.body, MAX_HEADER).await?;
    if open.target == from
        || lock(&s.registry)
            .get(&open.target, Instant::now())
            .is_none()
    {
        return Err(Error::handler(format!(
            "{} is not registered here",
            open.target.short()
        )));
    }
    let slot = TunnelSlot::take(&s, from)?;
    let hello = Bytes::from(wire::encode_frame(&RelayIn { from }, MAX_HEADER)?);
    let up = futures_util::stream::iter([Ok(hello)]).chain(pipe(req.body, slot.clone()));
    let down = s
        .node()?
        .call_stream(open.target, RELAY_IN_ROUTE, Body::from_stream(up))
        .await?;
    tracing::info!(from = %from.short(), to = %open.target.short(), "relay tunnel open");
    Ok(Body::from_stream(pipe(down, slot)))
}
