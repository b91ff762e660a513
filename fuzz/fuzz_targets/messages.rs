//! Messaging as a hostile peer sends it: envelopes (verified, opened, offered
//! to a mailbox), direct deliveries (offered to an inbox) and the other
//! messages of the routes never panic; what a mailbox takes verifies, and
//! an inbox hands each id over once.
#![no_main]

use std::sync::OnceLock;

use butter::messaging::envelope::Envelope;
use butter::messaging::inbox::{Inbox, InboxLimits};
use butter::messaging::mailbox::{MailboxLimits, MailboxStore};
use butter::messaging::messages::{Deliver, Fetch, Fetched, Outcome, PutReply, Receipt};
use butter::Identity;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fn me() -> &'static Identity {
    static ME: OnceLock<Identity> = OnceLock::new();
    ME.get_or_init(|| Identity::from_secret_bytes([7; 32]))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = postcard::from_bytes::<Envelope>(data) {
        let mut store = MailboxStore::new(MailboxLimits::default());
        if store.put(env.clone(), "192.0.2.1".parse().unwrap(), NOW).is_ok() {
            assert!(env.verify(NOW).is_ok());
            assert_eq!(store.all(&env.to).len(), 1);
        }
        if let Ok(letter) = env.open(me(), NOW) {
            assert_eq!(letter.id, env.id);
        }
    }
    if let Ok(d) = postcard::from_bytes::<Deliver>(data) {
        let mut inbox = Inbox::new(InboxLimits::default());
        let from = Identity::from_secret_bytes([8; 32]).id();
        let mut seen = std::collections::HashSet::new();
        for letter in d.letters.into_iter().take(512) {
            if let Ok(ready) = inbox.accept(from, letter) {
                for m in ready {
                    assert!(seen.insert(m.id), "an id handed over twice");
                }
            }
        }
    }
    let _ = postcard::from_bytes::<Vec<Outcome>>(data);
    let _ = postcard::from_bytes::<PutReply>(data);
    let _ = postcard::from_bytes::<Fetch>(data);
    let _ = postcard::from_bytes::<Fetched>(data);
    let _ = postcard::from_bytes::<Receipt>(data);
});
