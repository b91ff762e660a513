//! Relay → direct: a relayed connection keeps trying a punch in the background
//! and hands new calls to the direct connection once one comes up.
//! (Its own module: spawning it where dialing is defined would make the
//! compiler check a cycle of futures it cannot see through.)

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::{Node, NodeInner};
use crate::addr::NodeAddr;
use crate::identity::NodeId;
use crate::net;

/// Starts the upgrade loop for the relayed connection to `id`.
pub(super) fn start(node: Weak<NodeInner>, intro: NodeAddr, id: NodeId) {
    tokio::spawn(upgrade(node, intro, id));
}

/// While the relayed connection to `id` lives, retries a punch every
/// `upgrade_interval`; a direct connection that comes up replaces it for new
/// calls, and the relayed one closes once idle.
async fn upgrade(node: Weak<NodeInner>, intro: NodeAddr, id: NodeId) {
    loop {
        let Some(interval) = node.upgrade().map(|n| n.shared.nat.upgrade_interval) else {
            return;
        };
        tokio::time::sleep(super::membership::jitter(interval)).await;
        let Some(node) = node.upgrade().map(|inner| Node { inner }) else {
            return;
        };
        let Some(relayed) = node.shared().endpoint.cached(&id) else {
            return;
        };
        if !net::is_virtual(relayed.remote_address()) {
            return;
        }
        if node.punch_via(&intro, id).await.is_ok() {
            tracing::info!(peer = %id.short(), "relayed connection upgraded to direct");
            node.counters().upgrades.fetch_add(1, Ordering::Relaxed);
            // Calls already on the relayed connection finish there.
            let grace = node.shared().limits.call_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                relayed.close(0u32.into(), b"upgraded to direct");
            });
            return;
        }
    }
}
