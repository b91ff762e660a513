//! The DHT's messages and records: the first byte picks the type, the rest is
//! decoded; what decodes is checked (counts), records are verified and offered
//! to a store, and decoded messages must encode back to what decodes the same.
//! Never a panic.
#![no_main]

use butter::dht::messages::*;
use butter::dht::record::Record;
use butter::dht::store::{ProviderStore, RecordStore, StoreLimits};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

const NOW: u64 = 1_800_000_000;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    let again = postcard::to_allocvec(&value).expect("a decoded message encodes");
    assert_eq!(
        postcard::from_bytes::<T>(&again).ok().as_ref(),
        Some(&value)
    );
    Some(value)
}

fn record(r: Record) {
    let _ = r.key();
    let _ = r.verify(NOW);
    let mut store = RecordStore::new(StoreLimits::default());
    let _ = store.put(r, "192.0.2.1".parse().unwrap(), NOW);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => drop(round_trip::<FindNode>(rest)),
        1 => {
            if let Some(m) = round_trip::<Closer>(rest) {
                let _ = m.check();
            }
        }
        2 => drop(round_trip::<FindValue>(rest)),
        3 => {
            if let Some(m) = round_trip::<FoundValue>(rest) {
                if m.check().is_ok() {
                    if let Some(r) = m.record {
                        record(r);
                    }
                }
            }
        }
        4 => {
            if let Some(m) = round_trip::<Store>(rest) {
                record(m.record);
            }
        }
        5 => drop(round_trip::<Stored>(rest).map(|m| m.check())),
        6 => {
            if let Some(m) = round_trip::<AddProvider>(rest) {
                if m.check().is_ok() {
                    let mut store = ProviderStore::new(StoreLimits::default());
                    let _ = store.add(m.key, m.key, &m.addrs, "192.0.2.1".parse().unwrap(), NOW);
                }
            }
        }
        7 => drop(round_trip::<GetProviders>(rest)),
        _ => drop(round_trip::<Providers>(rest).map(|m| m.check())),
    }
});
