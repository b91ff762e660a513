//! Relay tunnels, node side: a QUIC stream through an introducer that carries
//! another QUIC connection's packets, each framed as `u16 LE length + packet`.
//!
//! The tunnel is joined to the node's socket as a virtual path (see
//! [`crate::net`]): quinn sends to a synthetic address and the packets go into
//! the tunnel; packets read from the tunnel are handed to quinn as if received
//! from that address. The inner connection is an ordinary Butter connection,
//! mutually authenticated end to end, so the relay only moves ciphertext.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::net::DemuxSocket;
use crate::router::Body;

/// Largest packet a tunnel frame carries (QUIC datagrams are far smaller).
pub const MAX_PACKET: usize = 65_535;
/// Outgoing packets queued per tunnel before new ones are dropped.
const QUEUE: usize = 1024;

/// Frames one packet.
pub fn frame(packet: &[u8]) -> Bytes {
    let len = packet.len().min(MAX_PACKET);
    let mut out = BytesMut::with_capacity(2 + len);
    out.put_u16_le(len as u16);
    out.extend_from_slice(&packet[..len]);
    out.freeze()
}

/// Reads one framed packet; `None` at the end of the tunnel.
pub async fn read_packet(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Bytes>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut packet = vec![0u8; u16::from_le_bytes(len) as usize];
    r.read_exact(&mut packet).await?;
    Ok(Some(packet.into()))
}

/// Joins a tunnel to the socket. `first` is sent ahead of the packets (the
/// tunnel's opening frame, if this side sends one). Returns the virtual path's
/// address and the outgoing body; [`pump_in`] must then be run on the tunnel's
/// incoming half.
pub(crate) fn attach(socket: &DemuxSocket, first: Option<Bytes>) -> (SocketAddr, Body) {
    let (addr, rx) = socket.open_virtual(QUEUE);
    let packets = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|p| (Ok(frame(&p)), rx))
    });
    let head = futures_util::stream::iter(first.map(Ok));
    (
        addr,
        Body::from_stream(futures_util::StreamExt::chain(head, packets)),
    )
}

/// Hands the packets arriving through the tunnel to quinn until the tunnel
/// ends, then closes the virtual path (which ends the outgoing half too).
pub(crate) async fn pump_in(
    socket: Arc<DemuxSocket>,
    addr: SocketAddr,
    mut incoming: impl AsyncRead + Unpin,
) {
    loop {
        match read_packet(&mut incoming).await {
            Ok(Some(packet)) => {
                // A full queue drops the packet, like a congested link.
                let _ = socket.inject(addr, packet);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "relay tunnel broke");
                break;
            }
        }
    }
    socket.close_virtual(addr);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_cut_frame_is_an_error() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame(b"hello"));
        wire.extend_from_slice(&frame(b""));
        wire.extend_from_slice(&frame(&[7u8; 1500]));
        let mut r = &wire[..];
        assert_eq!(read_packet(&mut r).await.unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(read_packet(&mut r).await.unwrap().unwrap().len(), 0);
        assert_eq!(read_packet(&mut r).await.unwrap().unwrap().len(), 1500);
        assert!(read_packet(&mut r).await.unwrap().is_none());
        let cut = &wire[..4];
        assert!(read_packet(&mut &cut[..]).await.is_err());
    }
}
