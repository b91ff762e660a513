//! Content addressing: data split into chunks, each addressed by its BLAKE3
//! hash, and a tree of bounded manifests over them whose root's hash is the
//! key users share. Plain data, no sockets: [`chunk`] (hashes and the
//! verification every received byte goes through), [`manifest`] (the
//! bounded manifest format), [`tree`] (building the tree from a stream of
//! chunks, with memory bounded by the tree's depth, and walking it back).
//!
//! Why chunks and manifests rather than one BLAKE3 verified-streaming tree
//! (iroh-blobs' `bao-tree`): every chunk and manifest is a blob with a key of
//! its own, so each is placed on the nodes closest to *its* key, and a
//! download fetches different chunks from different holders at once; a bao
//! tree has one key for the whole file, which would put all of a large file
//! on the same few nodes.
//!
//! ```
//! use butter::content::tree::{build, chunks_of};
//!
//! let data = vec![7u8; 1000];
//! let built = build(&data[..], 256, Some("sevens".into())).unwrap();
//! // Four chunks (256, 256, 256, 232 bytes) under one manifest, the root.
//! assert_eq!(built.chunks, 4);
//! let root = built.blobs.get(&built.root).unwrap();
//! let manifest = butter::content::manifest::Manifest::decode(root).unwrap();
//! assert_eq!(manifest.size, 1000);
//! assert_eq!(chunks_of(&manifest).len(), 4);
//! ```

pub mod chunk;
pub mod manifest;
pub mod repair;
pub mod tree;

pub use chunk::{verify, Hash};
pub use manifest::Manifest;
