//! UPnP IGD port mapping (igd-next): find the LAN's gateway, map the node's
//! UDP port on it, renew the lease, remove the mapping on shutdown. The mapped
//! address is advertised with the node's own addresses, so peers outside can
//! dial it directly. A gateway that is absent or refuses is a clean fallback:
//! one log line says why, and STUN, punching and relays carry on as before.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
#[cfg(feature = "upnp")]
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "upnp")]
use igd_next::aio::tokio::Tokio;
#[cfg(feature = "upnp")]
use igd_next::aio::Gateway;
#[cfg(feature = "upnp")]
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// How a node asks its gateway for a port mapping.
#[derive(Debug, Clone)]
pub struct UpnpSettings {
    /// Ask the gateway at all (on by default; never for a node bound to loopback).
    pub enabled: bool,
    /// Where the SSDP search goes: the standard multicast group by default, or
    /// a gateway's own address (`ROUTER:1900`) to ask that one alone.
    pub search_addr: SocketAddr,
    /// How long the search waits for a gateway to answer.
    pub search_timeout: Duration,
    /// Lease asked for; the mapping is renewed at half of it. Gateways that
    /// only grant permanent mappings get one, removed on shutdown.
    pub lease: Duration,
    /// After the gateway was absent, refused, or lost the mapping: wait this
    /// long before searching again.
    pub retry: Duration,
}

impl Default for UpnpSettings {
    fn default() -> Self {
        UpnpSettings {
            enabled: true,
            search_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900),
            search_timeout: Duration::from_secs(3),
            lease: Duration::from_secs(3600),
            retry: Duration::from_secs(600),
        }
    }
}

/// Where the node's port mapping stands ([`crate::Node::upnp_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpnpStatus {
    /// UPnP is off (by settings, or the node is bound to loopback or IPv6).
    Disabled,
    /// Looking for the gateway or asking it for a mapping.
    Searching,
    /// The gateway forwards `external` to the node's port.
    Mapped {
        /// The public side of the mapping, advertised to peers.
        external: SocketAddr,
        /// The gateway's control address.
        gateway: SocketAddr,
        /// Lease granted (zero: permanent until removed).
        lease: Duration,
    },
    /// No mapping: why (no gateway answered, it refused, ...). Retried later.
    Unavailable {
        /// What went wrong, for people.
        reason: String,
    },
    /// The mapping was removed because the node shut down.
    Released,
}

impl std::fmt::Display for UpnpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpnpStatus::Disabled => f.write_str("disabled"),
            UpnpStatus::Searching => f.write_str("searching"),
            UpnpStatus::Mapped {
                external,
                gateway,
                lease,
            } => write!(
                f,
                "mapped {external} (gateway {gateway}, lease {}s)",
                lease.as_secs()
            ),
            UpnpStatus::Unavailable { reason } => write!(f, "unavailable: {reason}"),
            UpnpStatus::Released => f.write_str("released"),
        }
    }
}

#[cfg(feature = "upnp")]
/// One mapping held on a gateway.
struct Mapping {
    gateway: Gateway<Tokio>,
    external_port: u16,
    internal: SocketAddr,
    lease_secs: u32,
}

