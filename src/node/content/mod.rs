//! Content on the network, as a node uses it: [`Node::put`] splits data into
//! verified chunks under a manifest tree ([`crate::content`]), keeps them in
//! the node's store ([`crate::store`]) and pushes every blob to the `r`
//! nodes closest to its hash; [`Node::get`] walks the tree from its key,
//! fetching many blobs at once, each from the closest holder that serves
//! bytes matching its hash.
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! use butter::Node;
//! let local = "127.0.0.1:0".parse().unwrap();
//! let a = Node::builder().listen(local).lan_discovery(false).spawn().await?;
//! let b = Node::builder().listen(local).lan_discovery(false).bootstrap(a.addr()).spawn().await?;
//! b.add_known_host(a.addr()).await?;
//! a.add_known_host(b.addr()).await?;
//! let key = a.put(vec![42u8; 600_000]).await?; // three chunks and a manifest
//! let data = b.get(key).await?;                // fetched from a, verified
//! assert_eq!(data.len(), 600_000);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod fetch;
mod service;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

pub(super) use service::ContentService;

use super::Node;
use crate::content::chunk::DEFAULT_CHUNK_SIZE;
use crate::content::tree::build_into;
use crate::content::Hash;
use crate::error::{Error, Result};
use crate::source::SourceCounts;
use crate::store::Store;

/// Content settings.
#[derive(Debug, Clone)]
pub struct ContentSettings {
    /// Nodes each blob is placed on (the closest to its hash).
    pub replicas: usize,
    /// Bytes per chunk of what this node puts.
    pub chunk_size: usize,
    /// Bytes of blobs the store may hold (own content, replicas, cache).
    pub storage_bytes: u64,
    /// Bytes of replicas one address may push here (twice that per /24 or
    /// /64), until this node restarts.
    pub per_source_bytes: u64,
    /// Blobs fetched or pushed at once.
    pub parallel: usize,
    /// How long one holder has to serve a blob before the next is asked.
    pub holder_timeout: Duration,
}

impl Default for ContentSettings {
    fn default() -> Self {
        ContentSettings {
            replicas: 3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            storage_bytes: 4 << 30,
            per_source_bytes: 256 << 20,
            parallel: 16,
            holder_timeout: Duration::from_secs(5),
        }
    }
}

/// The content state of a node.
pub(crate) struct ContentState {
    pub(crate) settings: ContentSettings,
    pub(crate) store: Arc<Store>,
    /// Replica bytes taken per source address and prefix.
    pub(crate) taken: Mutex<SourceCounts>,
}

impl ContentState {
    pub(crate) fn new(settings: ContentSettings, store: Store) -> Self {
        let per = settings.per_source_bytes;
        ContentState {
            taken: Mutex::new(SourceCounts::new(per, per * 2, 4096)),
            store: Arc::new(store),
            settings,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageUse {
    /// Bytes held.
    pub used: u64,
    /// Bytes allowed.
    pub budget: u64,
}

impl Node {
    pub(crate) fn content(&self) -> &ContentState {
        &self.shared().content
    }

    /// What this node's store holds and may hold.
    pub fn storage(&self) -> StorageUse {
        let store = &self.content().store;
        StorageUse {
            used: store.used(),
            budget: store.budget(),
        }
    }

    /// Stores `data` on the network: chunked, kept here, and every chunk
    /// and manifest pushed to the nodes closest to its hash. Returns the
    /// key (the root manifest's hash) that [`Node::get`] takes.
    pub async fn put(&self, data: impl Into<Bytes>) -> Result<Hash> {
        let data = data.into();
        let (root, blobs) = self.store_locally(data, None).await?;
        self.push_all(&blobs).await;
        Ok(root)
    }

    /// Stores `data` here only (not pushed): chunks and manifests in one
    /// batch, held whole or not at all. Returns the root and every blob.
    pub(crate) async fn store_locally(
        &self,
        data: Bytes,
        name: Option<String>,
    ) -> Result<(Hash, Vec<Hash>)> {
        let state = self.content();
        let store = state.store.clone();
        let chunk_size = state.settings.chunk_size;
        // Refused before anything is written when it cannot fit (manifests
        // add well under 1 %).
        let needed = data.len() as u64 + data.len() as u64 / 512 + 4096;
        let free = store.budget().saturating_sub(store.used());
        if needed > free {
            return Err(Error::StorageFull { needed, free });
        }
        tokio::task::spawn_blocking(move || {
            let mut batch = store.batch()?;
            let mut blobs = Vec::new();
            let summary = build_into(&data[..], chunk_size, name, Vec::new(), |hash, bytes| {
                blobs.push(hash);
                batch.put(hash.0, bytes)
            })?;
            batch.finish(&summary.root.0, summary.size)?;
            Ok((summary.root, blobs))
        })
        .await
        .map_err(|e| Error::Storage(format!("store task: {e}")))?
    }

    /// Fetches the content under `key` (or reads it here), verified.
    pub async fn get(&self, key: Hash) -> Result<Bytes> {
        let mut out = Vec::new();
        self.fetch_tree(key, |chunk| {
            out.extend_from_slice(&chunk);
            Ok(())
        })
        .await?;
        Ok(out.into())
    }
}
