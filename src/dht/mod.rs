//! The Kademlia DHT: lookups over the known-hosts table (which is the
//! routing table), records and providers. Decisions are plain types driven
//! by `now` ([`lookup`]); the routes and the node's side come on top.

pub mod lookup;
