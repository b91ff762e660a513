//! Messaging, plain data: the parts of dependable app-to-app messages that
//! decide without a socket. A node uses them through
//! [`Node::send_message`](crate::Node::send_message) and
//! [`Node::messages`](crate::Node::messages).
//!
//! - [`envelope`]: a message for a recipient that is offline, sealed to
//!   its key (only it can read it) and signed by its sender (holders and
//!   the recipient check who wrote it).
//! - [`mailbox`]: the bounded store of envelopes a node holds for others
//!   (per mailbox, per sender, per source address and prefix; expiry;
//!   acknowledged ids remembered so a replay is refused).
//! - [`inbox`]: the recipient's side: de-duplication by id and delivery in
//!   each sender's order per topic.
//! - [`outbox`]: the sender's side: sequence numbers, messages waiting for
//!   their acknowledgement, when to try again.
//! - [`messages`]: the routes and what they carry.
//!
//! ```
//! use butter::messaging::envelope::{Envelope, Letter};
//! use butter::messaging::MessageId;
//! use butter::Identity;
//!
//! let (alice, bob, eve) = (Identity::generate(), Identity::generate(), Identity::generate());
//! let now = 1_800_000_000;
//! let letter = Letter {
//!     id: MessageId::random(),
//!     topic: "chat".into(),
//!     seq: 1,
//!     floor: 1,
//!     epoch: 7,
//!     sent_at_ms: now * 1000,
//!     body: b"hello bob".to_vec(),
//! };
//! let sealed = Envelope::seal(&alice, bob.id(), &letter, now + 3600).unwrap();
//! sealed.verify(now).unwrap(); // what a holder checks: alice signed it
//! assert_eq!(sealed.open(&bob, now).unwrap().body, b"hello bob");
//! assert!(sealed.open(&eve, now).is_err(), "only bob can read it");
//! ```

pub mod envelope;
pub mod inbox;
pub mod mailbox;
pub mod messages;
pub mod outbox;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// Largest message body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Longest topic name, in bytes.
pub const MAX_TOPIC: usize = 64;

/// A message's id: random, chosen by its sender; the recipient sees each id
/// once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        MessageId(rand::random())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A message as the recipient's application gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who sent it (authenticated: the connection's or the envelope's key).
    pub from: NodeId,
    /// Its id.
    pub id: MessageId,
    /// The topic it was sent on.
    pub topic: String,
    /// Its place in the sender's order on this topic (from 1).
    pub seq: u64,
    /// When the sender sent it (its clock), in milliseconds since the Unix
    /// epoch.
    pub sent_at_ms: u64,
    /// What it says.
    pub body: bytes::Bytes,
}

/// Why a message was refused (by a mailbox holder or by the recipient).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MessageError {
    /// No signature, or one that does not verify against the sender's key.
    #[error("message signature missing or does not verify")]
    BadSignature,
    /// The sender's or recipient's id is not a valid key.
    #[error("message names an invalid key")]
    BadKey,
    /// The envelope cannot be opened with the recipient's key (not sealed
    /// by the sender to it, or altered).
    #[error("message cannot be opened (not sealed to this recipient, or altered)")]
    Unreadable,
    /// Addressed to another node.
    #[error("message is for another recipient")]
    NotForMe,
    /// Seen (and acknowledged) already.
    #[error("message replayed (seen already)")]
    Replayed,
    /// Expired, or claims to live longer than allowed.
    #[error("message expired or lives too long")]
    Expired,
    /// Larger than allowed.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The sender holds as many messages in this mailbox as it may.
    #[error("over quota: {0}")]
    OverQuota(String),
    /// Badly formed.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The caller may not do this (a mailbox is read and acknowledged by its
    /// owner only).
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

pub(crate) fn check_topic(topic: &str) -> Result<(), MessageError> {
    if topic.len() > MAX_TOPIC {
        return Err(MessageError::TooLarge(format!(
            "topic of {} bytes (at most {MAX_TOPIC})",
            topic.len()
        )));
    }
    Ok(())
}
