//! The transport: one quinn endpoint per node, a connection cache (one connection
//! per peer, reused by every call, re-dialed when it went away) and dialing a
//! [`NodeAddr`] by racing its addresses.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::addr::{NodeAddr, Target};
use crate::config::{Limits, TransportSettings};
use crate::error::{Error, Result};
use crate::identity::{tls, Identity, NodeId};
use crate::net::{self, DemuxSocket};
use crate::path::PathKind;
use crate::stats::Stats;

/// One peer's place in the cache: the connection calls use, and a lock held
/// by the one task dialing the peer (others wait for it, or for a connection
/// installed by other means — punch, relay, the peer's own dial).
#[derive(Default)]
struct SlotInner {
    conn: Mutex<Option<quinn::Connection>>,
    /// The latest connection the peer opened to us, in use or not.
    accepted: Mutex<Option<quinn::Connection>>,
    dialing: tokio::sync::Mutex<()>,
    installed: tokio::sync::Notify,
}

impl SlotInner {
    fn live(&self) -> Option<quinn::Connection> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn set(&self, conn: &quinn::Connection) {
        *lock(&self.conn) = Some(conn.clone());
        self.installed.notify_waiters();
    }
}

type Slot = Arc<SlotInner>;
type OnConnection = Box<dyn Fn(NodeId, quinn::Connection) + Send + Sync>;

/// The close reason of [`Endpoint::disconnect`]: the peer is not at fault.
pub(crate) const DISCONNECT: &[u8] = b"disconnect";

/// Nodes whose addresses the address book keeps.
const ADDRESS_BOOK: usize = 4096;

/// Addresses kept per node.
const ADDRS_PER_NODE: usize = 8;

/// Peer-reflexive addresses one dial may add.
const MAX_LEARNED: usize = 8;

/// TLS alerts that mean "the peer's identity could not be verified".
const IDENTITY_ALERTS: [u8; 9] = [
    40,  // handshake_failure: no Ed25519 signature scheme in common
    42,  // bad_certificate: not ed25519, a chain, a malformed certificate
    43,  // unsupported_certificate
    45,  // certificate_expired (or not valid yet)
    46,  // certificate_unknown
    48,  // unknown_ca
    49,  // access_denied: our verifier's "not the expected NodeId"
    51,  // decrypt_error: CertificateVerify signature not made by the certificate key
    116, // certificate_required
];

/// Maps a quinn connection failure to the library's error.
pub(crate) fn connection_error(e: quinn::ConnectionError) -> Error {
    let code = match &e {
        quinn::ConnectionError::TransportError(t) => Some(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => Some(c.error_code),
        _ => None,
    };
    if code.is_some_and(|c| {
        IDENTITY_ALERTS
            .iter()
            .any(|a| c == quinn::TransportErrorCode::crypto(*a))
    }) {
        return Error::IdentityMismatch(e.to_string());
    }
    Error::Unreachable(e.to_string())
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        connection_error(e)
    }
}

/// QUIC transport parameters derived from the node's limits and settings.
pub fn transport_config(
    limits: &Limits,
    settings: &TransportSettings,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(limits.max_concurrent_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(settings.keep_alive)
        .stream_receive_window(settings.stream_receive_window.into())
        .receive_window(
            settings
                .receive_window
                .max(settings.stream_receive_window)
                .into(),
        );
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout)
        .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX));
    t.max_idle_timeout(Some(idle));
    Arc::new(t)
}

pub(crate) struct Endpoint {
    pub(crate) quinn: quinn::Endpoint,
    pub(crate) socket: Arc<DemuxSocket>,
    client_config: quinn::ClientConfig,
    conns: Arc<Mutex<HashMap<NodeId, Slot>>>,
    /// Where nodes were reached (a handshake proved the key there) or where
    /// the application said they are; bounded, least recently used goes.
    addrs: Mutex<lru::LruCache<NodeId, Vec<SocketAddr>>>,
    settings: TransportSettings,
    stats: Arc<Stats>,
    /// The node's tasks: connection watchers run there.
    tasks: crate::tasks::Tasks,
    on_connection: OnConnection,
    /// How connections made by traversal came about (by stable id), for
    /// path reports: punched or predicted.
    marks: Arc<Mutex<HashMap<usize, PathKind>>>,
    /// Endpoints on sockets of their own (predicted paths), by local address:
    /// closed with the node; `None` once it closed (no new ones then).
    extra: Arc<Mutex<Option<HashMap<SocketAddr, quinn::Endpoint>>>>,
}

