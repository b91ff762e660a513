//! Counters a node keeps about itself: what tests and operators look at.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters (atomics, updated as things happen).
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $name: AtomicU64,)*
            /// The store, for the `store_bytes` gauge.
            pub(crate) store: std::sync::OnceLock<std::sync::Arc<crate::store::Store>>,
        }

        /// A snapshot of a node's counters.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[non_exhaustive]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl StatsSnapshot {
            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }

        impl Stats {
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                let mut snapshot = StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* };
                if let Some(store) = self.store.get() {
                    snapshot.store_bytes = store.used();
                }
                snapshot
            }
        }
    };
}

counters! {
    /// Outgoing connections established (completed handshakes we started).
    handshakes_out,
    /// Incoming connections established.
    handshakes_in,
    /// Handshakes that failed (either direction), e.g. a wrong identity.
    handshakes_failed,
    /// Incoming handshakes that resumed an earlier TLS session (no
    /// certificates or signatures again); the rest of `handshakes_in` were
    /// full handshakes.
    handshakes_resumed_in,
    /// Outgoing handshakes that offered an earlier session's ticket (the
    /// peer may still choose a full handshake).
    resumptions_offered,
    /// Calls this node made.
    calls_made,
    /// Requests answered with a handler's reply.
    calls_served,
    /// Requests whose header did not decode or was cut short.
    malformed,
    /// Requests to a route that does not exist.
    no_route,
    /// Requests refused for their size.
    too_large,
    /// Requests refused by a route's guard (rate limit) or for want of room in
    /// the budget of buffered bodies, or whose body did not arrive in time.
    requests_refused,
    /// Incoming connections open now (a gauge, not a counter).
    connections_in,
    /// Incoming connections refused (over a per-source or total limit).
    connections_refused,
    /// Incoming handshakes asked to prove their address first (QUIC Retry).
    handshakes_retried,
    /// Handlers that returned an error.
    handler_errors,
    /// Handlers that panicked (the node kept serving).
    handler_panics,
    /// Multicast pings sent (one per interface).
    mcast_pings_sent,
    /// Multicast pongs sent (one per interface).
    mcast_pongs_sent,
    /// Pongs not sent: enough other nodes answered the ping first.
    mcast_pongs_suppressed,
    /// Multicast datagrams received (from others and our own looped back).
    mcast_received,
    /// Multicast datagrams that were not well-formed beacons.
    mcast_garbage,
    /// Candidates (from multicast or peer exchange) verified by a handshake.
    candidates_verified,
    /// Candidates whose handshake proved another identity than claimed (spoofed).
    candidates_spoofed,
    /// Candidates that did not answer.
    candidates_unreachable,
    /// Candidates dropped unverified: every verification slot was busy and
    /// the queue of waiting candidates (or their prefix's share of it) full.
    candidates_dropped,
    /// Multicast beacons ignored: over the rate for their source.
    mcast_limited,
    /// STUN binding requests answered.
    stun_answered,
    /// STUN binding requests left unanswered: over the rate for their source
    /// or in all.
    stun_refused,
    /// STUN responses that completed one of our requests.
    stun_completed,
    /// Datagrams on the node's port that were neither QUIC nor valid STUN, or
    /// STUN responses nobody asked for.
    udp_garbage,
    /// Punch packets received (a peer opening its NAT towards us).
    punch_packets_received,
    /// Punch packets sent at the request of an introducer.
    punch_packets_sent,
    /// Coordinated punches this node tried as the dialing side.
    punches_tried,
    /// ... and those that gave a direct connection through the peer's NAT.
    punches_succeeded,
    /// Connections that had to go through a relay.
    relayed_dials,
    /// Relayed connections later replaced by a direct one.
    upgrades,
    /// Successful registrations with introducers (first and refreshes).
    introducer_registrations,
    /// Failed registration attempts.
    introducer_failures,
    /// Port predictions this node took part in (either side).
    predictions_tried,
    /// ... that gave a connection.
    predictions_succeeded,
    /// ... that ran out of probes or time.
    predictions_failed,
    /// Predictions not started: enough were running, or the peer had one just before.
    predictions_refused,
    /// Random-port probes sent as the moderate side of predictions.
    prediction_probes_sent,
    /// Port mappings a UPnP gateway granted.
    upnp_mapped,
    /// Renewals of a UPnP mapping's lease.
    upnp_renewed,
    /// Blobs (chunks, manifests) served to others.
    blobs_served,
    /// Blobs stored for others (replicas pushed to this node).
    blobs_taken,
    /// Blobs refused to others: over the store's budget or the sender's share.
    blobs_refused,
    /// Blobs fetched from the network, verified.
    blobs_fetched,
    /// Blobs a holder served with the wrong bytes (the holder was reported).
    blobs_bad,
    /// Blobs pushed to their closest nodes.
    blobs_pushed,
    /// Blobs re-replicated by repair (a holder left) or republishing.
    repairs,
    /// Bytes repair and republishing sent.
    repair_bytes,
    /// Repairs dropped: the queue was full (the next republish finds them).
    repairs_dropped,
    /// Candidates that waited for a verification slot (all were busy).
    candidates_queued,
    /// Messages taken from senders (directly or from the mailbox), each once.
    messages_received,
    /// Messages refused at this node as their recipient (unsigned, forged,
    /// altered, unreadable, misaddressed).
    messages_refused,
    /// Envelopes this node took into mailboxes it holds for others.
    mailbox_stored,
    /// Envelopes it refused (unsigned, forged, replayed, oversized, over
    /// a quota).
    mailbox_refused,
    /// Bytes of content in this node's store (a gauge, not a counter).
    store_bytes,
}
