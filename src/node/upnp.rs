//! The UPnP service: keeps the node's port mapped on the LAN's gateway while
//! the node runs, and removes the mapping when it stops.

use std::net::SocketAddr;
use std::sync::Arc;

use super::service::{Routes, Service, ServiceContext};
use super::Node;
use crate::nat::{UpnpSettings, UpnpStatus};
use crate::stats::Stats;

/// Maps the node's port (no routes).
pub(super) struct UpnpService {
    pub(super) settings: UpnpSettings,
    pub(super) local: SocketAddr,
    pub(super) label: String,
    pub(super) status: Arc<tokio::sync::watch::Sender<UpnpStatus>>,
    pub(super) stats: Arc<Stats>,
}

impl UpnpService {
    /// The address to map on the gateway, if the node should: UPnP on, and
    /// bound to IPv4 beyond loopback (igd-next maps IPv4 ports; a loopback
    /// node is not on any LAN).
    pub(super) fn wanted(settings: &UpnpSettings, local: Option<SocketAddr>) -> Option<SocketAddr> {
        let local = local?;
        (settings.enabled && local.is_ipv4() && !local.ip().is_loopback() && local.port() != 0)
            .then_some(local)
    }
}

impl Service for UpnpService {
    fn name(&self) -> &'static str {
        "upnp"
    }

    fn routes(&self, _routes: &mut Routes<'_>) {}

    fn start(&self, ctx: &ServiceContext) {
        // Graceful: on cancellation it removes the mapping before it ends.
        ctx.tasks().spawn_graceful(crate::nat::upnp::run(
            self.settings.clone(),
            self.local,
            self.label.clone(),
            self.status.clone(),
            self.stats.clone(),
            ctx.tasks().token(),
        ));
    }
}

impl Node {
    /// Where the node's UPnP port mapping stands.
    ///
    /// ```
    /// # async fn f(node: butter::Node) {
    /// if let butter::UpnpStatus::Mapped { external, .. } = node.upnp_status() {
    ///     println!("reachable from outside at {external}");
    /// }
    /// # }
    /// ```
    pub fn upnp_status(&self) -> UpnpStatus {
        self.shared().upnp.borrow().clone()
    }

    /// Follows the UPnP status as it changes (mapped, renewed, lost, released).
    pub fn upnp_changes(&self) -> tokio::sync::watch::Receiver<UpnpStatus> {
        self.shared().upnp.subscribe()
    }
}