impl Endpoint {
    /// Binds the node's socket and builds the quinn endpoint on it.
    pub(crate) fn bind(
        identity: &Identity,
        listen: SocketAddr,
        limits: &Limits,
        settings: TransportSettings,
        stats: Arc<Stats>,
        tasks: crate::tasks::Tasks,
        on_connection: OnConnection,
    ) -> Result<Self> {
        let transport = transport_config(limits, &settings);
        // Weak: the TLS configs outlive the node in quinn's driver for a
        // moment, and the counters hold the store (whose file lock a
        // restarted node needs at once).
        let counted = Arc::downgrade(&stats);
        let resumed: crate::identity::resume::Counter = Arc::new(move || {
            if let Some(stats) = counted.upgrade() {
                stats.handshakes_resumed_in.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut server_config =
            quinn::ServerConfig::with_crypto(tls::server_crypto_counting(identity, resumed)?);
        server_config.transport_config(transport.clone());
        // Quinn's own queue of attempts the accept loop has not looked at yet,
        // and what it buffers for them, stay small: admission decides quickly.
        let queued = (limits.max_handshakes.max(1) * 2) as u64;
        server_config
            .max_incoming(queued as usize)
            .incoming_buffer_size(64 * 1024)
            .incoming_buffer_size_total(queued * 64 * 1024);
        let counted = Arc::downgrade(&stats);
        let offered: crate::identity::resume::Counter = Arc::new(move || {
            if let Some(stats) = counted.upgrade() {
                stats.resumptions_offered.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut client_config =
            quinn::ClientConfig::new(tls::client_crypto_counting(identity, offered)?);
        client_config.transport_config(transport);

        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Config("no async runtime (call from within tokio)".into()))?;
        let socket = Arc::new(DemuxSocket::new(runtime.wrap_udp_socket(
            net::bind(listen).map_err(|e| Error::Bind {
                addr: listen,
                source: e,
            })?,
        )?));
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Keeps the QUIC fixed bit set so the shared socket can tell STUN apart.
        endpoint_config.grease_quic_bit(false);
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket.clone(),
            runtime,
        )?;
        Ok(Endpoint {
            quinn,
            socket,
            client_config,
            conns: Default::default(),
            addrs: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(ADDRESS_BOOK).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            settings,
            stats,
            tasks,
            on_connection,
            marks: Default::default(),
            extra: Arc::new(Mutex::new(Some(HashMap::new()))),
        })
    }

    /// Closes every connection: the node's endpoint and those on sockets of
    /// their own.
    pub(crate) fn close_all(&self) {
        self.quinn.close(0u32.into(), b"shutdown");
        for endpoint in lock(&self.extra)
            .take()
            .into_iter()
            .flat_map(|m| m.into_values())
        {
            endpoint.close(0u32.into(), b"shutdown");
        }
    }

    pub(crate) fn connect_timeout(&self) -> std::time::Duration {
        self.settings.connect_timeout
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.quinn.local_addr()?)
    }

    fn slot(&self, id: NodeId) -> Slot {
        lock(&self.conns).entry(id).or_default().clone()
    }

    /// Remembers where a node can be reached (most recently confirmed first).
    /// Only for addresses a handshake proved, or that the application gave:
    /// what a peer merely claims (a beacon, an exchange) is dialed, never kept.
    pub(crate) fn learn(&self, addr: &NodeAddr) {
        let mut book = lock(&self.addrs);
        let known = book.get_or_insert_mut(addr.id, Vec::new);
        // Relay paths are per connection, never an address to dial later.
        for a in addr.addrs.iter().rev().filter(|a| !net::is_virtual(**a)) {
            known.retain(|k| k != a);
            known.insert(0, *a);
        }
        known.truncate(ADDRS_PER_NODE);
    }

    /// The addresses known for a node.
    pub(crate) fn addrs_of(&self, id: &NodeId) -> Vec<SocketAddr> {
        lock(&self.addrs).get(id).cloned().unwrap_or_default()
    }

    /// Nodes in the address book.
    #[cfg(test)]
    pub(crate) fn book_len(&self) -> usize {
        lock(&self.addrs).len()
    }

    /// Forgets the slot of a node nobody is connected or dialing to.
    fn release_slot(&self, id: &NodeId, slot: &Slot) {
        let mut map = lock(&self.conns);
        // Ours and the map's: nobody else waits on it.
        if slot.live().is_none()
            && lock(&slot.accepted).is_none()
            && map
                .get(id)
                .is_some_and(|s| Arc::ptr_eq(s, slot) && Arc::strong_count(s) <= 2)
        {
            map.remove(id);
        }
    }

    /// The live connection to `target`'s node, dialing if there is none. Concurrent
    /// callers share one dial.
    pub(crate) async fn connection(&self, target: &Target) -> Result<quinn::Connection> {
        let id = target.id();
        let slot = self.slot(id);
        let _dialing = loop {
            // Registered before looking, so an install in between is not missed.
            let installed = slot.installed.notified();
            tokio::pin!(installed);
            installed.as_mut().enable();
            if let Some(conn) = slot.live() {
                return Ok(conn);
            }
            tokio::select! {
                guard = slot.dialing.lock() => {
                    if let Some(conn) = slot.live() {
                        return Ok(conn);
                    }
                    break guard;
                }
                _ = &mut installed => {}
            }
        };
        // The caller's addresses first (what it was told), then those a
        // handshake proved before; only the one that works is remembered.
        let mut addrs: Vec<SocketAddr> = match target {
            Target::Addr(a) => a
                .addrs
                .iter()
                .copied()
                .filter(|a| !net::is_virtual(*a))
                .collect(),
            Target::Id(_) => Vec::new(),
        };
        addrs.truncate(ADDRS_PER_NODE);
        for known in self.addrs_of(&id) {
            if !addrs.contains(&known) {
                addrs.push(known);
            }
        }
        if addrs.is_empty() {
            drop(_dialing);
            self.release_slot(&id, &slot);
            return Err(Error::Unreachable(format!(
                "no known address for {}",
                id.short()
            )));
        }
        let dialed = self.dial(id, &addrs, self.settings.connect_timeout).await;
        let (conn, addr) = match dialed {
            Ok(c) => c,
            Err(e) => {
                drop(_dialing);
                self.release_slot(&id, &slot);
                return Err(e);
            }
        };
        self.learn(&NodeAddr::new(id, [addr]));
        slot.set(&conn);
        self.adopt(id, conn.clone(), slot.clone());
        Ok(conn)
    }

    /// Closes every connection with `id` (the one calls use and the one it
    /// opened to us); the next call dials again. Returns whether any was
    /// open.
    pub(crate) fn disconnect(&self, id: &NodeId) -> bool {
        let Some(slot) = lock(&self.conns).get(id).cloned() else {
            return false;
        };
        let conns = [lock(&slot.conn).take(), lock(&slot.accepted).take()];
        let mut any = false;
        for conn in conns.into_iter().flatten() {
            any |= conn.close_reason().is_none();
            conn.close(0u32.into(), DISCONNECT);
        }
        any
    }

    /// Forgets a connection that failed, so the next call dials again.
    pub(crate) fn invalidate(&self, id: &NodeId, conn: &quinn::Connection) {
        let slot = lock(&self.conns).get(id).cloned();
        if let Some(slot) = slot {
            let mut g = lock(&slot.conn);
            if g.as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                *g = None;
            }
        }
    }

    /// Takes in a connection a peer opened to us, so calls back to that peer reuse it.
    pub(crate) fn register_incoming(&self, id: NodeId, conn: quinn::Connection) {
        self.learn(&NodeAddr::new(id, [conn.remote_address()]));
        let slot = self.slot(id);
        // A dial to the same peer in progress keeps its own connection (both
        // sides dialing at once must not each prefer the other's). A direct
        // connection replaces a relayed one (the peer upgraded it).
        let relayed_now = slot
            .live()
            .is_some_and(|c| net::is_virtual(c.remote_address()));
        let upgrade = relayed_now && !net::is_virtual(conn.remote_address());
        *lock(&slot.accepted) = Some(conn.clone());
        if upgrade || (slot.live().is_none() && slot.dialing.try_lock().is_ok()) {
            slot.set(&conn);
        } else {
            // Someone may be waiting for this very connection (wait_direct).
            slot.installed.notify_waiters();
        }
        self.adopt(id, conn, slot);
    }

    /// Makes a connection found by other means (punch, relay) the one calls to
    /// `id` use, replacing any other (which keeps serving what is in flight);
    /// returns the live one it replaced.
    pub(crate) fn install(
        &self,
        id: NodeId,
        conn: quinn::Connection,
        mark: Option<PathKind>,
    ) -> Option<quinn::Connection> {
        if let Some(kind) = mark {
            self.mark(&conn, kind);
        }
        let slot = self.slot(id);
        let replaced = slot.live();
        let same = |c: &quinn::Connection| c.stable_id() == conn.stable_id();
        if replaced.as_ref().is_some_and(same) {
            // Already the one in use (and served).
            return None;
        }
        // Accepted connections are served already; others start being served.
        let served = lock(&slot.accepted).as_ref().is_some_and(same);
        slot.set(&conn);
        if !served {
            self.adopt(id, conn, slot);
        }
        replaced
    }

    /// Waits for a direct (not relayed) connection to `id`, cached or just
    /// accepted, as when the peer dials us from a socket a port prediction
    /// opened.
    pub(crate) async fn wait_direct(&self, id: NodeId) -> quinn::Connection {
        let slot = self.slot(id);
        let direct = |c: &quinn::Connection| {
            c.close_reason().is_none() && !net::is_virtual(c.remote_address())
        };
        loop {
            let installed = slot.installed.notified();
            tokio::pin!(installed);
            installed.as_mut().enable();
            if let Some(conn) = slot.live().filter(direct) {
                return conn;
            }
            if let Some(conn) = lock(&slot.accepted).clone().filter(direct) {
                return conn;
            }
            installed.await;
        }
    }

    /// Records how a connection came about (see [`Endpoint::mark_of`]).
    pub(crate) fn mark(&self, conn: &quinn::Connection, kind: PathKind) {
        lock(&self.marks).insert(conn.stable_id(), kind);
    }

    /// How traversal made this connection, if it did.
    pub(crate) fn mark_of(&self, conn: &quinn::Connection) -> Option<PathKind> {
        lock(&self.marks).get(&conn.stable_id()).copied()
    }

    /// Starts serving the connection's incoming streams and forgets it once closed.
    fn adopt(&self, id: NodeId, conn: quinn::Connection, slot: Slot) {
        (self.on_connection)(id, conn.clone());
        let conns = Arc::downgrade(&self.conns);
        let marks = self.marks.clone();
        self.tasks.spawn(async move {
            conn.closed().await;
            lock(&marks).remove(&conn.stable_id());
            {
                let mut accepted = lock(&slot.accepted);
                if accepted
                    .as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    *accepted = None;
                }
            }
            let emptied = {
                let mut g = lock(&slot.conn);
                if g.as_ref()
                    .is_some_and(|c| c.stable_id() == conn.stable_id())
                {
                    *g = None;
                }
                g.is_none()
            };
            if emptied && slot.dialing.try_lock().is_ok() {
                if let Some(conns) = conns.upgrade() {
                    let mut map = lock(&conns);
                    // Only drop the entry if nobody else holds the slot.
                    if map.get(&id).is_some_and(|s| Arc::strong_count(s) <= 2) {
                        map.remove(&id);
                    }
                }
            }
        });
    }

    /// Races the addresses, staggered (happy eyeballs); the first handshake that
    /// completes wins and the others are dropped.
    pub(crate) async fn dial(
        &self,
        id: NodeId,
        addrs: &[SocketAddr],
        timeout: std::time::Duration,
    ) -> Result<(quinn::Connection, SocketAddr)> {
        self.dial_learning(id, addrs, timeout, None).await
    }

    /// [`Endpoint::dial`], also dialing (at once) addresses that `more` yields
    /// while the dial runs: the peer-reflexive candidates a punch reveals.
    pub(crate) async fn dial_learning(
        &self,
        id: NodeId,
        addrs: &[SocketAddr],
        timeout: std::time::Duration,
        mut more: Option<&mut tokio::sync::mpsc::Receiver<SocketAddr>>,
    ) -> Result<(quinn::Connection, SocketAddr)> {
        type Attempt<'a> = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = (SocketAddr, Result<quinn::Connection>)>
                    + Send
                    + 'a,
            >,
        >;
        let local_v4 = self.local_addr()?.is_ipv4();
        let usable: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !local_v4 || a.is_ipv4())
            .collect();
        if usable.is_empty() && more.is_none() {
            return Err(Error::Unreachable(format!(
                "no address of {} is reachable from this socket's address family",
                id.short()
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tried: HashSet<SocketAddr> = usable.iter().copied().collect();
        let mut attempts: FuturesUnordered<Attempt<'_>> = usable
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let delay = self.settings.dial_stagger * i as u32;
                let addr = *addr;
                Box::pin(async move {
                    // No sleep for the first address: tokio rounds every
                    // deadline up to its next millisecond tick, so even a
                    // zero sleep cost a connect about a millisecond.
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    (addr, self.connect_once(id, addr, timeout).await)
                }) as Attempt<'_>
            })
            .collect();
        let mut errors = Vec::new();
        loop {
            let learning = more.is_some();
            tokio::select! {
                Some((addr, result)) = attempts.next(), if !attempts.is_empty() => match result {
                    Ok(conn) => {
                        self.stats.handshakes_out.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %id.short(), %addr, "connected");
                        return Ok((conn, addr));
                    }
                    Err(e) => {
                        self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %id.short(), %addr, error = %e, "dial failed");
                        errors.push((addr, e));
                    }
                },
                learned = async { more.as_mut()?.recv().await }, if learning => match learned {
                    // Bounded: forged punch packets cost a few dials at most.
                    Some(addr) if (!local_v4 || addr.is_ipv4())
                        && tried.len() < usable.len() + MAX_LEARNED
                        && tried.insert(addr) => {
                        tracing::debug!(peer = %id.short(), %addr, "peer-reflexive candidate");
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        attempts.push(Box::pin(async move {
                            (addr, self.connect_once(id, addr, left).await)
                        }));
                    }
                    Some(_) => {}
                    None => more = None,
                },
                _ = tokio::time::sleep_until(deadline), if learning && attempts.is_empty() => break,
                else => break,
            }
        }
        if let Some((addr, e)) = errors
            .iter()
            .find(|(_, e)| matches!(e, Error::IdentityMismatch(_)))
        {
            return Err(match tls::answered_instead(&id) {
                Some(actual) => Error::IdentityMismatch(format!(
                    "expected {id}, but the node at {addr} is {actual}"
                )),
                None => Error::mismatch(&id, format!("at {addr}: {}", e.detail())),
            });
        }
        let detail: Vec<String> = errors
            .iter()
            .map(|(a, e)| format!("{a}: {}", e.detail()))
            .collect();
        Err(Error::Unreachable(format!(
            "{}: {}",
            id.short(),
            detail.join("; ")
        )))
    }

