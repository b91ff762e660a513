//! The DHT's messages (postcard, on typed routes under `butter/dht/`). Every
//! message is bounded twice: the route's body limit refuses an oversize
//! request before it is read, and [`Check::check`] refuses counts over their
//! limits after decoding, before any work. Every reply carries the
//! responder's contacts closest to the key, so each answer moves a lookup on.
//!
//! ```
//! use butter::dht::messages::{Check, Closer, MAX_CONTACTS};
//! use butter::{NodeAddr, NodeId};
//!
//! let contact = NodeAddr::new(NodeId::from_bytes([7; 32]), ["192.0.2.1:7400".parse().unwrap()]);
//! assert!(Closer { contacts: vec![contact.clone(); MAX_CONTACTS] }.check().is_ok());
//! assert!(Closer { contacts: vec![contact; MAX_CONTACTS + 1] }.check().is_err());
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::record::{Record, MAX_NAME, MAX_VALUE};
use crate::addr::NodeAddr;
use crate::error::{Error, Result};
use crate::identity::NodeId;

/// Asks for the contacts closest to a target.
pub const FIND_NODE_ROUTE: &str = "butter/dht/find_node";
/// Asks for a record (or the closest contacts).
pub const FIND_VALUE_ROUTE: &str = "butter/dht/find_value";
/// Stores a record.
pub const STORE_ROUTE: &str = "butter/dht/store";
/// Says the caller holds a key's content.
pub const ADD_PROVIDER_ROUTE: &str = "butter/dht/add_provider";
/// Asks who holds a key's content.
pub const GET_PROVIDERS_ROUTE: &str = "butter/dht/get_providers";

/// Contacts in one reply (Kademlia's k).
pub const MAX_CONTACTS: usize = 20;
/// Addresses per contact.
pub const MAX_CONTACT_ADDRS: usize = 4;
/// Providers in one reply.
pub const MAX_PROVIDERS: usize = 20;

/// Body limit of the requests that carry only a key.
pub const SMALL_REQUEST: usize = 64;
/// Body limit of `add_provider` (a key and a few addresses).
pub const PROVIDER_REQUEST: usize = 256;
/// Body limit of `store` (a record at its largest, with framing).
pub const STORE_REQUEST: usize = MAX_VALUE + MAX_NAME + 256;

/// Counts checked after decoding, before any work.
pub trait Check {
    /// A typed error if a count is over its limit.
    fn check(&self) -> Result<()>;
}

fn over(what: &str, limit: usize) -> Error {
    Error::Malformed(format!("{what}: more than {limit}"))
}

fn check_contacts(contacts: &[NodeAddr]) -> Result<()> {
    if contacts.len() > MAX_CONTACTS {
        return Err(over("contacts", MAX_CONTACTS));
    }
    if contacts.iter().any(|c| c.addrs.len() > MAX_CONTACT_ADDRS) {
        return Err(over("addresses of a contact", MAX_CONTACT_ADDRS));
    }
    Ok(())
}

/// Request of `find_node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindNode {
    /// The id looked for.
    pub target: NodeId,
    /// Whether the caller serves the DHT itself (and may be taken into the
    /// responder's table, at the address its packets come from); a guest,
    /// such as a one-shot command, says no and never enters anyone's table.
    pub serving: bool,
}

/// The responder's contacts closest to what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closer {
    /// At most [`MAX_CONTACTS`], each with at most [`MAX_CONTACT_ADDRS`].
    pub contacts: Vec<NodeAddr>,
}

impl Check for Closer {
    fn check(&self) -> Result<()> {
        check_contacts(&self.contacts)
    }
}

/// Request of `find_value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindValue {
    /// The record's key.
    pub key: NodeId,
    /// As in [`FindNode::serving`].
    pub serving: bool,
}

/// Reply of `find_value`: the record if held, and closer contacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundValue {
    /// The record, when the responder holds it.
    pub record: Option<Record>,
    /// The responder's closest contacts.
    pub closer: Closer,
}

impl Check for FoundValue {
    fn check(&self) -> Result<()> {
        if let Some(r) = &self.record {
            if r.value.len() > MAX_VALUE || r.name.len() > MAX_NAME {
                return Err(over("record bytes", MAX_VALUE));
            }
        }
        self.closer.check()
    }
}

