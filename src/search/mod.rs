//! Similarity search, plain data: "who knows what". Content and peers are
//! found by meaning-near keys rather than exact ones.
//!
//! - [`text`]: text to weighted word shingles.
//! - [`signature`]: 64-bit locality-sensitive signatures (SimHash for
//!   text, random hyperplanes for a caller's embedding vectors), with the
//!   margin of each bit.
//! - [`bands`]: the DHT keys a signature is published under (one per band)
//!   and the keys a query looks up (its bands, then probes of its least
//!   sure bits).
//! - [`entry`]: signed index entries (an item or a peer's profile, the
//!   full signature, a name, keywords, the holder).
//! - [`messages`]: the index's routes and messages.
//! - [`store`]: the bounded store of entries a node keeps for others.
//! - [`rank`]: how hits are ranked (the same rule for a brute-force
//!   ranking).
//!
//! ```
//! use butter::search::bands::Bands;
//! use butter::search::signature::Sketch;
//!
//! let doc = Sketch::of_text("rsync: fast remote file copy program, like rcp, with delta transfer");
//! let query = Sketch::of_text("fast remote file copy program with delta transfer");
//! let bands = Bands::DEFAULT;
//! // A query looks up its own band keys and a few probes; the document's
//! // entries live under its band keys.
//! let looked_up: Vec<_> = bands
//!     .probes(&query, 16)
//!     .iter()
//!     .map(|p| bands.key(p.band, p.value))
//!     .collect();
//! let published = bands.keys(doc.signature);
//! println!(
//!     "{} bits apart; shares a key: {}",
//!     doc.signature.hamming(query.signature),
//!     published.iter().any(|k| looked_up.contains(k))
//! );
//! ```

pub mod bands;
pub mod entry;
pub mod messages;
pub mod rank;
pub mod signature;
pub mod store;
pub mod text;

pub use bands::{term_key, Bands};
pub use entry::{Entry, Fields, Subject};
pub use signature::{Signature, Sketch};
