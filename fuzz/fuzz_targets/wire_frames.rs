//! Request and response header frames, as the router and the caller read them
//! from a stream or split them off a message read whole: never a panic; what
//! decodes encodes back to the same value; both readers agree.
#![no_main]

use butter::unstable::wire::{self, RequestHeader, ResponseHeader, MAX_HEADER};
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
    // Split off a whole message: the same header as the stream reader
    // finds, and the rest is what follows it.
    let whole = bytes::Bytes::copy_from_slice(data);
    let split = wire::split_frame::<RequestHeader>(whole.clone(), MAX_HEADER);
    let mut r = data;
    let streamed = common::ready(wire::read_frame::<RequestHeader, _>(&mut r, MAX_HEADER));
    match (split, streamed) {
        (Ok((h, rest)), Some(Ok(s))) => {
            assert_eq!(h, s);
            assert_eq!(&rest[..], r, "the rest is what the stream reader left");
        }
        (Ok(_), other) => panic!("split decoded, the stream reader did not: {other:?}"),
        (Err(_), Some(Ok(_))) => panic!("the stream reader decoded, split did not"),
        (Err(_), _) => {}
    }
    let _ = wire::split_frame::<ResponseHeader>(whole, MAX_HEADER);
});