/// Request of `store`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// The record (verified by the storing node).
    pub record: Record,
}

/// Reply of `store` and of `add_provider`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The responder's closest contacts to the record's key.
    pub closer: Closer,
}

impl Check for Stored {
    fn check(&self) -> Result<()> {
        self.closer.check()
    }
}

/// Request of `add_provider`: the caller (authenticated by its connection)
/// holds the content of `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddProvider {
    /// The content's key.
    pub key: NodeId,
    /// Where the caller can be reached (at most [`MAX_CONTACT_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
}

impl Check for AddProvider {
    fn check(&self) -> Result<()> {
        if self.addrs.len() > MAX_CONTACT_ADDRS {
            return Err(over("provider addresses", MAX_CONTACT_ADDRS));
        }
        Ok(())
    }
}

/// Request of `get_providers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetProviders {
    /// The content's key.
    pub key: NodeId,
    /// As in [`FindNode::serving`].
    pub serving: bool,
}

/// Reply of `get_providers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Providers {
    /// Who says it holds the content.
    pub providers: Vec<NodeAddr>,
    /// The responder's closest contacts to the key.
    pub closer: Closer,
}

impl Check for Providers {
    fn check(&self) -> Result<()> {
        if self.providers.len() > MAX_PROVIDERS {
            return Err(over("providers", MAX_PROVIDERS));
        }
        if self
            .providers
            .iter()
            .any(|p| p.addrs.len() > MAX_CONTACT_ADDRS)
        {
            return Err(over("addresses of a provider", MAX_CONTACT_ADDRS));
        }
        self.closer.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn contact(addrs: usize) -> NodeAddr {
        let a: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        NodeAddr::new(NodeId::from_bytes([0xff; 32]), vec![a; addrs])
    }

    /// The largest legal replies fit the node's reply limit with room to
    /// spare, and the largest legal requests fit their routes' body limits.
    #[test]
    fn the_largest_legal_messages_fit_their_limits() {
        let closer = Closer {
            contacts: vec![contact(MAX_CONTACT_ADDRS); MAX_CONTACTS],
        };
        let me = Identity::generate();
        let record = Record::sign(
            &me,
            &[0xff; MAX_NAME],
            vec![0xff; MAX_VALUE],
            u64::MAX,
            u64::MAX,
        )
        .unwrap();
        let found = FoundValue {
            record: Some(record.clone()),
            closer: closer.clone(),
        };
        found.check().unwrap();
        let reply = postcard::to_allocvec(&found).unwrap();
        assert!(reply.len() < 64 * 1024, "{}", reply.len());
        let store = postcard::to_allocvec(&Store { record }).unwrap();
        assert!(store.len() <= STORE_REQUEST, "{}", store.len());
        let key = NodeId::from_bytes([0xff; 32]);
        for small in [
            postcard::to_allocvec(&FindNode {
                target: key,
                serving: true,
            })
            .unwrap(),
            postcard::to_allocvec(&FindValue { key, serving: true }).unwrap(),
            postcard::to_allocvec(&GetProviders { key, serving: true }).unwrap(),
        ] {
            assert!(small.len() <= SMALL_REQUEST);
        }
        let add = AddProvider {
            key,
            addrs: contact(MAX_CONTACT_ADDRS).addrs,
        };
        add.check().unwrap();
        assert!(postcard::to_allocvec(&add).unwrap().len() <= PROVIDER_REQUEST);
    }

    #[test]
    fn counts_over_their_limits_are_typed_errors() {
        let too_many = Closer {
            contacts: vec![contact(1); MAX_CONTACTS + 1],
        };
        assert!(matches!(too_many.check(), Err(Error::Malformed(_))));
        let fat = Closer {
            contacts: vec![contact(MAX_CONTACT_ADDRS + 1)],
        };
        assert!(matches!(fat.check(), Err(Error::Malformed(_))));
        let providers = Providers {
            providers: vec![contact(1); MAX_PROVIDERS + 1],
            closer: Closer { contacts: vec![] },
        };
        assert!(matches!(providers.check(), Err(Error::Malformed(_))));
        let add = AddProvider {
            key: NodeId::from_bytes([0; 32]),
            addrs: contact(MAX_CONTACT_ADDRS + 1).addrs,
        };
        assert!(matches!(add.check(), Err(Error::Malformed(_))));
    }
}