    /// Connects to `id` at `addr` from a socket of its own (the one a port
    /// prediction found open) rather than the node's. The small client-only
    /// endpoint on it lives as long as the connection.
    pub(crate) async fn connect_from(
        &self,
        socket: std::net::UdpSocket,
        id: NodeId,
        addr: SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<quinn::Connection> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Config("no async runtime (call from within tokio)".into()))?;
        let mut config = quinn::EndpointConfig::default();
        config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new(config, None, socket, runtime)?;
        let local = endpoint.local_addr()?;
        match lock(&self.extra).as_mut() {
            Some(extra) => extra.insert(local, endpoint.clone()),
            None => return Err(Error::Shutdown),
        };
        // Out of the list however the attempt ends, also when this future is
        // dropped (another path won the race): the socket closes with it.
        let listed = Listed {
            extra: self.extra.clone(),
            local,
        };
        let connecting = endpoint
            .connect_with(self.client_config.clone(), addr, &tls::server_name(&id))
            .map_err(|e| Error::Unreachable(format!("cannot start connection: {e}")))?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connection_error(e)),
            Err(_) => return Err(Error::Unreachable("handshake timed out".into())),
        };
        self.stats.handshakes_out.fetch_add(1, Ordering::Relaxed);
        let watched = conn.clone();
        self.tasks.spawn(async move {
            watched.closed().await;
            drop(listed);
            endpoint.wait_idle().await;
            drop(endpoint);
        });
        Ok(conn)
    }

    pub(crate) async fn connect_once(
        &self,
        id: NodeId,
        addr: SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<quinn::Connection> {
        let connecting = self
            .quinn
            .connect_with(self.client_config.clone(), addr, &tls::server_name(&id))
            .map_err(|e| Error::Unreachable(format!("cannot start connection: {e}")))?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connection_error(e)),
            Err(_) => Err(Error::Unreachable("handshake timed out".into())),
        }
    }

    /// Number of peers with a live cached connection.
    pub(crate) fn live_connections(&self) -> usize {
        let slots: Vec<Slot> = lock(&self.conns).values().cloned().collect();
        slots.iter().filter(|s| s.live().is_some()).count()
    }

    /// The connection calls to `id` use, without asking quinn whether it is
    /// still open (that takes the connection's lock, which every stream
    /// operation contends for): the call path's lookup. A closed one fails
    /// at its first stream, and the caller then [`invalidate`s](Self::invalidate)
    /// it and asks [`connection`](Self::connection).
    pub(crate) fn cached_unchecked(&self, id: &NodeId) -> Option<quinn::Connection> {
        let slot = lock(&self.conns).get(id).cloned()?;
        let conn = lock(&slot.conn).clone();
        conn
    }

    /// The cached live connection to `id`, if any (never dials).
    pub(crate) fn cached(&self, id: &NodeId) -> Option<quinn::Connection> {
        let slot = lock(&self.conns).get(id).cloned()?;
        slot.live()
    }
}

