//! The repair task: when a known host leaves, the blobs this node holds
//! that the host was one of the closest holders of (and this node is one
//! now) are pushed to their new closest nodes; when one joins among the
//! closest of a blob this node holds, it is handed the blob; every republish interval,
//! everything this node should hold is pushed again (the backstop). All go
//! through one bounded, paced queue ([`RepairQueue`]), blobs that lost a
//! holder first; a few run at once, the next starting as soon as one ends;
//! a target that holds a blob already is asked first and sent nothing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::content::repair::{should_hand_over, should_hold, should_repair, Pace, RepairQueue};
use crate::content::Hash;
use crate::identity::NodeId;
use crate::node::service::WeakNode;
use crate::node::Node;
use crate::peers::PeerEvent;

/// Store keys read per page while scanning.
const PAGE: usize = 1024;

/// A repair that could not reach every holder (one was dead too, and not
/// yet known to be; a newcomer still joining) is tried again this many
/// times, after 2 s, 4 s, 8 s... at most [`RETRY_MAX`] apart (about two
/// minutes in all): churn that outlasts a few seconds must not leave a
/// blob short until the next republish.
const RETRIES: u8 = 8;
const RETRY_AFTER: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Repairs waiting to be tried again at most.
const MAX_RETRYING: usize = 10_000;

