//! Envelopes: a message stored for a recipient that is offline.
//!
//! The body and everything that orders it (topic, sequence) are sealed with
//! the NaCl authenticated box (`crypto_box`'s `ChaChaBox`: X25519 key
//! agreement, XChaCha20-Poly1305, a random 24-byte nonce) between the
//! sender's and the recipient's node keys converted to X25519. Only the
//! recipient (and the sender) can open it, and opening it proves the sender
//! made it. The sender also signs the envelope with its ed25519 key, so a
//! mailbox holder — who cannot open it — can still refuse what the claimed
//! sender did not write, and count quotas per real sender.
//!
//! What a holder sees: sender, recipient, id, expiry and size. Keys are
//! long-lived, so there is no forward secrecy: a recipient key stolen later
//! opens envelopes recorded earlier.

use crypto_box::aead::Aead;
use crypto_box::{ChaChaBox, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

use super::{check_topic, MessageError, MessageId, MAX_BODY};
use crate::identity::{Identity, NodeId};

/// Domain of the envelope signature.
const DOMAIN: &[u8] = b"butter/msg/envelope/v1";

/// Largest sealed part (the body, its ordering and the box's tag).
pub const MAX_SEALED: usize = MAX_BODY + 256;

/// Longest an envelope may ask to be kept, in seconds (a week).
pub const MAX_TTL: u64 = 7 * 24 * 3600;

/// What the sealed part of an envelope holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    /// The message's id (the same as the envelope's).
    pub id: MessageId,
    /// The topic.
    pub topic: String,
    /// Place in the sender's order for this recipient and topic (from 1).
    pub seq: u64,
    /// The sender's lowest sequence number not yet acknowledged or given
    /// up on: the recipient need not wait for anything below it.
    pub floor: u64,
    /// The sender's epoch (when its message state was created, in
    /// milliseconds): a sender that lost its state starts a new order.
    pub epoch: u64,
    /// When it was sent (sender's clock, ms since the Unix epoch).
    pub sent_at_ms: u64,
    /// The body.
    pub body: Vec<u8>,
}

/// A sealed, signed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The recipient (whose mailbox holds it).
    pub to: NodeId,
    /// The message's id.
    pub id: MessageId,
    /// Unix seconds after which nobody keeps it.
    pub expires: u64,
    /// The box's nonce.
    pub nonce: [u8; 24],
    /// The sealed [`Letter`] (postcard).
    pub sealed: Vec<u8>,
    /// The sender's ed25519 signature over all of the above.
    pub sig: Vec<u8>,
}

fn cipher(mine: &Identity, theirs: &NodeId) -> Result<ChaChaBox, MessageError> {
    let public = theirs.x25519().ok_or(MessageError::BadKey)?;
    Ok(ChaChaBox::new(
        &PublicKey::from(public),
        &SecretKey::from(mine.x25519_secret()),
    ))
}