#[cfg(feature = "upnp")]
/// Keeps the node's port mapped until `closed` is cancelled, then removes it.
/// Runs without a handle on the node, so the mapping is also removed when the
/// node is dropped rather than shut down (as long as the runtime lives).
pub(crate) async fn run(
    settings: UpnpSettings,
    local: SocketAddr,
    label: String,
    status: Arc<watch::Sender<UpnpStatus>>,
    stats: Arc<Stats>,
    closed: CancellationToken,
) {
    let mut last_refusal: Option<String> = None;
    loop {
        status.send_replace(UpnpStatus::Searching);
        let outcome = tokio::select! {
            _ = closed.cancelled() => return,
            m = map(&settings, local, &label) => m,
        };
        match outcome {
            Ok((mapping, external)) => {
                tracing::info!(%external, gateway = %mapping.gateway.addr, "UPnP: port mapped");
                stats.upnp_mapped.fetch_add(1, Ordering::Relaxed);
                status.send_replace(UpnpStatus::Mapped {
                    external,
                    gateway: mapping.gateway.addr,
                    lease: Duration::from_secs(mapping.lease_secs.into()),
                });
                let lost = hold(&settings, &mapping, &label, &stats, &closed).await;
                match lost {
                    None => {
                        release(&mapping).await;
                        status.send_replace(UpnpStatus::Released);
                        return;
                    }
                    Some(reason) => {
                        tracing::info!(%reason, "UPnP: mapping lost; continuing without it");
                        status.send_replace(UpnpStatus::Unavailable { reason });
                    }
                }
            }
            Err(reason) => {
                // A gateway that answers but refuses is worth a warning (once
                // per reason); no gateway at all is the common case.
                if reason.starts_with("gateway ") && last_refusal.as_deref() != Some(&reason) {
                    tracing::warn!(
                        %reason,
                        "UPnP: the gateway refused a port mapping; continuing without one (STUN, hole punching and relays still work)"
                    );
                    last_refusal = Some(reason.clone());
                } else {
                    tracing::info!(
                        %reason,
                        "UPnP: no port mapping; continuing without one (STUN, hole punching and relays still work)"
                    );
                }
                status.send_replace(UpnpStatus::Unavailable { reason });
            }
        }
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(settings.retry) => {}
        }
    }
}

#[cfg(feature = "upnp")]
/// Finds the gateway and maps the node's port: the same external port when
/// the gateway allows it, any free one otherwise.
async fn map(
    settings: &UpnpSettings,
    local: SocketAddr,
    label: &str,
) -> Result<(Mapping, SocketAddr), String> {
    let mut options = SearchOptions::default();
    options.broadcast_address = settings.search_addr;
    options.timeout = Some(settings.search_timeout);
    options.single_search_timeout = Some(settings.search_timeout);
    if !local.ip().is_unspecified() {
        options.bind_addr = SocketAddr::new(local.ip(), 0);
    }
    let gateway = igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(|e| match e {
            igd_next::SearchError::NoResponseWithinTimeout => format!(
                "no UPnP gateway answered within {:?} (searched {})",
                settings.search_timeout, settings.search_addr
            ),
            e => format!("UPnP gateway search failed: {e}"),
        })?;
    let internal = SocketAddr::new(internal_ip(local, gateway.addr)?, local.port());
    let external_ip = gateway.get_external_ip().await.map_err(|e| {
        let why = match e {
            // miniupnpd answers so when its WAN address is not public: it
            // will not forward anything either.
            igd_next::GetExternalIpError::RequestError(
                igd_next::RequestError::InvalidResponse(_),
            ) => "an answer without an address".to_string(),
            igd_next::GetExternalIpError::RequestError(e) => request_error(&e),
            e => e.to_string(),
        };
        format!(
            "gateway {} refused to give its external address ({why})",
            gateway.addr
        )
    })?;
    if external_ip.is_unspecified() {
        return Err(format!(
            "gateway {} is not connected (external address {external_ip})",
            gateway.addr
        ));
    }
    let mut lease_secs = u32::try_from(settings.lease.as_secs()).unwrap_or(u32::MAX);
    let mut external_port = local.port();
    let mut first = gateway
        .add_port(
            PortMappingProtocol::UDP,
            external_port,
            internal,
            lease_secs,
            label,
        )
        .await;
    if matches!(first, Err(AddPortError::OnlyPermanentLeasesSupported)) {
        lease_secs = 0;
        first = gateway
            .add_port(PortMappingProtocol::UDP, external_port, internal, 0, label)
            .await;
    }
    match first {
        Ok(()) => {}
        Err(AddPortError::PortInUse) => {
            external_port = gateway
                .add_any_port(PortMappingProtocol::UDP, internal, lease_secs, label)
                .await
                .map_err(|e| format!("gateway {} refused a mapping: {e}", gateway.addr))?;
        }
        Err(e) => {
            return Err(format!(
                "gateway {} refused to map UDP {external_port} to {internal}: {}",
                gateway.addr,
                describe(&e)
            ))
        }
    }
    let external = SocketAddr::new(external_ip, external_port);
    Ok((
        Mapping {
            gateway,
            external_port,
            internal,
            lease_secs,
        },
        external,
    ))
}

