//! The non-QUIC side of a node's port: STUN requests and responses from
//! anyone. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let from = std::net::SocketAddr::from(([198, 51, 100, 7], 40000));
    let _ = butter::unstable::stun::looks_like_stun(data);
    let _ = butter::unstable::stun::handle(data, from);
    let v6 = std::net::SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 40000));
    let _ = butter::unstable::stun::handle(data, v6);
});
