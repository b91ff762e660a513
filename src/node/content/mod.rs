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
mod file_out;
mod repair;
mod service;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

pub(super) use service::ContentService;

use fetch::ItemFetch;
use file_out::FileOut;

use super::Node;
use crate::content::chunk::DEFAULT_CHUNK_SIZE;
use crate::content::manifest::MAX_NAME;
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
    /// /64), until this node restarts; 0: a quarter of `storage_bytes`.
    pub per_source_bytes: u64,
    /// Blobs fetched or pushed at once.
    pub parallel: usize,
    /// How long one holder has to serve a blob before the next is asked.
    pub holder_timeout: Duration,
    /// How often a node pushes again what it should hold (the backstop of
    /// the repairs that follow a holder's departure).
    pub republish_interval: Duration,
    /// Bytes per second repairs and republishing may send.
    pub repair_bytes_per_sec: u64,
    /// Repairs running at once.
    pub repair_parallel: usize,
    /// Repairs waiting at most.
    pub repair_queue: usize,
}

impl Default for ContentSettings {
    fn default() -> Self {
        ContentSettings {
            replicas: 3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            storage_bytes: 4 << 30,
            per_source_bytes: 0,
            parallel: 16,
            holder_timeout: Duration::from_secs(5),
            republish_interval: Duration::from_secs(600),
            repair_bytes_per_sec: 8 << 20,
            repair_parallel: 4,
            repair_queue: 100_000,
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
        let per = match settings.per_source_bytes {
            0 => settings.storage_bytes / 4,
            n => n,
        };
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

    /// Whether this node holds the blob `hash` (a chunk or a manifest).
    pub async fn holds(&self, hash: Hash) -> Result<bool> {
        let store = self.content().store.clone();
        tokio::task::spawn_blocking(move || store.has(&hash.0))
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
    }

    /// Whether this node's store holds each of `hashes` (one read of the
    /// store for all).
    pub async fn holds_each(&self, hashes: Vec<Hash>) -> Result<Vec<bool>> {
        let store = self.content().store.clone();
        tokio::task::spawn_blocking(move || {
            let keys: Vec<_> = hashes.iter().map(|h| h.0).collect();
            store.has_each(&keys)
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
    }

    /// Makes the chunks cached by fetches durable (see
    /// [`Store::put_cached`](crate::store::Store::put_cached)).
    pub(crate) async fn sync_store(&self) {
        let store = self.content().store.clone();
        match tokio::task::spawn_blocking(move || store.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the store could not be synced"),
            Err(e) => tracing::warn!(error = %e, "the store sync task failed"),
        }
    }

    /// Stores `data` on the network: chunked, kept here, and every chunk
    /// and manifest pushed to the nodes closest to its hash. Returns the
    /// key (the root manifest's hash) that [`Node::get`] takes.
    pub async fn put(&self, data: impl Into<Bytes>) -> Result<Hash> {
        let data = data.into();
        let (root, blobs) = self.store_locally(data, None).await?;
        self.push_all(&blobs, 3).await;
        self.announce_item(&ItemFetch::new(root));
        Ok(root)
    }

    /// Stores `data` here only (not pushed): chunks and manifests in one
    /// batch, held whole or not at all. Returns the root and every blob.
    pub(crate) async fn store_locally(
        &self,
        data: Bytes,
        name: Option<String>,
    ) -> Result<(Hash, Vec<Hash>)> {
        let len = data.len() as u64;
        self.store_reader(std::io::Cursor::new(data), len, name)
            .await
    }

    /// Fetches the content under `key` (or reads it here), verified.
    pub async fn get(&self, key: Hash) -> Result<Bytes> {
        let mut out = Vec::new();
        let item = ItemFetch::new(key);
        self.fetch_tree(&item, |chunk, _| {
            out.extend_from_slice(&chunk);
            std::future::ready(Ok(()))
        })
        .await?;
        // Announced as a provider only with the item durable here.
        self.sync_store().await;
        self.announce_item(&item);
        Ok(out.into())
    }

    /// A serving node that holds a whole item it fetched (or shared)
    /// announces itself as a provider of it (in the background, renewed
    /// with its other provider records): fetchers ask providers when the
    /// closest holders of a blob are gone.
    fn announce_item(&self, item: &ItemFetch) {
        let key = item.root.to_key();
        // Once: the republish renews it (a `get` of an item announced
        // already would otherwise place the provider record again).
        if !self.dht_state().settings.serve || !item.all_kept() || self.dht_state().provides(&key) {
            return;
        }
        let node = self.clone();
        self.shared().tasks.spawn(async move {
            if let Err(e) = node.dht().provide(key).await {
                tracing::debug!(error = %e, "announcing a fetched item failed");
            }
        });
    }

    /// Stores the file at `path` on the network, read as a stream (never
    /// whole in memory): like [`Node::put`], named after the file.
    pub async fn put_file(&self, path: impl AsRef<Path>) -> Result<Hash> {
        Ok(self.share_file(path).await?.key)
    }

    /// [`Node::put_file`], saying how the placement went.
    pub async fn share_file(&self, path: impl AsRef<Path>) -> Result<Shared> {
        self.share_file_with(path, Vec::new()).await
    }

    /// [`Node::share_file`] with keywords for the search index (where the
    /// settings index shared files: by name, keywords and, for a text
    /// file, its first 64 KiB).
    pub async fn share_file_with(
        &self,
        path: impl AsRef<Path>,
        keywords: Vec<String>,
    ) -> Result<Shared> {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(MAX_NAME).collect());
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        let (root, blobs) = self
            .store_reader(std::io::BufReader::new(file), len, name)
            .await?;
        let placement = self.push_all(&blobs, 3).await;
        self.announce_item(&ItemFetch::new(root));
        let indexed = if self.search_state().settings.index_shared {
            let doc = crate::node::Document {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                keywords,
                text: text_start(&path).unwrap_or_default(),
                embedding: None,
            };
            match self.index(root, len, &doc).await {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!(error = %e, "shared, but not indexed");
                    None
                }
            }
        } else {
            None
        };
        Ok(Shared {
            key: root,
            size: len,
            blobs: blobs.len(),
            short: placement.short.len(),
            holders: placement.fewest,
            indexed,
        })
    }

    /// Fetches the content under `key` into the file at `path` (written as
    /// `path.part`, renamed when whole and verified). Chunks held here
    /// already (an interrupted fetch, a cache) are not fetched again.
    pub async fn get_to_file(&self, key: Hash, path: impl AsRef<Path>) -> Result<Fetched> {
        self.get_to_file_with(key, path, |_| {}).await
    }

    /// [`Node::get_to_file`], telling `progress` after every chunk.
    pub async fn get_to_file_with(
        &self,
        key: Hash,
        path: impl AsRef<Path>,
        mut progress: impl FnMut(&Fetched) + Send,
    ) -> Result<Fetched> {
        let path = path.as_ref().to_path_buf();
        let mut part = path.clone().into_os_string();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        // The root first: the size and name are known from the start.
        let item = ItemFetch::new(key);
        let root =
            crate::content::Manifest::decode(&self.fetch_blob_in(key, Some(&item)).await?.0)?;
        let mut report = Fetched {
            size: root.size,
            name: root.name.clone(),
            ..Fetched::default()
        };
        // Chunks go to a writer thread (file writes block); the fetch waits
        // (without blocking its thread) when the disk lags. While it waits,
        // its chunks in flight are not read and their senders stall: the
        // queue (8 MiB of default chunks) absorbs the disk's latency spikes
        // (4 chunks measured 0.57x raw quinn from 3 holders, 32 0.62x).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let mut out = FileOut::create(&part, root.size)?;
        let writer = tokio::task::spawn_blocking(move || -> Result<()> {
            while let Some(chunk) = rx.blocking_recv() {
                out.write(&chunk)?;
            }
            out.finish()?;
            Ok(())
        });
        let walked = self
            .walk_tree(&item, root, |chunk, local| {
                report.bytes += chunk.len() as u64;
                if local {
                    report.chunks_held += 1;
                } else {
                    report.chunks_fetched += 1;
                }
                progress(&report);
                let tx = tx.clone();
                async move {
                    tx.send(chunk)
                        .await
                        .map_err(|_| Error::Storage("the file writer stopped".into()))
                }
            })
            .await;
        drop(tx);
        // What was fetched stays fetched, even if this fetch failed and the
        // process ends: a new fetch resumes from it.
        self.sync_store().await;
        let written = writer
            .await
            .map_err(|e| Error::Storage(format!("file writer: {e}")))?;
        let manifest = walked?;
        written?;
        report.size = manifest.size;
        report.name = manifest.name;
        report.chunks_from_providers = item
            .from_providers
            .load(std::sync::atomic::Ordering::Relaxed);
        std::fs::rename(&part, &path)?;
        self.announce_item(&item);
        Ok(report)
    }

    /// Stores what `data` yields (`len` bytes) here only, in one batch.
    pub(crate) async fn store_reader(
        &self,
        data: impl std::io::Read + Send + 'static,
        len: u64,
        name: Option<String>,
    ) -> Result<(Hash, Vec<Hash>)> {
        let state = self.content();
        let store = state.store.clone();
        let chunk_size = state.settings.chunk_size;
        // Refused before anything is written when it cannot fit (manifests
        // add well under 1 %).
        let needed = len + len / 512 + 4096;
        let free = store.budget().saturating_sub(store.used());
        if needed > free {
            return Err(Error::StorageFull { needed, free });
        }
        tokio::task::spawn_blocking(move || {
            let mut batch = store.batch()?;
            let mut blobs = Vec::new();
            let summary = build_into(data, chunk_size, name, Vec::new(), |hash, bytes| {
                blobs.push(hash);
                batch.put(hash.0, bytes)
            })?;
            batch.finish(&summary.root.0, summary.size)?;
            Ok((summary.root, blobs))
        })
        .await
        .map_err(|e| Error::Storage(format!("store task: {e}")))?
    }
}

/// Chunks queued for a fetch's file writer at most.
const WRITE_QUEUE: usize = 32;

/// Bytes of a text file read for its index entry.
const TEXT_INDEXED: usize = 64 * 1024;

/// The first [`TEXT_INDEXED`] bytes of the file at `path` if it is text
/// (UTF-8 without NUL bytes; a character cut at the end is dropped).
fn text_start(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(TEXT_INDEXED);
    std::fs::File::open(path)
        .ok()?
        .take(TEXT_INDEXED as u64)
        .read_to_end(&mut buf)
        .ok()?;
    if buf.contains(&0) {
        return None;
    }
    match std::str::from_utf8(&buf) {
        Ok(s) => Some(s.to_string()),
        Err(e) if e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&buf[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

/// What [`Node::share_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// The key to fetch it by.
    pub key: Hash,
    /// Bytes shared.
    pub size: u64,
    /// Blobs (chunks and manifests) it took.
    pub blobs: usize,
    /// Blobs that did not reach all the holders there are (unreachable
    /// ones, a full store).
    pub short: usize,
    /// Holders of the least-held blob (`replicas` at most; fewer in a
    /// network that small; 0 when a blob reached none).
    pub holders: usize,
    /// How its search index entry was placed (`None`: not indexed).
    pub indexed: Option<crate::node::Indexed>,
}

/// What [`Node::get_to_file`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes written so far (all of them at the end).
    pub bytes: u64,
    /// The content's size.
    pub size: u64,
    /// Its name, if the sharer gave one.
    pub name: Option<String>,
    /// Chunks fetched from the network.
    pub chunks_fetched: u64,
    /// Chunks held here already (not fetched again).
    pub chunks_held: u64,
    /// Blobs fetched from nodes that announced the item (its closest
    /// holders failed) rather than from the closest holders.
    pub chunks_from_providers: u64,
}
