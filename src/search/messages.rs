//! The index's messages: `butter/search/put` ([`IndexPut`], answered by
//! [`PutReply`]) and `butter/search/get` ([`IndexGet`], answered by
//! [`IndexFound`]), postcard-encoded like every typed route.

use serde::{Deserialize, Serialize};

use super::entry::Entry;
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
}
