//! Port prediction for a pair where one NAT maps every destination to a new
//! random port ("strict") and the other keeps one mapping per socket
//! ("moderate"): the birthday technique. The strict side opens many sockets
//! that each send to the moderate side's known mapping, creating as many
//! random mappings on its NAT; the moderate side sends paced probes to random
//! ports of the strict side's address. A probe that lands on one of those
//! mappings passes both NATs; the strict side then runs QUIC over the socket
//! that heard it. With 256 sockets and 1,024 probes over ~64,000 ports about
//! four hits are expected, so one or more in ~98 % of tries.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::sync::mpsc;

use super::punch;
use crate::identity::NodeId;
use crate::net::DemuxSocket;

/// How hard a prediction tries (per attempt; both sides use their own part).
#[derive(Debug, Clone)]
pub struct PredictSettings {
    /// Sockets the strict side opens (file descriptors, briefly).
    pub sockets: usize,
    /// Probes the moderate side sends at most.
    pub probes: usize,
    /// Over how long the probes are spread (also the attempt's time limit).
    pub duration: Duration,
}

impl Default for PredictSettings {
    fn default() -> Self {
        PredictSettings {
            sockets: 256,
            probes: 1024,
            duration: Duration::from_secs(2),
        }
    }
}

/// Whether a NAT seems to map per destination: the port it showed the
/// introducer is none of the node's own ports. Endpoint-independent NATs
/// (Linux `masquerade`, most home routers) keep the port when it is free.
pub(crate) fn maps_per_destination(observed: SocketAddr, own_ports: &[u16]) -> bool {
    !own_ports.contains(&observed.port())
}

/// The strict side's sockets: each sends punch packets to `target` (the
/// moderate side's mapping) every `resend` until one receives a datagram from
/// `target`. Returns that socket (the others are closed) and the number of
/// packets sent.
pub(crate) async fn open_many(
    me: &NodeId,
    target: SocketAddr,
    settings: &PredictSettings,
) -> (Option<std::net::UdpSocket>, u64) {
    let packet = punch::packet(me);
    let (won_tx, mut won) = mpsc::channel::<tokio::net::UdpSocket>(1);
    let mut tasks = tokio::task::JoinSet::new();
    let resend = Duration::from_millis(250);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bind = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    for _ in 0..settings.sockets {
        let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else {
            // Out of descriptors or ports: predict with what we have.
            break;
        };
        let (packet, won_tx, sent) = (packet.clone(), won_tx.clone(), sent.clone());
        tasks.spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                if socket.send_to(&packet, target).await.is_ok() {
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let heard = tokio::time::timeout(resend, socket.recv_from(&mut buf)).await;
                if matches!(heard, Ok(Ok((_, from))) if from == target) {
                    let _ = won_tx.try_send(socket);
                    return;
                }
            }
        });
    }
    drop(won_tx);
    // The other side starts probing a little later (its answer from the
    // introducer, its start delay) and hits near the end still count: wait a
    // moment past its probing window.
    let window = settings.duration + settings.duration / 4;
    let winner = tokio::time::timeout(window, won.recv())
        .await
        .ok()
        .flatten();
    // The spare sockets close with their tasks.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    (winner.and_then(|s| s.into_std().ok()), sent)
}

/// The moderate side: punch packets from the node's own socket to random
/// ports of `ip`, paced evenly over the settings' duration, at most
/// `settings.probes`; every address the peer's packets are seen coming from
/// (`learned`) gets a packet back at once. Stops when `done` says so. Counts
/// the probes in `sent` as they go.
pub(crate) async fn spray_random(
    socket: &DemuxSocket,
    me: &NodeId,
    ip: IpAddr,
    settings: &PredictSettings,
    mut learned: mpsc::Receiver<SocketAddr>,
    done: impl Fn() -> bool,
    sent: &std::sync::atomic::AtomicU64,
) {
    let packet = punch::packet(me);
    let mut ports: Vec<u16> = (1024..=u16::MAX).collect();
    ports.shuffle(&mut rand::rng());
    ports.truncate(settings.probes);
    // Batches every 10 ms: one timer per batch, not per probe.
    let tick = Duration::from_millis(10);
    let batches = (settings.duration.as_millis() / tick.as_millis()).max(1) as usize;
    let per_batch = ports.len().div_ceil(batches).max(1);
    let mut timer = tokio::time::interval(tick);
    let mut chunks = ports.chunks(per_batch);
    let mut learning = true;
    loop {
        tokio::select! {
            _ = timer.tick() => {
                if done() {
                    break;
                }
                let Some(batch) = chunks.next() else { break };
                for port in batch {
                    if socket.send_raw(SocketAddr::new(ip, *port), &packet).is_ok() {
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            from = learned.recv(), if learning => match from {
                Some(from) => {
                    let _ = socket.send_raw(from, &packet);
                }
                None => learning = false,
            },
        }
    }
}
