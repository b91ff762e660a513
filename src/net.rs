//! The node's one UDP socket, shared by QUIC and (from the NAT layer on) STUN.
//!
//! QUIC v1 packets always have the fixed bit (0x40) set in their first byte, since
//! Butter endpoints do not advertise `grease_quic_bit`; STUN messages start with
//! two zero bits. [`DemuxSocket`](crate::net::DemuxSocket) sits between quinn and the kernel socket and
//! diverts every datagram without the fixed bit to a side channel, so the STUN
//! client (and later the hole-punching probes) use the same port, and therefore
//! the same NAT mapping, as the QUIC connections.
//!
//! It also carries **virtual paths**: QUIC packets to and from a peer reached
//! through a relay. Each such peer gets a synthetic address from 240.0.0.0/4
//! (reserved, never routed); quinn sends to it and receives from it like any
//! address, while the bytes travel inside a relay tunnel (see `nat::relay`). The
//! packets stay end-to-end encrypted: the relay only ever moves them.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// A datagram that is not QUIC, with its source.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Where it came from.
    pub from: SocketAddr,
    /// Its bytes.
    pub data: Bytes,
}

/// Whether a datagram's first byte marks it as QUIC (fixed bit set).
pub fn is_quic(first_byte: u8) -> bool {
    first_byte & 0x40 != 0
}

/// Whether an address is a virtual (relayed) path's synthetic address.
pub fn is_virtual(addr: SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] >= 240 && !v4.is_broadcast(),
        IpAddr::V6(_) => false,
    }
}

/// Packets waiting to be injected as if received: room for bursts, bounded.
const INJECT_QUEUE: usize = 4096;

/// Binds the node's UDP socket with generous kernel buffers (bulk transfers and
/// bursts of handshakes otherwise drop packets in the kernel).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the OS allows it, so one socket serves both families.
        let _ = socket.set_only_v6(false);
    }
    for size in [8 << 20, 4 << 20, 2 << 20] {
        if socket.set_recv_buffer_size(size).is_ok() {
            break;
        }
    }
    for size in [8 << 20, 4 << 20, 2 << 20] {
        if socket.set_send_buffer_size(size).is_ok() {
            break;
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// quinn's socket, with non-QUIC datagrams diverted (see the module docs).
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    side: Mutex<Option<mpsc::Sender<Datagram>>>,
    diverted: AtomicU64,
    dropped: AtomicU64,
    /// Set by [`DemuxSocket::mute`]: nothing leaves any more.
    muted: std::sync::atomic::AtomicBool,
    /// Outgoing packets of each virtual path, by synthetic address.
    virtual_out: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    inject_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    inject_rx: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    next_virtual: AtomicU32,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("inner", &self.inner)
            .field("diverted", &self.diverted.load(Ordering::Relaxed))
            .finish()
    }
}

