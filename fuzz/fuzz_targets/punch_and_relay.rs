//! Punch packets on the node's port, and the framing of relay tunnels (what
//! an introducer, or a peer through it, sends). Never a panic; relay frames
//! read back what was framed.
#![no_main]

use butter::nat::{punch, relay};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let _ = punch::is_punch(data);
    let _ = punch::sender(data);
    let mut r = data;
    let mut packets = 0;
    while let Some(Ok(Some(p))) = common::ready(relay::read_packet(&mut r)) {
        assert!(p.len() <= relay::MAX_PACKET);
        packets += 1;
        if packets > data.len() {
            panic!("more packets than bytes");
        }
    }
    let framed = relay::frame(data);
    let back = common::ready(relay::read_packet(&mut &framed[..]))
        .expect("ready")
        .expect("a framed packet reads")
        .expect("one packet");
    assert_eq!(&back[..], &data[..data.len().min(relay::MAX_PACKET)]);
});
