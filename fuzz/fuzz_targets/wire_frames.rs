//! Request and response header frames, as the router and the caller read them
//! from a stream: never a panic; what decodes encodes back to the same value.
#![no_main]

use butter::wire::{self, RequestHeader, ResponseHeader, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if let Some(Ok(h)) = common::ready(wire::read_frame::<RequestHeader, _>(&mut r, MAX_HEADER)) {
        let again = wire::encode_frame(&h, MAX_HEADER).expect("a decoded header encodes");
        let back: RequestHeader = common::ready(wire::read_frame(&mut again.as_slice(), MAX_HEADER))
            .expect("ready")
            .expect("round trip");
        assert_eq!(back, h);
    }
    let mut r = data;
    if let Some(Ok(h)) = common::ready(wire::read_frame::<ResponseHeader, _>(&mut r, MAX_HEADER)) {
        let _ = h.status.into_error("fuzz");
    }
});