impl DemuxSocket {
    /// Wraps a socket made by quinn's runtime.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        let (inject_tx, inject_rx) = mpsc::channel(INJECT_QUEUE);
        DemuxSocket {
            inner,
            side: Mutex::new(None),
            diverted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            muted: Default::default(),
            virtual_out: Mutex::default(),
            inject_tx,
            inject_rx: Mutex::new(inject_rx),
            next_virtual: AtomicU32::new(1),
        }
    }

    /// Opens a virtual path: returns its synthetic address (in the form quinn
    /// uses on this socket) and the packets quinn sends to it.
    pub(crate) fn open_virtual(&self, capacity: usize) -> (SocketAddr, mpsc::Receiver<Bytes>) {
        let n = self.next_virtual.fetch_add(1, Ordering::Relaxed) & 0x0fff_ffff;
        let v4 = Ipv4Addr::from(0xf000_0000 | n);
        let addr = SocketAddr::new(IpAddr::V4(v4), 1);
        let (tx, rx) = mpsc::channel(capacity);
        lock(&self.virtual_out).insert(addr, tx);
        (self.quinn_form(addr), rx)
    }

    /// Closes a virtual path: quinn's packets to it are dropped from now on.
    pub(crate) fn close_virtual(&self, addr: SocketAddr) {
        lock(&self.virtual_out).remove(&canonical(addr));
    }

    /// Hands quinn a packet that arrived over a virtual path. False if the
    /// queue is full (dropped, as a congested link would).
    pub(crate) fn inject(&self, from: SocketAddr, packet: Bytes) -> bool {
        self.inject_tx
            .try_send((self.quinn_form(from), packet))
            .is_ok()
    }

    /// The address form quinn uses: v4-mapped IPv6 on a dual-stack socket.
    fn quinn_form(&self, addr: SocketAddr) -> SocketAddr {
        match (self.inner.local_addr(), addr.ip()) {
            (Ok(SocketAddr::V6(_)), IpAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port())
            }
            _ => addr,
        }
    }

    fn send_virtual(&self, transmit: &Transmit) {
        let out = lock(&self.virtual_out)
            .get(&canonical(transmit.destination))
            .cloned();
        let Some(out) = out else { return };
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            // A full tunnel drops the packet like a full link; QUIC recovers.
            let _ = out.try_send(Bytes::copy_from_slice(segment));
        }
    }

    /// Routes non-QUIC datagrams to a channel from now on (replacing any earlier
    /// one). Without a subscriber they are counted and dropped.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Datagram> {
        let (tx, rx) = mpsc::channel(capacity);
        *lock(&self.side) = Some(tx);
        rx
    }

    /// From now on every packet is dropped instead of sent (a crash, as
    /// peers see it: not even a connection close goes out).
    pub(crate) fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }

    fn is_muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Sends a raw datagram from the shared port (STUN requests, punch packets).
    /// Best effort like any UDP send: `WouldBlock` means the socket buffer is full.
    pub fn send_raw(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        if self.is_muted() {
            return Ok(());
        }
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        })
    }

    /// Non-QUIC datagrams seen so far, and how many of them found no room.
    pub fn diverted(&self) -> (u64, u64) {
        (
            self.diverted.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Takes the non-QUIC segments out of one received buffer (which may hold
    /// several GRO segments of `stride` bytes) and compacts the QUIC ones.
    fn divert(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let len = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { len } else { meta.stride };
        if stride == 0 || buf[..len].chunks(stride).all(|seg| is_quic(seg[0])) {
            return;
        }
        let mut write = 0;
        let mut read = 0;
        while read < len {
            let end = (read + stride).min(len);
            if is_quic(buf[read]) {
                buf.copy_within(read..end, write);
                write += end - read;
            } else {
                self.hand_over(meta.addr, &buf[read..end]);
            }
            read = end;
        }
        // A zero length makes quinn skip the entry.
        meta.len = write;
    }

    fn hand_over(&self, from: SocketAddr, data: &[u8]) {
        self.diverted.fetch_add(1, Ordering::Relaxed);
        let side = lock(&self.side);
        let delivered = side.as_ref().is_some_and(|tx| {
            tx.try_send(Datagram {
                from,
                data: Bytes::copy_from_slice(data),
            })
            .is_ok()
        });
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.is_muted() {
            return Ok(());
        }
        if is_virtual(transmit.destination) {
            self.send_virtual(transmit);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Relayed packets first (this also registers the waker for them).
        if let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) {
            if let Poll::Ready(Some((from, packet))) = lock(&self.inject_rx).poll_recv(cx) {
                let len = packet.len().min(buf.len());
                buf[..len].copy_from_slice(&packet[..len]);
                *m = RecvMeta {
                    addr: from,
                    len,
                    stride: len,
                    ecn: None,
                    dst_ip: None,
                };
                return Poll::Ready(Ok(1));
            }
        }
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            self.divert(buf, meta);
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The addresses a node bound to an unspecified address advertises: those
/// of the interfaces that are up (an interface set down, or a bridge with
/// nothing attached — no carrier — is left out), IPv4 or IPv6 as bound
/// (`v4`), link-local left out; routable
/// first, then private, loopback only when nothing else is there.
pub fn advertised_ips(v4: bool) -> Vec<IpAddr> {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let mut ips: Vec<IpAddr> = interfaces
        .iter()
        .filter(|i| i.is_loopback() || interface_is_up(&i.name))
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == v4)
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .filter(|ip| !matches!(ip, IpAddr::V4(v4) if v4.is_link_local()))
        .collect();
    ips.sort_by_key(|ip| (address_class(*ip), !ip.is_ipv4(), *ip));
    ips.dedup();
    if ips.iter().any(|ip| !ip.is_loopback()) {
        ips.retain(|ip| !ip.is_loopback());
    }
    if ips.is_empty() {
        ips.push(if v4 {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    ips
}

/// 0: routable, 1: private (a LAN, CGNAT, unique-local), 2: loopback.
fn address_class(ip: IpAddr) -> u8 {
    if ip.is_loopback() {
        2
    } else if crate::source::is_private(ip) {
        1
    } else {
        0
    }
}

/// Whether the interface `name` is up with a carrier (Linux: its sysfs
/// `operstate` is not "down"/"lowerlayerdown"/"notpresent", and its
/// `carrier` is not 0). Elsewhere, or when sysfs says nothing: up.
fn interface_is_up(name: &str) -> bool {
    let dir = std::path::Path::new("/sys/class/net").join(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if let Some(state) = read("operstate") {
        if matches!(state.trim(), "down" | "lowerlayerdown" | "notpresent") {
            return false;
        }
    }
    !matches!(read("carrier").as_deref().map(str::trim), Some("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_and_quic_first_bytes_are_told_apart() {
        // STUN binding request type 0x0001: first byte 0x00.
        assert!(!is_quic(0x00));
        assert!(!is_quic(0x01));
        // QUIC long header (0xc0..) and short header (0x40..).
        assert!(is_quic(0xc3));
        assert!(is_quic(0x43));
    }

    #[tokio::test]
    async fn non_quic_datagrams_reach_the_side_channel() {
        let rt = quinn::default_runtime().unwrap();
        let std_sock = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = std_sock.local_addr().unwrap();
        let demux = DemuxSocket::new(rt.wrap_udp_socket(std_sock).unwrap());
        let mut rx = demux.subscribe(4);
        // Segments: QUIC, STUN, QUIC (stride 4).
        let mut data = [0x40, 1, 1, 1, 0x00, 2, 2, 2, 0xc0, 3, 3];
        let mut meta = RecvMeta {
            addr,
            len: data.len(),
            stride: 4,
            ecn: None,
            dst_ip: None,
        };
        demux.divert(&mut data, &mut meta);
        assert_eq!(meta.len, 7);
        assert_eq!(&data[..7], &[0x40, 1, 1, 1, 0xc0, 3, 3]);
        let got = rx.try_recv().unwrap();
        assert_eq!(&got.data[..], &[0x00, 2, 2, 2]);
        assert_eq!(demux.diverted(), (1, 0));
    }
}
