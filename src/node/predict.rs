//! Port prediction, for a pair where one NAT keeps ports and the other maps
//! per destination: the strict side opens many sockets, the moderate side
//! probes random ports; bounded by [`Predictions`](crate::nat::predict::Predictions).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::Shared;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::net;

/// A node's part in a port prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Our NAT maps per destination, the peer's keeps ports: we open many
    /// sockets and dial from the one the peer's probe reaches.
    Strict,
    /// The other way round: we probe random ports of the peer's address and
    /// accept its connection.
    Moderate,
}

/// Whether a prediction is called for between us (seen at `mine`, bound to
/// `port`) and a peer seen at `theirs` that advertises `their_own`.
pub(super) fn prediction_role(
    mine: SocketAddr,
    port: u16,
    theirs: SocketAddr,
    their_own: &[SocketAddr],
) -> Option<Role> {
    use crate::nat::predict::maps_per_destination;
    let own_ports: Vec<u16> = their_own.iter().map(|a| a.port()).collect();
    match (
        maps_per_destination(mine, &[port]),
        maps_per_destination(theirs, &own_ports),
    ) {
        (true, false) => Some(Role::Strict),
        (false, true) => Some(Role::Moderate),
        _ => None,
    }
}

/// Our part of a port prediction with `id`, seen by the introducer at
/// `theirs`. Bounded by the prediction settings; the connection it yields is
/// direct and authenticated like any other.
pub(super) async fn predict(
    shared: &Shared,
    id: NodeId,
    role: Role,
    theirs: SocketAddr,
) -> Result<quinn::Connection> {
    // Each costs hundreds of sockets or ~500 packets/s: a few at a time, and
    // one peer cannot start them back to back.
    let _slot = shared
        .predictions
        .start(id, tokio::time::Instant::now())
        .map_err(|why| {
            shared
                .stats
                .predictions_refused
                .fetch_add(1, Ordering::Relaxed);
            Error::Busy(why)
        })?;
    shared
        .stats
        .predictions_tried
        .fetch_add(1, Ordering::Relaxed);
    let outcome = predict_once(shared, id, role, theirs).await;
    let counter = match outcome {
        Ok(_) => &shared.stats.predictions_succeeded,
        Err(_) => &shared.stats.predictions_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    outcome
}

async fn predict_once(
    shared: &Shared,
    id: NodeId,
    role: Role,
    theirs: SocketAddr,
) -> Result<quinn::Connection> {
    let settings = &shared.nat.predict;
    let me = shared.identity.id();
    let limit = settings.duration + shared.endpoint.connect_timeout();
    match role {
        Role::Strict => {
            let settings = &crate::nat::predict::PredictSettings {
                sockets: crate::nat::predict::affordable_sockets(settings.sockets),
                ..settings.clone()
            };
            let (socket, sent) = crate::nat::predict::open_many(&me, theirs, settings).await;
            shared
                .stats
                .punch_packets_sent
                .fetch_add(sent, Ordering::Relaxed);
            let socket = socket.ok_or_else(|| {
                Error::Unreachable(format!(
                    "no probe from {} reached any of our sockets",
                    id.short()
                ))
            })?;
            shared
                .endpoint
                .connect_from(socket, id, theirs, shared.endpoint.connect_timeout())
                .await
        }
        Role::Moderate => {
            let learned = shared.punch_watch.watch(id);
            let direct = || {
                shared
                    .endpoint
                    .cached(&id)
                    .is_some_and(|c| !net::is_virtual(c.remote_address()))
            };
            let probes = crate::nat::predict::spray_random(
                &shared.endpoint.socket,
                &me,
                theirs.ip(),
                settings,
                learned,
                direct,
                &shared.stats.prediction_probes_sent,
            );
            let accepted = tokio::time::timeout(limit, shared.endpoint.wait_direct(id));
            tokio::pin!(accepted);
            tokio::select! {
                conn = &mut accepted => {
                    return conn.map_err(|_| Error::Unreachable(format!("{} never connected from a predicted port", id.short())));
                }
                () = probes => {}
            }
            // The probes are spent; a hit among the last may still be on its
            // way (the strict side's handshake), but not for long.
            tokio::time::timeout(settings.duration / 2, accepted)
                .await
                .map_err(|_| Error::Timeout("a connection from a predicted port"))?
                .map_err(|_| {
                    Error::Unreachable(format!(
                        "{} never connected from a predicted port",
                        id.short()
                    ))
                })
        }
    }
}
