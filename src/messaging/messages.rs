//! The messaging routes and what they carry (postcard).
//!
//! | route | from → to | body → reply |
//! | --- | --- | --- |
//! | `butter/msg/deliver` | sender → recipient | [`Deliver`] → one [`Outcome`] per letter |
//! | `butter/msg/receipt` | recipient → sender | [`Receipt`] → `()` |
//! | `butter/msg/put` | sender → mailbox holder | [`Envelope`] → [`PutReply`] |
//! | `butter/msg/fetch` | owner → holder | [`Fetch`] → [`Fetched`] |
//! | `butter/msg/ack` | owner → holder | [`Receipt`] → count removed |
//!
//! [`Envelope`]: super::envelope::Envelope

use serde::{Deserialize, Serialize};

use super::envelope::{Envelope, Letter};
use super::{MessageError, MessageId};
use crate::identity::NodeId;

/// Direct delivery of letters (the connection authenticates the sender).
pub const DELIVER_ROUTE: &str = "butter/msg/deliver";
/// Acknowledgement of messages taken from a mailbox, to their sender.
pub const RECEIPT_ROUTE: &str = "butter/msg/receipt";
/// Stores an envelope in its recipient's mailbox.
pub const PUT_ROUTE: &str = "butter/msg/put";
/// Reads the caller's own mailbox.
pub const FETCH_ROUTE: &str = "butter/msg/fetch";
/// Empties messages of the caller's own mailbox.
pub const ACK_ROUTE: &str = "butter/msg/ack";

/// Letters in one delivery, at most.
pub const MAX_BATCH: usize = 256;

/// Bytes of bodies in one delivery, about (one body may pass it alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Ids in one receipt or acknowledgement, at most.
pub const MAX_IDS: usize = 1024;

/// Bytes of envelopes in one fetched page, about.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// The key a node's mailbox is placed under (its `r` closest nodes hold it).
pub fn mailbox_key(owner: &NodeId) -> NodeId {
    let mut h = blake3::Hasher::new();
    h.update(b"butter/mailbox/v1");
    h.update(owner.as_bytes());
    NodeId::from_bytes(*h.finalize().as_bytes())
}

/// Letters for the caller's peer, in its order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deliver {
    /// The letters.
    pub letters: Vec<Letter>,
}

/// What became of one delivered letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Taken (handed over, or waiting for an earlier one).
    Taken,
    /// Seen before: the earlier copy was taken.
    Seen,
    /// Not now (the recipient's bounds): try again later.
    Later,
    /// Refused for good.
    Refused(MessageError),
}

/// Message ids (a receipt, or an owner's acknowledgement to a holder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    /// The ids.
    pub ids: Vec<MessageId>,
}

/// A holder's answer to a put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutReply {
    /// Stored (or held already).
    Stored,
    /// Refused.
    Refused(MessageError),
}

/// A read of the caller's mailbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fetch {
    /// From after this message (from the start without).
    pub after: Option<MessageId>,
}

/// A page of the caller's mailbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Fetched {
    /// The envelopes, and whether more follow.
    Page {
        /// Envelopes in the order they came.
        envelopes: Vec<Envelope>,
        /// More follow.
        more: bool,
    },
    /// Refused.
    Refused(MessageError),
}
