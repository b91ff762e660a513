//! NAT traversal, node side: STUN over the node's shared UDP socket (this phase);
//! UPnP mapping, hole punching and relaying come next.

pub mod stun;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// STUN transactions in flight, waiting for their responses.
#[derive(Default)]
pub(crate) struct PendingStun {
    waiting: Mutex<HashMap<[u8; 12], oneshot::Sender<SocketAddr>>>,
}

impl PendingStun {
    pub(crate) fn start(&self, tid: [u8; 12]) -> oneshot::Receiver<SocketAddr> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Abandoned transactions (their callers gave up) are dropped here.
        waiting.retain(|_, tx| !tx.is_closed());
        waiting.insert(tid, tx);
        rx
    }

    /// Completes a transaction; false if nobody asked for it (stray or forged).
    pub(crate) fn complete(&self, tid: [u8; 12], mapped: SocketAddr) -> bool {
        let tx = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tid);
        tx.is_some_and(|tx| tx.send(mapped).is_ok())
    }
}
