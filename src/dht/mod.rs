//! The Kademlia DHT: lookups over the known-hosts table (which is the
//! routing table), signed records and provider records. Decisions are plain
//! types driven by `now`: [`lookup`] (the iterative lookup), [`messages`]
//! (the bounded wire messages), [`record`]
//! (signing and validity), [`store`] (what a node holds for others, bounded
//! per source); the routes and the node's side come on top.

pub mod lookup;
pub mod messages;
pub mod record;
pub mod store;
