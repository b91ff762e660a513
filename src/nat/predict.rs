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

/// How many of `wanted` sockets a prediction may open now: a quarter of the
/// descriptors the process has left under its soft `RLIMIT_NOFILE` (so a
/// prediction never starves the rest of the process), at least 16.
pub(crate) fn affordable_sockets(wanted: usize) -> usize {
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok();
    let limit = nofile_limit();
    match (open, limit) {
        (Some(open), Some(limit)) => wanted
            .min((limit.saturating_sub(open as u64) / 4) as usize)
            .max(16.min(wanted)),
        _ => wanted,
    }
}

#[cfg(unix)]
fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    (rc == 0).then_some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn nofile_limit() -> Option<u64> {
    None
}

/// Who may start a prediction now: at most [`Predictions::AT_ONCE`] run, and
/// one peer may start one only every [`Predictions::COOLDOWN`]. Plain data.
#[derive(Debug, Default)]
pub(crate) struct Predictions {
    state: std::sync::Arc<std::sync::Mutex<PredictionState>>,
}

#[derive(Debug, Default)]
struct PredictionState {
    running: usize,
    last_start: std::collections::HashMap<NodeId, tokio::time::Instant>,
}

/// A running prediction's place; given back on drop.
#[derive(Debug)]
pub(crate) struct PredictionSlot {
    state: std::sync::Arc<std::sync::Mutex<PredictionState>>,
}

impl Drop for PredictionSlot {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running -= 1;
    }
}

impl Predictions {
    /// Predictions running at once.
    pub(crate) const AT_ONCE: usize = 2;
    /// Least time between two predictions with one peer (a failed attempt is
    /// retried after its 2 s have run out, so that retry is never refused).
    pub(crate) const COOLDOWN: Duration = Duration::from_secs(1);
    /// Peers remembered for the cooldown.
    const REMEMBERED: usize = 1024;

    pub(crate) fn start(
        &self,
        peer: NodeId,
        now: tokio::time::Instant,
    ) -> Result<PredictionSlot, &'static str> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.running >= Self::AT_ONCE {
            return Err("port predictions are already running");
        }
        if s.last_start
            .get(&peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < Self::COOLDOWN)
        {
            return Err("a port prediction with this peer has just started");
        }
        if s.last_start.len() >= Self::REMEMBERED {
            s.last_start
                .retain(|_, t| now.saturating_duration_since(*t) < Self::COOLDOWN);
            if s.last_start.len() >= Self::REMEMBERED {
                return Err("too many port predictions lately");
            }
        }
        s.last_start.insert(peer, now);
        s.running += 1;
        Ok(PredictionSlot {
            state: self.state.clone(),
        })
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
    let mut plan = super::schedule::ProbePlan::new(settings, &mut rand::rng());
    let mut timer = tokio::time::interval(super::schedule::ProbePlan::TICK);
    let mut learning = true;
    loop {
        tokio::select! {
            _ = timer.tick() => {
                if done() {
                    break;
                }
                let Some(batch) = plan.next_batch() else { break };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn predictions_are_few_at_once_and_cooled_down_per_peer() {
        let p = Predictions::default();
        let t0 = tokio::time::Instant::now();
        let (a, b, c) = (
            NodeId::from_bytes([1; 32]),
            NodeId::from_bytes([2; 32]),
            NodeId::from_bytes([3; 32]),
        );
        let sa = p.start(a, t0).unwrap();
        assert!(p.start(a, t0).is_err(), "cooldown");
        let _sb = p.start(b, t0).unwrap();
        assert!(p.start(c, t0).is_err(), "two at once");
        drop(sa);
        p.start(c, t0).unwrap();
        let later = t0 + Predictions::COOLDOWN;
        drop(p.start(a, later));
    }

    #[test]
    fn sockets_follow_the_descriptor_limit() {
        let n = affordable_sockets(256);
        assert!((16..=256).contains(&n), "{n}");
        assert_eq!(affordable_sockets(4), 4);
    }
}