#[cfg(feature = "upnp")]
/// The node's address on the gateway's network: the bound address, or, for a
/// node bound to every interface, the one the kernel routes towards the gateway.
fn internal_ip(local: SocketAddr, gateway: SocketAddr) -> Result<IpAddr, String> {
    if !local.ip().is_unspecified() {
        return Ok(local.ip());
    }
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect(gateway).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no route to gateway {gateway}: {e}"))?;
    Ok(probe.ip())
}

#[cfg(feature = "upnp")]
/// UPnP error codes say more than igd-next's generic wrapper.
fn describe(e: &AddPortError) -> String {
    match e {
        AddPortError::RequestError(e) => request_error(e),
        e => e.to_string(),
    }
}

#[cfg(feature = "upnp")]
fn request_error(e: &igd_next::RequestError) -> String {
    match e {
        igd_next::RequestError::ErrorCode(code, text) => format!("UPnP error {code} ({text})"),
        // Its text can hold a whole SOAP document: keep the log line short.
        igd_next::RequestError::InvalidResponse(_) => "an answer that does not parse".into(),
        e => e.to_string(),
    }
}

#[cfg(feature = "upnp")]
/// Renews the lease at half its length until `closed` fires (`None`), or the
/// gateway stops renewing (`Some(reason)`).
async fn hold(
    settings: &UpnpSettings,
    m: &Mapping,
    label: &str,
    stats: &Stats,
    closed: &CancellationToken,
) -> Option<String> {
    // A permanent mapping still gets re-asserted now and then: gateways reboot.
    let every = if m.lease_secs == 0 {
        settings.lease / 2
    } else {
        Duration::from_secs(u64::from(m.lease_secs) / 2).max(Duration::from_secs(1))
    };
    loop {
        tokio::select! {
            _ = closed.cancelled() => return None,
            _ = tokio::time::sleep(every) => {}
        }
        let renewed = m
            .gateway
            .add_port(
                PortMappingProtocol::UDP,
                m.external_port,
                m.internal,
                m.lease_secs,
                label,
            )
            .await;
        match renewed {
            Ok(()) => {
                stats.upnp_renewed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(port = m.external_port, "UPnP: lease renewed");
            }
            Err(e) => return Some(format!("renewal refused: {}", describe(&e))),
        }
    }
}

#[cfg(feature = "upnp")]
/// Removes the mapping, bounded: shutdown must not hang on a dead gateway.
async fn release(m: &Mapping) {
    let removed = tokio::time::timeout(
        Duration::from_secs(2),
        m.gateway
            .remove_port(PortMappingProtocol::UDP, m.external_port),
    )
    .await;
    match removed {
        Ok(Ok(())) => tracing::info!(port = m.external_port, "UPnP: mapping removed"),
        Ok(Err(e)) => {
            tracing::info!(port = m.external_port, error = %e, "UPnP: removing the mapping failed")
        }
        Err(_) => tracing::info!(
            port = m.external_port,
            "UPnP: gateway did not answer the removal"
        ),
    }
}

/// Without the `upnp` cargo feature there is no gateway client: the status
/// says so once, and nothing else happens.
#[cfg(not(feature = "upnp"))]
pub(crate) async fn run(
    _settings: UpnpSettings,
    _local: SocketAddr,
    _label: String,
    status: Arc<watch::Sender<UpnpStatus>>,
    _stats: Arc<Stats>,
    _closed: CancellationToken,
) {
    status.send_replace(UpnpStatus::Unavailable {
        reason: "built without the `upnp` feature".into(),
    });
}
