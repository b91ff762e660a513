//! Every postcard message a peer or an introducer sends: the first byte picks
//! the type, the rest is decoded. Never a panic.
#![no_main]

use butter::unstable::protocol::*;
use butter::node::{PingReply, PingRequest};
use butter::peers::{PeerRecord, PeersRequest};
use butter::{NodeAddr, StatsSnapshot};
use libfuzzer_sys::fuzz_target;

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
    let _ = postcard::from_bytes::<T>(bytes);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 16 {
        0 => decode::<Register>(rest),
        1 => decode::<Registered>(rest),
        2 => decode::<Introduce>(rest),
        3 => decode::<Vec<NodeAddr>>(rest),
        4 => decode::<Connect>(rest),
        5 => decode::<Rendezvous>(rest),
        6 => decode::<Punch>(rest),
        7 => decode::<PunchReport>(rest),
        8 => decode::<RelayOpen>(rest),
        9 => decode::<RelayIn>(rest),
        10 => decode::<IntroducerStats>(rest),
        11 => decode::<PeersRequest>(rest),
        12 => decode::<Vec<PeerRecord>>(rest),
        13 => decode::<PingRequest>(rest),
        14 => decode::<PingReply>(rest),
        _ => decode::<StatsSnapshot>(rest),
    }
});
