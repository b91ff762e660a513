//! Hole punching: the datagrams a node sprays at a peer's candidate addresses so
//! that its own NAT lets the peer's QUIC handshake in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    let end = Instant::now() + duration;
    let mut sent = 0;
    while Instant::now() < end && !done() {
        for t in targets {
            if socket.send_raw(*t, &packet).is_ok() {
                sent += 1;
            }
        }
        tokio::time::sleep(interval).await;
    }
    sent
}
