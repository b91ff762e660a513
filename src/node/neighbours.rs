//! The neighbour watch: the few known hosts closest to this node are
//! checked every [`neighbour_interval`](crate::MembershipSettings::neighbour_interval)
//! with a timeout of a few round trips, instead of with the rest of the table
//! every liveness round. They are the nodes that hold the same content as
//! this one (the closest nodes to a key are close to each other), so a crash
//! among them is what repair must learn of within a second or two, not
//! after a liveness round and its two-second timeout.
//!
//! A neighbour leaves the table after two quick checks in a row go
//! unanswered (one lost packet is not a death); every removal reaches
//! repair as a [`PeerEvent::Removed`](crate::PeerEvent).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::service::WeakNode;
use super::Node;
use crate::addr::Target;
use crate::identity::NodeId;
use crate::peers::HostInfo;

/// Least time a neighbour has to answer one check.
const MIN_TIMEOUT: Duration = Duration::from_millis(200);

/// Round trips a neighbour has to answer one check, beyond [`MIN_TIMEOUT`].
const RTTS: u32 = 4;

/// Time one check of a host with round trip `rtt` may take: a few round
/// trips (a lost packet's retransmission fits), never more than the
/// liveness timeout.
pub(super) fn check_timeout(rtt: Duration, liveness_timeout: Duration) -> Duration {
    (MIN_TIMEOUT + rtt * RTTS).min(liveness_timeout)
}

/// Ticks of the watch per neighbour interval: a neighbour falls due at
/// most a quarter of an interval before it is checked.
const TICKS_PER_INTERVAL: u32 = 4;

/// Runs until the node is dropped or shut down. Checks run alongside the
/// ticks (a slow check, the two timeouts of a dead neighbour, holds up no
/// other); a neighbour is checked by one check at a time.
pub(super) async fn watch(node: WeakNode) {
    let Some((n, interval)) = node.upgrade().map(|n| {
        let s = &n.members().settings;
        (s.neighbours, s.neighbour_interval)
    }) else {
        return;
    };
    if n == 0 || interval.is_zero() {
        return;
    }
    let tick = interval / TICKS_PER_INTERVAL;
    let mut checking: HashSet<NodeId> = HashSet::new();
    let mut checks = FuturesUnordered::new();
    let mut next = tokio::time::Instant::now() + super::membership::jitter(interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                next = tokio::time::Instant::now() + tick;
                let Some(strong) = node.upgrade() else { return };
                for host in strong.members().neighbours_due(n, interval) {
                    if checking.insert(host.addr.id) {
                        let weak = node.clone();
                        checks.push(async move {
                            let id = host.addr.id;
                            if let Some(node) = weak.upgrade() {
                                check(&node, host).await;
                            }
                            id
                        });
                    }
                }
            }
            Some(id) = checks.next(), if !checks.is_empty() => {
                checking.remove(&id);
            }
        }
    }
}

/// Round trip to `host`: the live connection's estimate if there is one
/// (smoothed by QUIC over every packet), else the one last measured.
fn rtt_of(node: &Node, host: &HostInfo) -> Duration {
    node.shared()
        .endpoint
        .cached(&host.addr.id)
        .map(|c| c.rtt())
        .unwrap_or(host.rtt)
}

/// Pings one neighbour, twice if the first goes unanswered; removes it if
/// neither is.
async fn check(node: &Node, host: HostInfo) {
    let timeout = check_timeout(
        rtt_of(node, &host),
        node.members().settings.liveness_timeout,
    );
    let target = Target::Addr(host.addr.clone());
    for _ in 0..2 {
        match crate::patience::within(timeout, node.ping_with(target.clone(), true)).await {
            Ok(Ok(ping)) => {
                let quality = ping.reply.quality(ping.rtt);
                node.members().seen(&host.addr.id, ping.rtt, Some(quality));
                return;
            }
            // A refused connection or a wrong key is an answer: no retry.
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    if node
        .members()
        .remove(&host.addr.id, "no answer to two neighbour checks")
    {
        node.forget_connection(&host.addr.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_a_few_round_trips_within_the_liveness_timeout() {
        let cap = Duration::from_secs(2);
        assert_eq!(check_timeout(Duration::ZERO, cap), MIN_TIMEOUT);
        assert_eq!(
            check_timeout(Duration::from_millis(100), cap),
            Duration::from_millis(600)
        );
        assert_eq!(check_timeout(Duration::from_secs(1), cap), cap);
    }
}
