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

use crate::nat::protocol::*;
use crate::node::{Routes, Service};
use crate::wire::{self, MAX_HEADER};
use crate::{Body, Error, Node, NodeAddr, NodeId, StreamRequest, WeakNode};

use super::limits::Pacer;
use super::registry::Registry;
use crate::ratelimit::RateLimiter;

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
    /// Relay tunnels open at once per source address (and twice that per
    /// source prefix, /24 or /64): identities are free, addresses are not.
    pub relay_per_source: usize,
    /// A tunnel direction that carries nothing for this long ends the tunnel.
    pub relay_idle: Duration,
    /// A tunnel ends after this long whatever it carries (the peers then open
    /// another, or have found a direct path long before).
    pub relay_lifetime: Duration,
    /// Bytes per second per tunnel and direction.
    pub relay_rate: u64,
}

/// Open tunnels, counted per peer and per source.
struct Relays {
    per_peer: std::collections::HashMap<NodeId, usize>,
    per_source: crate::source::SourceCounts,
    total: usize,
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
    limiter: RateLimiter,
    relays: Mutex<Relays>,
    counters: Counters,
    /// The node the routes run on (set when they are registered).
    node: OnceLock<WeakNode>,
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
    fn node(&self) -> Result<Node, Error> {
        self.node
            .get()
            .and_then(WeakNode::upgrade)
            .ok_or(Error::Shutdown)
    }

