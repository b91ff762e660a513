//! NAT traversal, node side: STUN over the node's shared UDP socket, hole
//! punching coordinated by introducers, relay tunnels of last resort, and a
//! UPnP port mapping on the LAN's gateway. The introducer protocol itself is in
//! [`protocol`].

pub mod predict;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod protocol;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod punch;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod relay;
pub mod schedule;
pub mod scope;
/// Protocol internals: see [`crate::unstable`].
#[doc(hidden)]
pub mod stun;
pub mod upnp;

pub use predict::PredictSettings;
pub use upnp::{UpnpSettings, UpnpStatus};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::addr::NodeAddr;

/// How a node reaches the Internet's peers: its introducers and the timing of
/// punches and registrations.
#[derive(Debug, Clone)]
pub struct NatSettings {
    /// Introducers to register with and to ask for introductions, punches and
    /// relaying.
    pub introducers: Vec<NodeAddr>,
    /// Whether this node registers with its introducers (so that others can
    /// reach it through them). A one-shot client does not: it only asks them
    /// for introductions, punches and relays, and nobody keeps trying to
    /// reach it after it has gone.
    pub register: bool,
    /// How often registrations are refreshed (also keeps the NAT mapping and the
    /// introducer's connection alive; keep it under both timeouts).
    pub register_interval: Duration,
    /// Head start of a dial to a peer's known addresses before traversal
    /// (punch, prediction, relay) races it.
    pub traverse_after: Duration,
    /// How long a coordinated punch may take.
    pub punch_timeout: Duration,
    /// The punch's head start: the relay is tried in parallel after this.
    /// The first path that connects wins; a punch that succeeds later still
    /// replaces the relayed connection.
    pub relay_after: Duration,
    /// Punch packets are sent this often while punching.
    pub punch_interval: Duration,
    /// A relayed connection tries to become direct this often.
    pub upgrade_interval: Duration,
    /// Port mapping on the LAN's UPnP gateway.
    pub upnp: UpnpSettings,
    /// Port prediction when one side's NAT maps per destination.
    pub predict: PredictSettings,
}

impl Default for NatSettings {
    fn default() -> Self {
        NatSettings {
            introducers: Vec::new(),
            register: true,
            register_interval: Duration::from_secs(10),
            traverse_after: Duration::from_millis(500),
            punch_timeout: Duration::from_secs(3),
            relay_after: Duration::from_secs(1),
            punch_interval: Duration::from_millis(100),
            upgrade_interval: Duration::from_secs(30),
            upnp: UpnpSettings::default(),
            predict: PredictSettings::default(),
        }
    }
}

pub use crate::path::PathKind;

/// What [`crate::Node::connection_info`] reports about the connection to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// How the connection travels.
    pub path: PathKind,
    /// The peer's address on this path (a synthetic 240.0.0.0/4 address when
    /// relayed).
    pub remote: SocketAddr,
    /// Current round-trip estimate.
    pub rtt: Duration,
}

/// STUN transactions in flight, waiting for their responses.
#[derive(Default)]
pub(crate) struct PendingStun {
    waiting: Mutex<HashMap<[u8; 12], oneshot::Sender<SocketAddr>>>,
}

impl PendingStun {
    pub(crate) fn start(&self, tid: [u8; 12]) -> oneshot::Receiver<SocketAddr> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Abandoned transactions (their callers gave up) are dropped here.
        waiting.retain(|_, tx| !tx.is_closed());
        waiting.insert(tid, tx);
        rx
    }

    /// Completes a transaction; false if nobody asked for it (stray or forged).
    pub(crate) fn complete(&self, tid: [u8; 12], mapped: SocketAddr) -> bool {
        let tx = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tid);
        tx.is_some_and(|tx| tx.send(mapped).is_ok())
    }
}
