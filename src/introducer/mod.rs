//! The introducer: a public Butter node that helps the others find and
//! reach each other — registration and introductions (who is out there),
//! STUN answers on its UDP port, hole-punch coordination, and a relay of
//! last resort that forwards QUIC packets it cannot read. It never holds
//! user data. It is an ordinary [`Service`](crate::node::Service) on an
//! ordinary node: the `butter-introducer` binary runs one, and any
//! application can embed one (the `butter demo` does).
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! use butter::introducer::{self, Introducer};
//! use butter::{NatSettings, Node};
//!
//! let service = Introducer::new(introducer::Config::default());
//! let intro = introducer::builder("127.0.0.1:0".parse().unwrap())
//!     .service(service.clone())
//!     .spawn()
//!     .await?;
//! // A node that knows only the introducer registers with it.
//! let node = Node::builder()
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .lan_discovery(false)
//!     .nat(NatSettings { introducers: vec![intro.addr()], ..Default::default() })
//!     .spawn()
//!     .await?;
//! while service.stats().registrations == 0 {
//!     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
//! }
//! # let _ = node; Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod limits;
mod registry;
mod service;

use std::net::SocketAddr;
use std::time::Duration;

pub use registry::{Refused, Registration, Registry};
pub use service::{Config, Introducer};

use crate::{
    DhtSettings, Limits, MembershipSettings, NatSettings, Node, NodeBuilder, UpnpSettings,
};

impl Default for Config {
    /// The `butter-introducer` binary's defaults.
    fn default() -> Self {
        Config {
            max_registrations: 100_000,
            max_per_source: 64,
            ttl: Duration::from_secs(60),
            rate: 20.0,
            burst: 40.0,
            relay_max: 256,
            relay_per_peer: 8,
            relay_per_source: 32,
            relay_idle: Duration::from_secs(60),
            relay_lifetime: Duration::from_secs(3600),
            relay_rate: 32 << 20,
        }
    }
}

/// The settings of a node that serves as an introducer: it says so in its
/// pings, answers more STUN requests than a plain node (a STUN server for
/// everyone), holds no user data (it serves neither the DHT nor content:
/// a guest there), stays off the LAN (no beacons) and maps no port. Add
/// the service ([`Introducer`]) and, for a long-lived one, a data dir.
pub fn builder(listen: SocketAddr) -> NodeBuilder {
    Node::builder()
        .listen(listen)
        .lan_discovery(false)
        .dht(DhtSettings {
            serve: false,
            ..Default::default()
        })
        .limits(limits(Limits::default()))
        .nat(NatSettings {
            upnp: UpnpSettings {
                enabled: false,
                ..Default::default()
            },
            ..Default::default()
        })
        .membership(MembershipSettings {
            introducer: true,
            ..Default::default()
        })
}

/// `base` with the STUN limits of an introducer.
pub fn limits(base: Limits) -> Limits {
    Limits {
        stun_per_source: 20.0,
        stun_total: 20_000.0,
        ..base
    }
}
