//! Relay tunnels through an introducer, the path of last resort: the dialing
//! side (`relay_via`) and the answering side (`butter/relay-in`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::punch::from_introducer;
use super::service::{Routes, Service};
use super::Node;
use crate::addr::NodeAddr;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::nat::protocol::{RelayIn, RelayOpen, RELAY_IN_ROUTE, RELAY_ROUTE};
use crate::nat::relay;
use crate::net;
use crate::router::{Body, StreamRequest};
use crate::wire::{self, MAX_HEADER};

impl Node {
    /// Opens a relay tunnel to `id` through `intro` and connects over it.
    pub(super) async fn relay_via(
        &self,
        intro: &NodeAddr,
        id: NodeId,
    ) -> Result<quinn::Connection> {
        let shared = self.shared();
        let open = wire::encode_frame(&RelayOpen { target: id }, MAX_HEADER)?;
        let (addr, outgoing) = relay::attach(&shared.endpoint.socket, Some(open.into()));
        // Closes the tunnel's path on every way out but success, including
        // this future being dropped because a punch won the race.
        let mut path = VirtualPath {
            socket: &shared.endpoint.socket,
            addr: Some(addr),
        };
        let incoming = self
            .call_stream(intro.clone(), RELAY_ROUTE, outgoing)
            .await?;
        let socket = shared.endpoint.socket.clone();
        // The tunnel is as quiet as the connection it carries.
        shared.tasks.spawn(relay::pump_in(
            socket,
            addr,
            incoming.without_stall_timeout(),
        ));
        match shared
            .endpoint
            .connect_once(id, addr, shared.endpoint.connect_timeout())
            .await
        {
            Ok(conn) => {
                path.addr = None;
                shared.stats.handshakes_out.fetch_add(1, Ordering::Relaxed);
                shared.endpoint.install(id, conn.clone(), None);
                let socket = shared.endpoint.socket.clone();
                let watched = conn.clone();
                shared.tasks.spawn(async move {
                    watched.closed().await;
                    socket.close_virtual(addr);
                });
                tracing::info!(peer = %id.short(), via = %intro.id.short(), "connected over relay");
                Ok(conn)
            }
            Err(e) => Err(e),
        }
    }
}

/// A relay tunnel's virtual path, closed on drop unless taken over.
struct VirtualPath<'a> {
    socket: &'a net::DemuxSocket,
    addr: Option<SocketAddr>,
}

impl Drop for VirtualPath<'_> {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            self.socket.close_virtual(addr);
        }
    }
}

/// `butter/relay-in`: an introducer opens a tunnel from a peer to us.
pub(super) struct RelayInService;

impl Service for RelayInService {
    fn name(&self) -> &'static str {
        "relay-in"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let node = routes.node();
        routes.streaming(RELAY_IN_ROUTE, move |mut req: StreamRequest| {
            let shared = node.upgrade().map(|n| n.shared_arc());
            async move {
                let shared = shared.ok_or(Error::Shutdown)?;
                from_introducer(&shared, &req.peer())?;
                let hello: RelayIn = tokio::time::timeout(
                    shared.limits.header_timeout,
                    wire::read_frame(&mut req.body, MAX_HEADER),
                )
                .await
                .map_err(|_| Error::Timeout("relay hello"))??;
                tracing::debug!(from = %hello.from.short(), via = %req.peer().short(), "relay tunnel in");
                let (addr, outgoing) = relay::attach(&shared.endpoint.socket, None);
                shared.tasks.spawn(relay::pump_in(
                    shared.endpoint.socket.clone(),
                    addr,
                    req.body.without_stall_timeout(),
                ));
                Ok::<Body, Error>(outgoing)
            }
        });
    }
}
