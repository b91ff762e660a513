//! Departure: `butter/goodbye` (a host that says it leaves is dropped at once,
//! instead of when a liveness check fails) and [`Node::shutdown`], which says
//! it to every known host, then cancels and awaits the node's tasks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::service::{Routes, Service};
use super::Node;
use crate::addr::Target;
use crate::peers::Membership;

/// Route a departing node calls on its known hosts: they drop it at once
/// instead of waiting for a liveness check to fail. The connection
/// authenticates who says goodbye.
pub const GOODBYE_ROUTE: &str = "butter/goodbye";

/// Known hosts told of a departure at most.
const GOODBYES: usize = 64;

/// How long a departing node waits for its known hosts to hear its goodbye.
const GOODBYE_WAIT: Duration = Duration::from_millis(500);

/// How long shutdown waits for the node's tasks to end (the UPnP task removes
/// its mapping, bounded at 2 s; every other task is dropped at once).
const TASKS_GRACE: Duration = Duration::from_secs(3);

/// Answers `butter/goodbye`.
pub(super) struct GoodbyeService(pub(super) Arc<Membership>);

impl Service for GoodbyeService {
    fn name(&self) -> &'static str {
        "goodbye"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let m = self.0.clone();
        routes.typed(GOODBYE_ROUTE, 16, move |peer, _from: SocketAddr, (): ()| {
            let m = m.clone();
            async move {
                m.remove(&peer, "said goodbye");
                Ok(())
            }
        });
    }
}

impl Node {
    /// Stops the node as a crash would, for tests and the testbed: nothing
    /// more leaves its socket (no goodbye, no connection close), and its
    /// tasks end with this handle (and any other).
    #[doc(hidden)]
    pub fn crash(self) {
        self.socket().mute();
        self.shared().tasks.cancel();
    }

    /// Says goodbye to the known hosts (waiting briefly for them to hear it),
    /// closes every connection, cancels the node's tasks and waits (briefly)
    /// until they have ended. Calls made afterwards fail with
    /// [`Error::Shutdown`](crate::Error::Shutdown).
    pub async fn shutdown(&self) {
        if self.shared().closing.swap(true, Ordering::SeqCst) {
            return;
        }
        // Known hosts hear it first (briefly bounded; never a traversal; at
        // most GOODBYES of them, the most recently seen: the rest notice
        // through their liveness checks or failed calls).
        let mut hosts = self.members().hosts();
        hosts.sort_by_key(|h| std::cmp::Reverse(h.last_seen));
        hosts.truncate(GOODBYES);
        let goodbyes = hosts.into_iter().map(|h| async move {
            let target = Target::Addr(h.addr);
            self.shared().endpoint.connection(&target).await?;
            self.call_typed::<_, ()>(target, GOODBYE_ROUTE, &()).await
        });
        let said =
            tokio::time::timeout(GOODBYE_WAIT, futures_util::future::join_all(goodbyes)).await;
        tracing::debug!(
            told = said.map_or(0, |r| r.iter().filter(|r| r.is_ok()).count()),
            "said goodbye"
        );
        self.shared().shut.store(true, Ordering::SeqCst);
        self.shared().endpoint.close_all();
        let endpoint = &self.shared().endpoint.quinn;
        // The UPnP task removes its mapping (bounded); the rest just stop.
        let tasks = self.shared().tasks.shut_down(TASKS_GRACE);
        let idle = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle());
        let (ended, _) = tokio::join!(tasks, idle);
        if !ended {
            tracing::warn!(
                running = self.shared().tasks.len(),
                "some tasks did not end in time"
            );
        }
    }

    /// Tasks the node runs (for tests and diagnostics: zero once shut down).
    #[doc(hidden)]
    pub fn running_tasks(&self) -> usize {
        self.shared().tasks.len()
    }
}
