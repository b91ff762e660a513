//! Multicast discovery beacons: never a panic; what decodes encodes back to
//! the same beacon.
#![no_main]

use butter::discovery::beacon::Beacon;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Beacon::decode(data) {
        let again = b.encode().expect("a decoded beacon encodes");
        assert_eq!(Beacon::decode(&again).expect("round trip"), b);
    }
});