    fn admit(&self, source: IpAddr) -> Result<(), Error> {
        if self.limiter.allow(source) {
            Ok(())
        } else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            Err(Error::handler("rate limited: slow down"))
        }
    }

    fn stats(&self) -> IntroducerStats {
        let c = &self.counters;
        let node = self.node().map(|n| n.stats()).unwrap_or_default();
        IntroducerStats {
            registrations: lock(&self.registry).len() as u64,
            registers_total: c.registers_total.load(Ordering::Relaxed),
            introductions: c.introductions.load(Ordering::Relaxed),
            punches_tried: c.punches_tried.load(Ordering::Relaxed),
            punches_succeeded: c.punches_succeeded.load(Ordering::Relaxed),
            relays_opened: c.relays_opened.load(Ordering::Relaxed),
            relays_active: lock(&self.relays).total as u64,
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
    source: IpAddr,
    /// The tunnel ends at this instant whatever it carries.
    ends: tokio::time::Instant,
}

impl TunnelSlot {
    fn take(state: &Arc<State>, peer: NodeId, source: IpAddr) -> Result<Arc<Self>, Error> {
        let mut relays = lock(&state.relays);
        let mine = relays.per_peer.get(&peer).copied().unwrap_or(0);
        let refused = if relays.total >= state.config.relay_max {
            Some("relay capacity reached")
        } else if mine >= state.config.relay_per_peer {
            Some("relay capacity for this peer reached")
        } else if !relays.per_source.try_add(source, 1) {
            Some("relay capacity for this address reached")
        } else {
            None
        };
        if let Some(why) = refused {
            state.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Error::handler(why));
        }
        *relays.per_peer.entry(peer).or_default() += 1;
        relays.total += 1;
        state.counters.relays_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(TunnelSlot {
            state: state.clone(),
            peer,
            source,
            ends: tokio::time::Instant::now() + state.config.relay_lifetime,
        }))
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut relays = lock(&self.state.relays);
        relays.total -= 1;
        relays.per_source.remove(self.source, 1);
        if let Some(n) = relays.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                relays.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Buffer space one tunnel direction reads into; a read takes what arrived
/// (a QUIC packet is ~1.2 KiB), so one block serves many packets.
const PIPE_BLOCK: usize = 64 * 1024;

/// Moves one direction of a tunnel: opaque bytes, counted and paced. The relay
/// does not parse them; they are QUIC packets encrypted end to end. Ends when
/// the reader ends, after the idle limit without bytes, or at the tunnel's end
/// of life.
fn pipe(
    reader: impl AsyncRead + Send + Unpin + 'static,
    slot: Arc<TunnelSlot>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let pacer = Pacer::new(slot.state.config.relay_rate);
    let buf = BytesMut::with_capacity(PIPE_BLOCK);
    futures_util::stream::unfold(
        (reader, pacer, slot, buf),
        |(mut r, mut pacer, slot, mut buf)| async move {
            // Reuses the block's free space; a new block only once the old
            // one is used up (its pieces go as quinn sends them).
            if buf.capacity() - buf.len() < 2048 {
                buf = BytesMut::with_capacity(PIPE_BLOCK);
            }
            let idle = tokio::time::Instant::now() + slot.state.config.relay_idle;
            let read = tokio::time::timeout_at(idle.min(slot.ends), r.read_buf(&mut buf)).await;
            match read {
                Ok(Ok(0)) | Err(_) => None,
                Ok(Ok(n)) => {
                    slot.state
                        .counters
                        .relayed_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    let wait = pacer.delay_for(n, Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    let chunk = buf.split().freeze();
                    Some((Ok(chunk), (r, pacer, slot, buf)))
                }
                Ok(Err(e)) => Some((Err(e), (r, pacer, slot, buf))),
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

/// Keeps, of a peer's candidates (observed address first, then its own),
/// those worth packets from a node seen at `asker_seen`: no third parties, no
/// private or loopback addresses of another network.
fn in_scope(candidates: &mut Vec<SocketAddr>, asker_seen: IpAddr) {
    if candidates.is_empty() {
        return;
    }
    let seen = candidates[0];
    let mut own = candidates.split_off(1);
    crate::nat::scope::filter(&mut own, seen.ip(), asker_seen);
    candidates.extend(own);
}

/// The routes' body limits: every request is small (addresses, an id).
const SMALL_BODY: usize = 4096;

impl Introducer {
    /// An introducer; add it to a node with `NodeBuilder::service`.
    pub fn new(config: Config) -> Self {
        let registry = Registry::new(config.max_registrations, config.max_per_source, config.ttl);
        let limiter = RateLimiter::new(config.rate, config.burst, 100_000);
        let relays = Relays {
            per_peer: Default::default(),
            per_source: crate::source::SourceCounts::new(
                config.relay_per_source as u64,
                config.relay_per_source as u64 * 2,
                config.relay_max.max(1),
            ),
            total: 0,
        };
        Introducer {
            state: Arc::new(State {
                config,
                registry: Mutex::new(registry),
                limiter,
                relays: Mutex::new(relays),
                counters: Default::default(),
                node: OnceLock::new(),
            }),
        }
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

impl Service for Introducer {
    fn name(&self) -> &'static str {
        "introducer"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let _ = self.state.node.set(routes.node());
        let s = self.state.clone();
        routes.typed(
            REGISTER_ROUTE,
            SMALL_BODY,
            move |peer, remote: SocketAddr, req: Register| {
                let s = s.clone();
                async move {
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
        routes.typed(
            INTRODUCE_ROUTE,
            SMALL_BODY,
            move |peer, remote: SocketAddr, req: Introduce| {
                let s = s.clone();
                async move {
                    let max = req.max.min(MAX_INTRODUCTIONS) as usize;
                    let mut peers =
                        lock(&s.registry).sample(&peer, remote.ip(), max, Instant::now());
                    for p in &mut peers {
                        in_scope(&mut p.addrs, remote.ip());
                    }
                    s.counters.introductions.fetch_add(1, Ordering::Relaxed);
                    Ok(peers)
                }
            },
        );
        let s = self.state.clone();
        routes.typed(CONNECT_ROUTE, SMALL_BODY, move |peer, remote: SocketAddr, req: Connect| {
            let s = s.clone();
            async move {
                let target = lock(&s.registry)
                    .get(&req.target, Instant::now())
                    .map(|r| r.candidates(req.target))
                    .ok_or_else(|| Error::handler(format!("{} is not registered here", req.target.short())))?;
                // Observed first, then the caller's own (which may repeat it: the
                // target tells from that whether the caller's NAT keeps ports).
                // All of them: their ports tell each side how its peer's NAT
                // maps; each side sends packets only to those in scope for it
                // (`crate::nat::scope`).
                let mut theirs = vec![remote];
                theirs.extend(req.addrs.into_iter().take(MAX_ADDRS));
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
        routes.typed(
            REPORT_ROUTE,
            SMALL_BODY,
            move |_peer, _remote: SocketAddr, req: PunchReport| {
                let s = s.clone();
                async move {
                    if req.succeeded {
                        s.counters.punches_succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
            },
        );
        let s = self.state.clone();
        routes.typed(
            INTRO_STATS_ROUTE,
            SMALL_BODY,
            move |_peer, _remote: SocketAddr, (): ()| {
                let s = s.clone();
                async move { Ok(s.stats()) }
            },
        );
        let s = self.state.clone();
        routes.streaming(RELAY_ROUTE, move |req: StreamRequest| {
            let s = s.clone();
            async move { relay(s, req).await }
        });
        // Every request is rate limited per source before any of its body is
        // read; buffered ones are small.
        for route in [
            REGISTER_ROUTE,
            INTRODUCE_ROUTE,
            CONNECT_ROUTE,
            REPORT_ROUTE,
            INTRO_STATS_ROUTE,
            RELAY_ROUTE,
        ] {
            let s = self.state.clone();
            routes.guard(route, move |_peer, remote| s.admit(remote.ip()));
        }
    }
}

async fn relay(s: Arc<State>, req: StreamRequest) -> Result<Body, Error> {
    let from = req.peer();
    let source = req.remote_addr().ip();
    // The tunnel's silence is bounded by its own idle limit, not the node's.
    let mut body = req.body.without_stall_timeout();
    let open: RelayOpen = tokio::time::timeout(
        Duration::from_secs(5),
        wire::read_frame(&mut body, MAX_HEADER),
    )
    .await
    .map_err(|_| Error::Timeout("relay open"))??;
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
    let slot = TunnelSlot::take(&s, from, source)?;
    let hello = Bytes::from(wire::encode_frame(&RelayIn { from }, MAX_HEADER)?);
    let up = futures_util::stream::iter([Ok(hello)]).chain(pipe(body, slot.clone()));
    let down = tokio::time::timeout(
        Duration::from_secs(5),
        s.node()?
            .call_stream(open.target, RELAY_IN_ROUTE, Body::from_stream(up)),
    )
    .await
    .map_err(|_| Error::Timeout("the relay target did not answer"))??
    .without_stall_timeout();
    tracing::info!(from = %from.short(), to = %open.target.short(), "relay tunnel open");
    Ok(Body::from_stream(pipe(down, slot)))
}