/// Runs until the node is dropped or shut down.
pub(super) async fn run(weak: WeakNode) {
    let Some(node) = weak.upgrade() else { return };
    let settings = node.content().settings.clone();
    let mut events = node.events();
    drop(node);
    let mut queue = RepairQueue::new(
        settings.repair_queue,
        Pace {
            bytes_per_sec: settings.repair_bytes_per_sec.max(1),
            burst: settings
                .repair_bytes_per_sec
                .max(settings.chunk_size as u64 * 4),
        },
    );
    // A blob's cost: its bytes, sent to each of the closest.
    let cost = settings.chunk_size as u64 * settings.replicas as u64;
    // (due, blob, attempts so far)
    let mut retrying: std::collections::VecDeque<(Instant, Hash, u8)> = Default::default();
    let mut attempts: std::collections::HashMap<Hash, u8> = Default::default();
    let mut republish = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.republish_interval,
        settings.republish_interval,
    );
    // Repairs under way: as one ends, the next starts (one slow target,
    // a dead one's timeout, holds up no other).
    let mut running = futures_util::stream::FuturesUnordered::new();
    // Table changes not scanned for yet: one scan answers all that came
    // within SCAN_EVERY (under churn, one per event would be most of the
    // work).
    let mut pending = Changes::default();
    let mut scan_at: Option<tokio::time::Instant> = None;
    let mut last_scan = tokio::time::Instant::now() - SCAN_EVERY;
    loop {
        let now = Instant::now();
        while retrying.front().is_some_and(|(due, _, _)| *due <= now) {
            if let Some((_, key, n)) = retrying.pop_front() {
                if queue.push_urgent(key) {
                    attempts.insert(key, n);
                }
            }
        }
        {
            let Some(node) = weak.upgrade() else { return };
            node.counters()
                .repairs_dropped
                .store(queue.dropped, Ordering::Relaxed);
            while running.len() < settings.repair_parallel.max(1) {
                let Some(key) = queue.next(Instant::now(), cost) else {
                    break;
                };
                let node = node.clone();
                running.push(async move { (key, node.repair_blob(key).await) });
            }
        }
        let wait = if !queue.is_empty() && running.len() < settings.repair_parallel.max(1) {
            queue.wait_for(now, cost)
        } else if let Some((due, _, _)) = retrying.front() {
            due.saturating_duration_since(now)
        } else {
            Duration::from_secs(3600)
        };
        if scan_at.is_none() && !pending.is_empty() {
            scan_at = Some((last_scan + SCAN_EVERY).max(tokio::time::Instant::now()));
        }
        tokio::select! {
            event = events.recv() => {
                // This event and those that came with it.
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    match event {
                        Ok(PeerEvent::Removed { id, .. }) => pending.gone(id),
                        Ok(PeerEvent::Added(addr)) => pending.joined(addr.id),
                        // Missed some: treat as a republish.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            pending.everything = true
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    next = events.try_recv().ok().map(Ok);
                }
            }
            _ = republish.tick() => pending.everything = true,
            _ = sleep_until(scan_at), if scan_at.is_some() => {
                let Some(node) = weak.upgrade() else { return };
                let changes = std::mem::take(&mut pending);
                scan(&node, &changes, &mut queue).await;
                last_scan = tokio::time::Instant::now();
                scan_at = None;
            }
            Some((key, (done, sent))) = running.next(), if !running.is_empty() => {
                queue.settle(cost, sent);
                let tried = attempts.remove(&key).unwrap_or(0) + 1;
                if !done && tried < RETRIES && retrying.len() < MAX_RETRYING {
                    let after = (RETRY_AFTER * (1u32 << (tried - 1).min(8))).min(RETRY_MAX);
                    // Kept in due order (the waits only grow with the
                    // attempt, so a later-due entry sorts after).
                    let due = Instant::now() + after;
                    let at = retrying.partition_point(|(d, _, _)| *d <= due);
                    retrying.insert(at, (due, key, tried));
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Table changes one scan of the store answers.
#[derive(Default)]
struct Changes {
    /// Hosts that left: what they were among the closest holders of.
    gone: Vec<NodeId>,
    /// Hosts that joined: what they should now hold.
    joined: Vec<NodeId>,
    /// Everything this node should hold (the republish).
    everything: bool,
}

impl Changes {
    fn gone(&mut self, id: NodeId) {
        if self.gone.len() < MAX_BATCH {
            self.gone.push(id);
        } else {
            self.everything = true;
        }
    }

    fn joined(&mut self, id: NodeId) {
        if self.joined.len() < MAX_BATCH {
            self.joined.push(id);
        } else {
            self.everything = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.gone.is_empty() && self.joined.is_empty() && !self.everything
    }
}

/// Hosts that left (or joined) one scan looks for at most; beyond that,
/// the scan is a republish of everything.
const MAX_BATCH: usize = 256;

/// Least time between two scans of the store for repairs.
const SCAN_EVERY: Duration = Duration::from_millis(200);

/// Sleeps until `at` (forever without one).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queues the held blobs that need pushing: those a host that left was a
/// holder of (and this node is now), those a host that joined should now
/// hold (and this node does), or, for a republish, all this node should
/// hold.
async fn scan(node: &Node, changes: &Changes, queue: &mut RepairQueue) {
    let before = queue.len();
    scan_pages(node, changes, queue).await;
    tracing::debug!(
        gone = changes.gone.len(),
        joined = changes.joined.len(),
        republish = changes.everything,
        queued = queue.len().saturating_sub(before),
        "store scanned for repairs"
    );
}

async fn scan_pages(node: &Node, changes: &Changes, queue: &mut RepairQueue) {
    let r = node.content().settings.replicas;
    let me = node.id();
    let mut after: Option<[u8; 32]> = None;
    loop {
        let store = node.content().store.clone();
        let from = after;
        let Ok(Ok(keys)) =
            tokio::task::spawn_blocking(move || store.keys(from.as_ref(), PAGE)).await
        else {
            return;
        };
        let Some(last) = keys.last().copied() else {
            return;
        };
        for key in &keys {
            let target = NodeId::from_bytes(*key);
            let live: Vec<NodeId> = node
                .members()
                .closest(&target, r + 1)
                .into_iter()
                .map(|a| a.id)
                .collect();
            // A blob that lost a holder goes first: one more death
            // among its holders and it is lost.
            if changes
                .gone
                .iter()
                .any(|g| should_repair(&me, &target, g, &live, r))
            {
                queue.push_urgent(Hash(*key));
            } else if (changes.everything && should_hold(&me, &target, &live, r))
                || changes
                    .joined
                    .iter()
                    .any(|j| should_hand_over(&me, &target, j, &live, r))
            {
                queue.push(Hash(*key));
            }
        }
        if keys.len() < PAGE {
            return;
        }
        after = Some(last);
    }
}
