//! Hole punching: the datagrams a node sprays at a peer's candidate addresses so
//! that its own NAT lets the peer's QUIC handshake in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::identity::NodeId;
use crate::net::DemuxSocket;

/// Start of every punch datagram. Its first byte has the QUIC fixed bit clear, so
/// the shared socket diverts it; it is not STUN (no magic cookie).
pub const MAGIC: &[u8; 8] = b"\x3fBTRPNCH";

/// A punch datagram from `from`.
pub fn packet(from: &NodeId) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(from.as_bytes());
    p
}

/// Whether a diverted datagram is a punch packet.
pub fn is_punch(data: &[u8]) -> bool {
    data.len() == MAGIC.len() + 32 && data.starts_with(MAGIC)
}

/// The node a punch packet claims to come from. Unauthenticated: it only
/// ever causes a dial, and the handshake proves (or refutes) the claim.
pub fn sender(data: &[u8]) -> Option<NodeId> {
    if !is_punch(data) {
        return None;
    }
    let key: [u8; 32] = data[MAGIC.len()..].try_into().ok()?;
    Some(NodeId::from_bytes(key))
}

/// Peers being punched towards, and where to tell of their punch packets:
/// the address a peer's packet arrives from is a *peer-reflexive* candidate
/// (its NAT's mapping towards us), often the only one that works when the
/// peer's NAT maps each destination anew.
#[derive(Default)]
pub(crate) struct PunchWatch {
    waiting: Mutex<HashMap<NodeId, Vec<mpsc::Sender<SocketAddr>>>>,
}

/// At most this many peer-reflexive addresses are queued per punch.
const MAX_REFLEXIVE: usize = 4;

impl PunchWatch {
    /// Starts listening for `peer`'s punch packets; dropping the receiver
    /// ends the watch.
    pub(crate) fn watch(&self, peer: NodeId) -> mpsc::Receiver<SocketAddr> {
        let (tx, rx) = mpsc::channel(MAX_REFLEXIVE);
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, txs| {
            txs.retain(|tx| !tx.is_closed());
            !txs.is_empty()
        });
        waiting.entry(peer).or_default().push(tx);
        rx
    }

    /// A punch packet from `peer` arrived from `from`.
    pub(crate) fn seen(&self, peer: NodeId, from: SocketAddr) {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for tx in waiting.get(&peer).into_iter().flatten() {
            let _ = tx.try_send(from);
        }
    }
}

/// Sends punch packets to every target each `interval` for `duration`, or until
/// `done` says the connection came up. Paced and bounded: at most
/// `duration / interval` rounds, to the given targets only.
pub(crate) async fn spray(
    socket: &DemuxSocket,
    me: &NodeId,
    targets: &[SocketAddr],
    interval: Duration,
    duration: Duration,
    done: impl Fn() -> bool,
) -> u64 {
    let packet = packet(me);
    let mut plan = super::schedule::SprayPlan::new(Instant::now(), interval, duration);
    let mut sent = 0;
    while !done() {
        let Some(next) = plan.round(Instant::now()) else {
            break;
        };
        for t in targets {
            if socket.send_raw(*t, &packet).is_ok() {
                sent += 1;
            }
        }
        tokio::time::sleep_until(next.into()).await;
    }
    sent
}
