//! The multicast socket: joins the group on the chosen interfaces, sends beacons
//! out of each of them, receives everyone's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::DiscoverySettings;

pub(crate) struct MulticastSocket {
    socket: UdpSocket,
    group: SocketAddrV4,
    interfaces: Vec<Ipv4Addr>,
}

/// Non-loopback IPv4 interface addresses.
pub(crate) fn lan_interfaces() -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
            _ => None,
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

impl MulticastSocket {
    /// Binds the group port (shared with other nodes on this host) and joins the
    /// group on every chosen interface that accepts it.
    pub(crate) fn open(settings: &DiscoverySettings) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(1)?;
        socket.set_nonblocking(true)?;
        socket.bind(
            &SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                settings.group.port(),
            ))
            .into(),
        )?;
        let wanted = if settings.interfaces.is_empty() {
            lan_interfaces()
        } else {
            settings.interfaces.clone()
        };
        let mut interfaces = Vec::new();
        for ip in wanted {
            match socket.join_multicast_v4(settings.group.ip(), &ip) {
                Ok(()) => interfaces.push(ip),
                Err(e) => {
                    tracing::debug!(interface = %ip, error = %e, "cannot join the multicast group here")
                }
            }
        }
        if interfaces.is_empty() {
            tracing::info!(group = %settings.group, "no multicast-capable interface: LAN discovery only listens");
        }
        Ok(MulticastSocket {
            socket: UdpSocket::from_std(socket.into())?,
            group: settings.group,
            interfaces,
        })
    }

    /// Sends one datagram to the group out of every interface; returns how many
    /// copies left.
    pub(crate) async fn send(&self, bytes: &[u8]) -> usize {
        let mut sent = 0;
        for ip in &self.interfaces {
            let sock = socket2::SockRef::from(&self.socket);
            if sock.set_multicast_if_v4(ip).is_err() {
                continue;
            }
            match self.socket.send_to(bytes, SocketAddr::V4(self.group)).await {
                Ok(_) => sent += 1,
                Err(e) => tracing::debug!(interface = %ip, error = %e, "multicast send failed"),
            }
        }
        sent
    }

    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}
