//! The kinds of path a connection runs over: vocabulary of the transport
//! layer (its connection cache records how each connection came about), named
//! by the NAT layer that makes the indirect ones.

use serde::{Deserialize, Serialize};

/// The kind of path a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathKind {
    /// Straight to one of the peer's own addresses (LAN, public, mapped).
    Direct,
    /// Direct, through NATs opened by a hole punch an introducer coordinated.
    Punched,
    /// Direct, through a strict (per-destination) NAT whose port was found by
    /// prediction: many sockets on the strict side, random probes from the other.
    Predicted,
    /// Through an introducer's relay (end-to-end encrypted all the same).
    Relayed,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Punched => "punched",
            PathKind::Predicted => "predicted",
            PathKind::Relayed => "relay",
        })
    }
}
