//! Handing held keys over as the known hosts change (what the index and
//! the mailboxes share; chunks have their own scan in `content`): the
//! changes of a short while are gathered into one round, and for each key
//! the decision of [`crate::content::repair`] says whom to push it to.

use std::time::Duration;

use tokio::sync::broadcast::{error::RecvError, Receiver};

use super::Node;
use crate::addr::NodeAddr;
use crate::identity::NodeId;
use crate::peers::PeerEvent;

/// Least time between two rounds.
const ROUND: Duration = Duration::from_millis(500);

/// Hosts remembered per round, at most (of each kind).
const MAX_CHANGES: usize = 256;

/// The hosts that left and joined: the next event and what else came
/// within [`ROUND`] of it. `None` once the node is gone.
pub(crate) async fn next_changes(
    events: &mut Receiver<PeerEvent>,
) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
    let mut gone: Vec<NodeId> = Vec::new();
    let mut joined: Vec<NodeId> = Vec::new();
    match events.recv().await {
        Ok(PeerEvent::Removed { id, .. }) => gone.push(id),
        Ok(PeerEvent::Added(addr)) => joined.push(addr.id),
        Err(RecvError::Lagged(_)) => {}
        Err(RecvError::Closed) => return None,
    }
    tokio::time::sleep(ROUND).await;
    while let Ok(event) = events.try_recv() {
        match event {
            PeerEvent::Removed { id, .. } if gone.len() < MAX_CHANGES => gone.push(id),
            PeerEvent::Added(addr) if joined.len() < MAX_CHANGES => joined.push(addr.id),
            _ => {}
        }
    }
    Some((gone, joined))
}

/// Whom this node pushes `key` to after `gone` left and `joined` came: every
/// holder among the `r` closest when a holder was lost and this node must
/// repair, else the newcomers among the closest it should hand over to.
pub(crate) fn targets(
    node: &Node,
    key: &NodeId,
    gone: &[NodeId],
    joined: &[NodeId],
    r: usize,
) -> Vec<NodeAddr> {
    use crate::content::repair::{should_hand_over, should_repair};
    let me = node.id();
    let live: Vec<NodeId> = node
        .members()
        .closest(key, r + 1)
        .into_iter()
        .map(|a| a.id)
        .collect();
    let lost = gone.iter().any(|g| should_repair(&me, key, g, &live, r));
    node.members()
        .closest(key, r)
        .into_iter()
        .filter(|a| {
            a.id != me
                && (lost || (joined.contains(&a.id) && should_hand_over(&me, key, &a.id, &live, r)))
        })
        .collect()
}
