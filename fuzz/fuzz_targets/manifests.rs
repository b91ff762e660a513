//! Manifests as they arrive from the network: decoded and checked, encoded
//! back to the same bytes' meaning, hashed; a decoded tree walked with the
//! fuzzed manifest as every node of it. Never a panic, never a loop.
#![no_main]

use butter::content::manifest::Manifest;
use butter::content::tree::walk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode(data) else {
        return;
    };
    let again = m.encode().expect("a checked manifest encodes");
    assert_eq!(Manifest::decode(&again).expect("and decodes again"), m);
    let _ = m.hash();
    // Every child is this same manifest: sizes never match a parent's
    // (or the depth bound stops it), so the walk ends with an error or
    // after the chunks of a leaf.
    let mut chunks = 0u64;
    let _ = walk(
        butter::content::Hash([0; 32]),
        |_| Ok(data.to_vec()),
        |_, _, _| {
            chunks += 1;
            Ok(())
        },
    );
    assert!(chunks <= 4096);
});
