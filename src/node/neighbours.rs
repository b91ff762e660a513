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

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::service::WeakNode;
use super::Node;
use crate::addr::Target;
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

/// Runs until the node is dropped or shut down.
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
    loop {
        tokio::time::sleep(super::membership::jitter(interval)).await;
        let Some(node) = node.upgrade() else { return };
        let due = node.members().neighbours_due(n, interval);
        let mut checks: FuturesUnordered<_> = due.into_iter().map(|h| check(&node, h)).collect();
        while checks.next().await.is_some() {}
    }
}

/// Pings one neighbour, twice if the first goes unanswered; removes it if
/// neither is.
async fn check(node: &Node, host: HostInfo) {
    let timeout = check_timeout(host.rtt, node.members().settings.liveness_timeout);
    let target = Target::Addr(host.addr.clone());
    for _ in 0..2 {
        match tokio::time::timeout(timeout, node.ping_with(target.clone(), true)).await {
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