impl Envelope {
    /// Seals `letter` from `sender` to `to`, kept until `expires`.
    pub fn seal(
        sender: &Identity,
        to: NodeId,
        letter: &Letter,
        expires: u64,
    ) -> Result<Envelope, MessageError> {
        if letter.body.len() > MAX_BODY {
            return Err(MessageError::TooLarge(format!(
                "body of {} bytes (at most {MAX_BODY})",
                letter.body.len()
            )));
        }
        check_topic(&letter.topic)?;
        let plain =
            postcard::to_allocvec(letter).map_err(|e| MessageError::Malformed(e.to_string()))?;
        let nonce: [u8; 24] = rand::random();
        let sealed = cipher(sender, &to)?
            .encrypt(&nonce.into(), &plain[..])
            .map_err(|_| MessageError::Malformed("cannot seal".into()))?;
        let mut e = Envelope {
            from: sender.id(),
            to,
            id: letter.id,
            expires,
            nonce,
            sealed,
            sig: Vec::new(),
        };
        e.sig = sender.sign(&e.signed_bytes()).to_vec();
        Ok(e)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DOMAIN.len() + 32 * 2 + 16 + 8 + 24 + self.sealed.len());
        b.extend_from_slice(DOMAIN);
        b.extend_from_slice(self.from.as_bytes());
        b.extend_from_slice(self.to.as_bytes());
        b.extend_from_slice(&self.id.0);
        b.extend_from_slice(&self.expires.to_le_bytes());
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.sealed);
        b
    }

    /// Bytes it takes in a store (about its encoded size).
    pub fn size(&self) -> usize {
        32 * 2 + 16 + 8 + 24 + self.sealed.len() + self.sig.len() + 8
    }

    /// What anyone can check (a holder): sizes, lifetime at `now` (unix
    /// seconds), and the sender's signature.
    pub fn verify(&self, now: u64) -> Result<(), MessageError> {
        if self.sealed.len() > MAX_SEALED {
            return Err(MessageError::TooLarge(format!(
                "sealed part of {} bytes (at most {MAX_SEALED})",
                self.sealed.len()
            )));
        }
        if self.expires <= now || self.expires > now.saturating_add(MAX_TTL) {
            return Err(MessageError::Expired);
        }
        let sig: [u8; 64] = self
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| MessageError::BadSignature)?;
        if !self.from.verify(&self.signed_bytes(), &sig) {
            return Err(MessageError::BadSignature);
        }
        Ok(())
    }

    /// Opens it as its recipient `me`: verified, decrypted, its inner id
    /// checked against the outer one.
    pub fn open(&self, me: &Identity, now: u64) -> Result<Letter, MessageError> {
        if self.to != me.id() {
            return Err(MessageError::NotForMe);
        }
        self.verify(now)?;
        let plain = cipher(me, &self.from)?
            .decrypt(&self.nonce.into(), &self.sealed[..])
            .map_err(|_| MessageError::Unreadable)?;
        let letter: Letter =
            postcard::from_bytes(&plain).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if letter.id != self.id {
            return Err(MessageError::Malformed(
                "sealed id differs from the envelope's".into(),
            ));
        }
        check_topic(&letter.topic)?;
        if letter.body.len() > MAX_BODY {
            return Err(MessageError::TooLarge("body".into()));
        }
        Ok(letter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn letter(body: &[u8]) -> Letter {
        Letter {
            id: MessageId::random(),
            topic: "t".into(),
            seq: 1,
            floor: 1,
            epoch: 1,
            sent_at_ms: NOW * 1000,
            body: body.to_vec(),
        }
    }

    #[test]
    fn only_the_recipient_reads_it_and_only_the_sender_could_write_it() {
        let (a, b, eve) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let l = letter(b"secret");
        let e = Envelope::seal(&a, b.id(), &l, NOW + 60).unwrap();
        assert_eq!(e.open(&b, NOW).unwrap(), l);
        assert!(!e.sealed.windows(6).any(|w| w == b"secret"));
        // Eve cannot read it, even when she claims to be its recipient.
        assert_eq!(e.open(&eve, NOW), Err(MessageError::NotForMe));
        let mut to_eve = e.clone();
        to_eve.to = eve.id();
        assert_eq!(to_eve.open(&eve, NOW), Err(MessageError::BadSignature));
        // Eve cannot pass her own envelope off as Alice's: she cannot sign
        // for Alice, and re-signing as Alice is impossible; an envelope
        // she seals and claims to be from Alice does not open.
        let mut forged = Envelope::seal(&eve, b.id(), &l, NOW + 60).unwrap();
        forged.from = a.id();
        assert_eq!(forged.verify(NOW), Err(MessageError::BadSignature));
        assert_eq!(forged.open(&b, NOW), Err(MessageError::BadSignature));
    }

    #[test]
    fn any_change_is_refused() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let e = Envelope::seal(&a, b.id(), &letter(b"hello"), NOW + 60).unwrap();
        let mut flipped = e.clone();
        flipped.sealed[3] ^= 1;
        assert_eq!(flipped.verify(NOW), Err(MessageError::BadSignature));
        let mut later = e.clone();
        later.expires += 1;
        assert_eq!(later.verify(NOW), Err(MessageError::BadSignature));
        let mut unsigned = e.clone();
        unsigned.sig.clear();
        assert_eq!(unsigned.verify(NOW), Err(MessageError::BadSignature));
        assert_eq!(e.verify(NOW + 60), Err(MessageError::Expired));
        let long = Envelope::seal(&a, b.id(), &letter(b"x"), NOW + MAX_TTL + 10).unwrap();
        assert_eq!(long.verify(NOW), Err(MessageError::Expired));
    }

    #[test]
    fn oversized_bodies_and_topics_are_refused() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let big = letter(&vec![0; MAX_BODY + 1]);
        assert!(matches!(
            Envelope::seal(&a, b.id(), &big, NOW + 60),
            Err(MessageError::TooLarge(_))
        ));
        let mut e = Envelope::seal(&a, b.id(), &letter(b"x"), NOW + 60).unwrap();
        e.sealed = vec![0; MAX_SEALED + 1];
        assert!(matches!(e.verify(NOW), Err(MessageError::TooLarge(_))));
        let mut topic = letter(b"x");
        topic.topic = "t".repeat(super::super::MAX_TOPIC + 1);
        assert!(matches!(
            Envelope::seal(&a, b.id(), &topic, NOW + 60),
            Err(MessageError::TooLarge(_))
        ));
    }

    #[test]
    fn an_invalid_key_is_a_typed_error() {
        let a = Identity::generate();
        // Some bytes are not a point on the curve.
        let bad = (0..=255u8)
            .map(|i| NodeId::from_bytes([i; 32]))
            .find(|id| id.x25519().is_none())
            .expect("an invalid key among 256");
        assert_eq!(
            Envelope::seal(&a, bad, &letter(b"x"), NOW + 60),
            Err(MessageError::BadKey)
        );
    }
}
