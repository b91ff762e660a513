//! The index's messages: `butter/search/put` ([`IndexPut`], answered by
//! [`PutReply`]) and `butter/search/get` ([`IndexGet`], answered by
//! [`IndexFound`]), postcard-encoded like every typed route.

use serde::{Deserialize, Serialize};

use super::entry::Entry;
use crate::addr::NodeAddr;
use crate::identity::NodeId;

/// Route storing an index entry (request: [`IndexPut`]).
pub const PUT_ROUTE: &str = "butter/search/put";
/// Route reading the entries under a key (request: [`IndexGet`]).
pub const GET_ROUTE: &str = "butter/search/get";

/// A request storing an entry under a key (the key, or one of its spills).
#[derive(Debug, Serialize, Deserialize)]
pub struct IndexPut {
    /// Where.
    pub key: NodeId,
    /// What.
    pub entry: Entry,
}

/// The answer to an [`IndexPut`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PutReply {
    /// Stored (or renewed).
    Stored,
    /// The key is full: the next spill.
    Full,
}

/// A request reading a key.
#[derive(Debug, Serialize, Deserialize)]
pub struct IndexGet {
    /// Which.
    pub key: NodeId,
}

/// The entries under a key.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IndexFound {
    /// Live entries (at most the store's per-key bound).
    pub entries: Vec<Entry>,
    /// Whether the key is full (more may be under its next spill).
    pub full: bool,
    /// When the responder holds no entry under the key: the nodes it knows
    /// closer to the key than itself (at most [`MAX_CLOSER`]), so that a
    /// read that reached a node short of the holders goes on to them
    /// without a lookup (Kademlia's `FIND_VALUE`). Empty: the responder
    /// knows nobody closer (it is a holder; the key is empty).
    pub closer: Vec<NodeAddr>,
}

/// Contacts an [`IndexFound`] names at most.
pub const MAX_CLOSER: usize = 4;

impl IndexFound {
    /// A typed error if the answer names more contacts, or contacts with
    /// more addresses, than it may.
    pub fn check(&self) -> Result<(), crate::Error> {
        if self.closer.len() > MAX_CLOSER
            || self
                .closer
                .iter()
                .any(|c| c.addrs.len() > crate::dht::messages::MAX_CONTACT_ADDRS)
        {
            return Err(crate::Error::Malformed(format!(
                "index answer: more than {MAX_CLOSER} closer contacts or too many addresses"
            )));
        }
        Ok(())
    }
}
