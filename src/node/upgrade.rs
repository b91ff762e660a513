//! Relay → direct: a relayed connection keeps trying a punch in the background
//! and hands new calls to the direct connection once one comes up.
//! (Its own module: spawning it where dialing is defined would make the
//! compiler check a cycle of futures it cannot see through.)

use std::time::Duration;

use super::service::WeakNode;
use super::Node;
use crate::addr::NodeAddr;
use crate::backoff::Backoff;
use crate::identity::NodeId;
use crate::net;

/// A coordinated punch to `id` on its own task, so that it may finish (and
/// install its connection) after a relay won the race against it. Bounded
/// (introducer call, punch and prediction timeouts): holds the node that long.
pub(super) fn punch(
    node: Node,
    intro: NodeAddr,
    id: NodeId,
    predicting: super::punch::Predicting,
) -> tokio::task::JoinHandle<Option<crate::Result<quinn::Connection>>> {
    let tasks = node.shared().tasks.clone();
    tasks.spawn(async move { node.punch_via(&intro, id, Some(&predicting)).await })
}

/// Starts the upgrade loop for the relayed connection to `id`.
pub(super) fn start(node: &Node, intro: NodeAddr, id: NodeId) {
    node.shared()
        .tasks
        .spawn(upgrade(node.downgrade(), intro, id));
}

/// While the relayed connection to `id` lives, retries a punch (with port
/// prediction where it applies): after about a second first — a prediction
/// fails now and then by bad luck alone — then backing off to every
/// `upgrade_interval`. A direct connection that comes up replaces the relayed
/// one for new calls, and the relayed one closes once idle.
async fn upgrade(node: WeakNode, intro: NodeAddr, id: NodeId) {
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
    loop {
        let Some(interval) = node.upgrade().map(|n| n.shared().nat.upgrade_interval) else {
            return;
        };
        retry.set_max(interval);
        let wait = retry.next(&mut rand::rng());
        tokio::time::sleep(wait).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let Some(relayed) = node.shared().endpoint.cached(&id) else {
            return;
        };
        if !net::is_virtual(relayed.remote_address()) {
            return;
        }
        // A punch that works installs its connection in place of the relayed
        // one (see `punch_via`).
        if node.punch_via(&intro, id, None).await.is_ok() {
            return;
        }
    }
}