/// An endpoint's place in [`Endpoint::extra`], given up on drop.
struct Listed {
    extra: Arc<Mutex<Option<HashMap<SocketAddr, quinn::Endpoint>>>>,
    local: SocketAddr,
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(extra) = lock(&self.extra).as_mut() {
            extra.remove(&self.local);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn endpoint() -> Endpoint {
        endpoint_with(TransportSettings::default())
    }

    fn endpoint_with(settings: TransportSettings) -> Endpoint {
        Endpoint::bind(
            &Identity::generate(),
            "127.0.0.1:0".parse().unwrap(),
            &Limits::default(),
            settings,
            Arc::new(Stats::default()),
            crate::tasks::Tasks::new(),
            Box::new(|_, _| {}),
        )
        .unwrap()
    }

    /// A silent UDP socket: handshakes to it never complete.
    fn sink() -> (std::net::UdpSocket, SocketAddr) {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    fn listed(e: &Endpoint) -> usize {
        lock(&e.extra).as_ref().map_or(0, HashMap::len)
    }

    #[tokio::test]
    async fn a_dropped_predicted_dial_gives_up_its_socket() {
        let e = endpoint();
        let (_sink, target) = sink();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap();
        let id = Identity::generate().id();
        // Another path wins the race: this dial's future is dropped mid-handshake.
        let raced = tokio::time::timeout(
            Duration::from_millis(100),
            e.connect_from(socket, id, target, Duration::from_secs(10)),
        )
        .await;
        assert!(raced.is_err(), "the handshake cannot complete");
        assert_eq!(listed(&e), 0, "the endpoint stayed listed");
        // Its port is free again once quinn's driver let go of the socket.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(local).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{local} still bound"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn no_predicted_dial_after_close() {
        let e = endpoint();
        e.close_all();
        let (_sink, target) = sink();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let id = Identity::generate().id();
        let r = e
            .connect_from(socket, id, target, Duration::from_secs(1))
            .await;
        assert!(matches!(r, Err(Error::Shutdown)), "{r:?}");
        assert_eq!(listed(&e), 0);
    }

    #[tokio::test]
    async fn a_failed_dial_learns_nothing_and_leaves_no_slot() {
        let e = endpoint_with(TransportSettings {
            connect_timeout: Duration::from_millis(200),
            ..Default::default()
        });
        let (_sink, forged) = sink();
        let id = Identity::generate().id();
        let r = e
            .connection(&Target::Addr(NodeAddr::new(id, [forged])))
            .await;
        assert!(matches!(r, Err(Error::Unreachable(_))), "{r:?}");
        assert!(e.addrs_of(&id).is_empty(), "an unproven address was kept");
        assert!(lock(&e.conns).is_empty(), "a slot stayed behind");
        // Many such ids (a flood of forged candidates) leave nothing either.
        for _ in 0..50 {
            let id = Identity::generate().id();
            let _ = e.connection(&Target::Id(id)).await;
        }
        assert!(lock(&e.conns).is_empty());
    }

    #[tokio::test]
    async fn the_address_book_is_bounded() {
        let e = endpoint();
        for i in 0..(ADDRESS_BOOK + 500) {
            let addr = SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 7400));
            e.learn(&NodeAddr::new(Identity::generate().id(), [addr]));
        }
        assert_eq!(e.book_len(), ADDRESS_BOOK);
        let id = Identity::generate().id();
        let many: Vec<SocketAddr> = (0..20)
            .map(|p| SocketAddr::from(([10, 1, 0, 1], 7000 + p)))
            .collect();
        e.learn(&NodeAddr::new(id, many));
        assert_eq!(e.addrs_of(&id).len(), ADDRS_PER_NODE);
    }
}
