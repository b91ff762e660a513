//! Search index entries and the messages carrying them, as a hostile peer
//! sends them: decoding, verification and the index store never panic,
//! and what the store takes verifies.
#![no_main]

use butter::search::messages::{IndexFound, IndexGet, IndexPut, PutReply};
use butter::search::entry::Entry;
use butter::search::store::{IndexLimits, IndexStore};
use butter::search::Bands;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::decode(data) {
        let _ = e.verify(NOW);
        let mut store = IndexStore::new(IndexLimits::default(), Bands::DEFAULT);
        for key in Bands::DEFAULT.keys(e.signature) {
            if store
                .put(key, e.clone(), "192.0.2.1".parse().unwrap(), NOW)
                .is_ok()
            {
                assert!(e.verify(NOW).is_ok());
            }
        }
        let _ = e.encode();
    }
    let _ = postcard::from_bytes::<IndexPut>(data);
    if let Ok(found) = postcard::from_bytes::<IndexFound>(data) {
        let _ = found.check();
    }
    let _ = postcard::from_bytes::<IndexGet>(data);
    let _ = postcard::from_bytes::<PutReply>(data);
});
