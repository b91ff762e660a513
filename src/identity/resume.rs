//! TLS session resumption, counted. A node that connects again to a peer it
//! has met resumes the earlier TLS 1.3 session (a ticket from that peer,
//! rustls' in-memory caches, bounded): no certificates are sent and no
//! signatures made or checked again, so the handshake is cheaper.
//!
//! Resumption keeps both identities: a ticket is stored under the server
//! name, which is the NodeId the client dialed ([`server_name`](crate::identity::tls::server_name)),
//! and the session it resumes carries the certificates verified in the full
//! handshake (`peer_identity` after a resumed handshake is that of the
//! original one). Only the two ends of the original handshake know the
//! resumption secret, so nobody else can use a ticket: a node that presents
//! someone else's ticket, or answers under another's name, fails the
//! handshake (tested in `tests/tls.rs`).
//!
//! The wrappers here only count: offered tickets on the client side,
//! sessions found on the server side ([`crate::StatsSnapshot`]'s
//! `resumptions_offered` and `handshakes_resumed_in`).
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! use butter::Node;
//! let local = "127.0.0.1:0".parse().unwrap();
//! let server = Node::builder().listen(local).lan_discovery(false)
//!     .route("hi", |_req: butter::Request| async move { Ok("hi") })
//!     .spawn().await?;
//! let client = Node::builder().listen(local).lan_discovery(false).spawn().await?;
//! client.call(server.addr(), "hi", "").await?;  // a full handshake
//! client.disconnect(&server.id());
//! client.call(server.addr(), "hi", "").await?;  // resumes the session
//! assert_eq!(client.stats().resumptions_offered, 1);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;

use rustls::client::ClientSessionStore;
use rustls::pki_types::ServerName;
use rustls::server::StoresServerSessions;
use rustls::NamedGroup;

/// Called once per counted event.
pub type Counter = Arc<dyn Fn() + Send + Sync>;

/// Sessions each cache keeps (rustls' default).
pub const SESSIONS: usize = 256;

/// A client's session cache that counts the tickets it hands out for a
/// resumption attempt.
pub struct CountingClientSessions {
    inner: Arc<dyn ClientSessionStore>,
    offered: Counter,
}

impl CountingClientSessions {
    /// An in-memory cache of [`SESSIONS`] sessions, counting with `offered`.
    pub fn new(offered: Counter) -> Self {
        CountingClientSessions {
            inner: Arc::new(rustls::client::ClientSessionMemoryCache::new(SESSIONS)),
            offered,
        }
    }
}

impl fmt::Debug for CountingClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingClientSessions").finish()
    }
}

impl ClientSessionStore for CountingClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value)
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            (self.offered)();
        }
        ticket
    }
}

/// A server's session cache that counts the sessions it resumes.
pub struct CountingServerSessions {
    inner: Arc<dyn StoresServerSessions>,
    resumed: Counter,
}

impl CountingServerSessions {
    /// An in-memory cache of [`SESSIONS`] sessions, counting with `resumed`.
    pub fn new(resumed: Counter) -> Self {
        CountingServerSessions {
            inner: rustls::server::ServerSessionMemoryCache::new(SESSIONS),
            resumed,
        }
    }
}

impl fmt::Debug for CountingServerSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingServerSessions").finish()
    }
}

impl StoresServerSessions for CountingServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let found = self.inner.get(key);
        if found.is_some() {
            (self.resumed)();
        }
        found
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let found = self.inner.take(key);
        if found.is_some() {
            (self.resumed)();
        }
        found
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}
