//! Addresses as peers claim them (the scope filter) and as users type them
//! (NodeAddr, NodeId): never a panic.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use butter::nat::scope;
use libfuzzer_sys::fuzz_target;

fn addr(b: &[u8]) -> SocketAddr {
    let mut x = [0u8; 18];
    let n = b.len().min(18);
    x[..n].copy_from_slice(&b[..n]);
    let port = u16::from_le_bytes([x[16], x[17]]);
    let ip = if x[0] & 1 == 0 {
        IpAddr::from([x[1], x[2], x[3], x[4]])
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&x[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 54 {
        let (c, p, m) = (addr(&data[..18]), addr(&data[18..36]), addr(&data[36..54]));
        let ok = scope::worth_dialing(c, p.ip(), m.ip());
        if scope::is_unusable(c) {
            assert!(!ok);
        }
        let mut v = vec![c, p, m];
        scope::filter(&mut v, p.ip(), m.ip());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<butter::NodeAddr>();
        let _ = s.parse::<butter::NodeId>();
    }
});
