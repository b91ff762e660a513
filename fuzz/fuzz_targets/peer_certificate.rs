//! A peer's certificate, as the TLS verifiers see it in both directions:
//! never a panic, and anything accepted speaks for the key it carries.
#![no_main]

use butter::unstable::tls;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, UnixTime};

fuzz_target!(|data: &[u8]| {
    let cert = CertificateDer::from(data.to_vec());
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
    for client in [true, false] {
        if let Ok(id) = tls::check_peer_cert(&cert, &[], now, client) {
            assert_eq!(tls::node_id_of_cert(&cert).expect("accepted, so parsed"), id);
        }
    }
    let _ = tls::node_id_of_spki(data);
});
