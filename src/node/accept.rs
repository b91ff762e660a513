//! The serving side of the node's connections: incoming handshakes admitted
//! (or refused, or asked to retry) per source, and every connection's request
//! streams handed to the router, each on a task the node owns.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::Shared;
use crate::admission::Verdict;
use crate::identity::{tls, NodeId};
use crate::router;

/// Accepts incoming connections until the endpoint closes or the node is gone.
pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Weak<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let remote = incoming.remote_address();
        // Relay tunnels come only from this node's introducers (bounded there);
        // every other source is counted before any cryptography is spent.
        let slot = if crate::net::is_virtual(remote) {
            None
        } else {
            match shared
                .admission
                .consider(remote.ip(), incoming.remote_address_validated())
            {
                Verdict::Accept(slot) => Some(slot),
                Verdict::Retry => {
                    shared
                        .stats
                        .handshakes_retried
                        .fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                Verdict::Refuse => {
                    shared
                        .stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "incoming connection refused: over a limit");
                    incoming.refuse();
                    continue;
                }
            }
        };
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            let mut slot = slot;
            let outcome = incoming.await;
            if let Some(s) = &mut slot {
                s.handshake_done();
            }
            match outcome {
                Ok(conn) => match tls::peer_id(&conn) {
                    Some(peer) => {
                        shared.stats.handshakes_in.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %peer.short(), %remote, "accepted connection");
                        shared.endpoint.register_incoming(peer, conn.clone());
                        let stats = shared.stats.clone();
                        drop(shared);
                        // The slot is held as long as the connection lives.
                        stats.connections_in.fetch_add(1, Ordering::Relaxed);
                        conn.closed().await;
                        stats.connections_in.fetch_sub(1, Ordering::Relaxed);
                        drop(slot);
                    }
                    None => conn.close(1u32.into(), b"no peer identity"),
                },
                Err(e) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, error = %e, "incoming handshake failed");
                }
            }
        });
    }
}

/// How long the source address a connection's requests are counted
/// against may lag behind a migration (reading it takes the connection's
/// lock, which every stream operation contends for).
const REMOTE_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// Serves the request streams a peer opens on one connection: each is
/// served in place as far as it gets without waiting (a small request is
/// read, handled and answered without a task of its own), and on a task of
/// the connection's group once it has to wait. The group ends with this
/// task, which, once the connection closed, waits for the streams still
/// served.
pub(super) async fn serve_connection(shared: Arc<Shared>, peer: NodeId, conn: quinn::Connection) {
    let mut streams = shared.tasks.group();
    let mut spare = None;
    let mut remote = conn.remote_address();
    let mut remote_read = std::time::Instant::now();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                if remote_read.elapsed() >= REMOTE_REFRESH {
                    remote = conn.remote_address();
                    remote_read = std::time::Instant::now();
                }
                let shared = shared.clone();
                let serve = async move {
                    let ctx = router::Serving {
                        limits: &shared.limits,
                        stats: &shared.stats,
                        budget: &shared.budget,
                    };
                    shared.router.serve(peer, remote, send, recv, &ctx).await
                };
                streams.run(&mut spare, serve).await;
                // A peer whose requests are all ready at once does not keep
                // this thread from other tasks.
                tokio::task::coop::consume_budget().await;
            }
            Err(e) => {
                tracing::trace!(peer = %peer.short(), reason = %e, "connection ended");
                // Closed by the peer or gone silent: if it is a known host,
                // it is checked now rather than at the next liveness round
                // (a dead holder noticed in milliseconds is repaired before
                // its fellow holders die too).
                match &e {
                    quinn::ConnectionError::LocallyClosed => {}
                    // Closed on purpose ([`Node::disconnect`]): nothing wrong.
                    quinn::ConnectionError::ApplicationClosed(close)
                        if close.reason.as_ref() == crate::endpoint::DISCONNECT => {}
                    // A node that shuts down closes its connections so; the
                    // connection authenticates it, as a goodbye would.
                    quinn::ConnectionError::ApplicationClosed(close)
                        if close.reason.as_ref() == b"shutdown" =>
                    {
                        shared.members.remove(&peer, "shut down");
                    }
                    _ => shared.members.suspect(&peer),
                }
                break;
            }
        }
    }
    drop(shared);
    streams.wait().await;
}
