//! # Butter: the network that spreads
//!
//! A QUIC-native peer-to-peer library. Every peer is a QUIC endpoint whose identity
//! is an ed25519 key; connections are mutually authenticated; streams map to named
//! routes, registered like handlers in a web framework.
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! let node = butter::Node::builder()
//!     .listen("127.0.0.1:0".parse().unwrap()) // loopback: this demo stays off the LAN
//!     .route("reverse", |req: butter::Request| async move {
//!         Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
//!     })
//!     .spawn()
//!     .await?;
//! let peer = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
//! let reply = peer.call(node.addr(), "reverse", "hello").await?;
//! assert_eq!(&reply[..], b"olleh");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! Layers, bottom-up: [`identity`] (keys, certificates, verifiers), `wire` (frames),
//! `net` (the shared UDP socket; these two are in [`unstable`]), `endpoint` (quinn, connection cache, dialing),
//! `router` (named routes), [`node`] (the [`Node`] API).
#![warn(missing_docs)]

mod addr;
mod admission;
pub mod backoff;
mod budget;
pub mod config;
pub mod content;
mod deadline;
pub mod dht;
pub mod discovery;
mod endpoint;
mod error;
pub mod identity;
pub mod introducer;
pub mod messaging;
pub mod nat;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod net;
pub mod node;
mod path;
mod patience;
pub mod peers;
pub mod ratelimit;
mod router;
pub mod search;
pub mod source;
mod stats;
pub mod store;
pub mod tasks;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod wire;

/// Protocol internals with no stability promise: the wire framing, the
/// introducer protocol's messages and routes, punch packets, relay framing,
/// the STUN responder, the TLS configuration and certificate checks, the
/// shared UDP socket. The introducer, the tests, the fuzz targets and the
/// benchmarks use them; applications should not (they change with the
/// protocol version).
pub mod unstable {
    #[doc(no_inline)]
    pub use crate::identity::{resume, tls};
    #[doc(no_inline)]
    pub use crate::nat::{protocol, punch, relay, stun};
    #[doc(no_inline)]
    pub use crate::net;
    #[doc(no_inline)]
    pub use crate::wire;
}

/// The README's examples are compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use addr::{NodeAddr, Target};
pub use config::{Limits, TransportSettings};
pub use discovery::DiscoverySettings;
pub use endpoint::transport_config;
pub use error::{Error, Result};
pub use identity::{Identity, NodeId};
pub use nat::{ConnectionInfo, NatSettings, PathKind, PredictSettings, UpnpSettings, UpnpStatus};
pub use node::{
    ContentSettings, Dht, DhtSettings, Document, Fetched, FoundNode, FoundRecord, Hit, Indexed,
    LookupReport, MessageStatus, Messages, MessagingSettings, Node, NodeBuilder, PeerHit, Ping,
    PingReply, ProviderStream, Published, Query, SearchSettings, Searched, Service, SharedFile,
    StorageUse, WeakNode,
};
pub use peers::{HostInfo, MembershipSettings, PeerEvent, Quality};
pub use router::{Body, RecvBody, Request, StreamRequest};
pub use stats::StatsSnapshot;
