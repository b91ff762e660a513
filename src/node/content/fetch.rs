//! Moving blobs: pushing each to the nodes closest to its hash, fetching
//! one from the closest holder that serves the right bytes (a holder that
//! serves wrong bytes is reported and loses standing), and walking a
//! manifest tree with many chunks in flight at once.

use std::sync::atomic::Ordering;

use futures_util::stream::{self, StreamExt};

use super::service::{GET_ROUTE, HAS_ROUTE, PUT_ROUTE};
use crate::addr::Target;
use crate::content::manifest::{Entries, Manifest, MAX_DEPTH};
use crate::content::{verify, Hash};
use crate::error::{Error, Result};
use crate::node::Node;

/// How the blobs of an item were placed.
pub(crate) struct Placement {
    /// Blobs on fewer holders than there were to take them.
    pub(crate) short: Vec<Hash>,
    /// Holders of the least-held blob (0 if any is short).
    pub(crate) fewest: usize,
}

impl Node {
    /// Pushes every blob to its closest nodes (many at once), again for
    /// those that did not reach all `replicas` of them, up to `rounds`
    /// rounds (a short pause between); returns the blobs still short.
    pub(crate) async fn push_all(&self, blobs: &[Hash], rounds: usize) -> Placement {
        let parallel = self.content().settings.parallel.max(1);
        let replicas = self.content().settings.replicas;
        let mut short: Vec<Hash> = blobs.to_vec();
        let fewest = std::sync::atomic::AtomicUsize::new(usize::MAX);
        for round in 0..rounds.max(1) {
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(500 << round.min(4))).await;
            }
            // Short: placed on fewer than the holders there are to take it
            // (a network smaller than `replicas` is no reason to retry).
            short = stream::iter(short)
                .map(|hash| async move { (hash, self.push_blob(hash).await) })
                .buffer_unordered(parallel)
                .filter_map(|(hash, (placed, wanted))| {
                    let is_short = placed < wanted.min(replicas);
                    if !is_short {
                        fewest.fetch_min(placed, Ordering::Relaxed);
                    }
                    std::future::ready(is_short.then_some(hash))
                })
                .collect()
                .await;
            if short.is_empty() {
                break;
            }
        }
        Placement {
            fewest: if short.is_empty() {
                fewest.into_inner().min(replicas)
            } else {
                0
            },
            short,
        }
    }

    /// Pushes one held blob to the `replicas` closest nodes to its hash
    /// (this node may be one of them); returns on how many it now lives,
    /// and on how many it could (fewer in a small network).
    pub(crate) async fn push_blob(&self, hash: Hash) -> (usize, usize) {
        let (placed, wanted, _) = self.push_blob_to_closest(hash, false).await;
        (placed, wanted)
    }

    /// A repair: [`push_blob`](Self::push_blob), asking each target first
    /// whether it holds the blob already (then nothing is sent).
    /// Returns whether the blob is on all the holders there are.
    pub(crate) async fn repair_blob(&self, hash: Hash) -> bool {
        let (placed, wanted, sent) = self.push_blob_to_closest(hash, true).await;
        if sent > 0 {
            self.counters().repairs.fetch_add(1, Ordering::Relaxed);
            self.counters()
                .repair_bytes
                .fetch_add(sent, Ordering::Relaxed);
            tracing::debug!(blob = %hash.short(), holders = placed, bytes = sent, "repaired");
        }
        placed >= wanted.min(self.content().settings.replicas)
    }

    /// Pushes `hash` to its closest nodes: (holders now, holders possible,
    /// bytes sent).
    async fn push_blob_to_closest(&self, hash: Hash, ask_first: bool) -> (usize, usize, u64) {
        let state = self.content();
        let store = state.store.clone();
        let Ok(Ok(Some(bytes))) = tokio::task::spawn_blocking(move || store.get(&hash.0)).await
        else {
            return (0, 0, 0);
        };
        let replicas = state.settings.replicas;
        let closest = match self.dht().closest(hash.to_key()).await {
            Ok((closest, _)) => closest,
            Err(e) => {
                tracing::debug!(blob = %hash.short(), error = %e, "no node to push to");
                return (0, 0, 0);
            }
        };
        // Is this node itself among the closest? Then it is one holder.
        let me = self.id();
        let mine = crate::peers::table::distance(&me, &hash.to_key());
        let closer_than_me = closest
            .iter()
            .filter(|a| crate::peers::table::distance(&a.id, &hash.to_key()) < mine)
            .count();
        // (A guest leaves: it never counts as a holder.)
        let here = usize::from(self.dht_state().settings.serve && closer_than_me < replicas);
        let mut body = Vec::with_capacity(32 + bytes.len());
        body.extend_from_slice(&hash.0);
        body.extend_from_slice(&bytes);
        let body = bytes::Bytes::from(body);
        let timeout = state.settings.holder_timeout;
        let wanted = (here + closest.len()).min(replicas);
        let pushes = closest.into_iter().take(replicas - here).map(|addr| {
            let body = body.clone();
            async move {
                if ask_first {
                    let held = tokio::time::timeout(
                        timeout,
                        self.call(Target::Addr(addr.clone()), HAS_ROUTE, hash.0.to_vec()),
                    )
                    .await;
                    if let Ok(Ok(reply)) = held {
                        if reply.first() == Some(&1) {
                            return (true, 0);
                        }
                    }
                }
                let sent = body.len() as u64;
                let put =
                    tokio::time::timeout(timeout, self.call(Target::Addr(addr), PUT_ROUTE, body));
                let ok = matches!(put.await, Ok(Ok(_)));
                (ok, if ok { sent } else { 0 })
            }
        });
        let results = futures_util::future::join_all(pushes).await;
        let placed = results.iter().filter(|(ok, _)| *ok).count();
        let sent: u64 = results.iter().map(|(_, n)| n).sum();
        self.counters()
            .blobs_pushed
            .fetch_add(placed as u64, Ordering::Relaxed);
        (placed + here, wanted, sent)
    }

    /// One blob, verified: from the store, or from the closest holder that
    /// serves bytes with the right hash (kept here afterwards, as a cache).
    pub(crate) async fn fetch_blob(&self, hash: Hash) -> Result<Vec<u8>> {
        Ok(self.fetch_blob_counted(hash).await?.0)
    }

    /// [`fetch_blob`](Self::fetch_blob), saying whether it was held here.
    pub(crate) async fn fetch_blob_counted(&self, hash: Hash) -> Result<(Vec<u8>, bool)> {
        let state = self.content();
        let store = state.store.clone();
        if let Ok(Ok(Some(bytes))) = tokio::task::spawn_blocking(move || store.get(&hash.0)).await {
            return Ok((bytes, true));
        }
        let (holders, _) = self.dht().closest(hash.to_key()).await?;
        let timeout = state.settings.holder_timeout;
        let mut last = None;
        for holder in holders {
            let id = holder.id;
            let answer = tokio::time::timeout(
                timeout,
                self.call(Target::Addr(holder), GET_ROUTE, hash.0.to_vec()),
            )
            .await;
            match answer {
                Ok(Ok(bytes)) => {
                    if let Err(e) = verify(&hash, &bytes) {
                        // Wrong bytes: reported, and the holder loses standing.
                        self.counters().blobs_bad.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %id.short(), blob = %hash.short(), "a holder served wrong bytes");
                        self.members().call_failed(&id);
                        last = Some(e);
                        continue;
                    }
                    self.counters()
                        .blobs_fetched
                        .fetch_add(1, Ordering::Relaxed);
                    // Kept as a cache (and so a fetch that starts again
                    // need not fetch it twice) when the store is on disk; a
                    // full store simply does not keep it, and a store in
                    // memory never does (a large fetch would fill memory).
                    if state.store.is_persistent() {
                        let store = state.store.clone();
                        let keep = bytes.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || store.put(&hash.0, &keep)).await;
                    }
                    return Ok((bytes.to_vec(), false));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(Error::Timeout("a holder of a blob")),
            }
        }
        Err(match last {
            Some(Error::Remote(m)) if m.contains("not found") => {
                Error::NotFound(format!("blob {}", hash.short()))
            }
            Some(e) => e,
            None => Error::NotFound(format!("blob {} (no holder found)", hash.short())),
        })
    }

    /// Walks the tree under `root`, handing `each` every chunk in order
    /// with whether it was held here already (many fetched at once, one
    /// leaf manifest at a time).
    pub(crate) async fn fetch_tree(
        &self,
        root: Hash,
        mut each: impl FnMut(Vec<u8>, bool) -> Result<()>,
    ) -> Result<Manifest> {
        let top = Manifest::decode(&self.fetch_blob(root).await?)?;
        let parallel = self.content().settings.parallel.max(1);
        // Depth first, children in order: (manifest, next child).
        let mut stack: Vec<(std::sync::Arc<Manifest>, usize)> =
            vec![(std::sync::Arc::new(top.clone()), 0)];
        while let Some((m, i)) = stack.pop() {
            match &m.entries {
                Entries::Chunks(chunks) => {
                    let mut fetched = stream::iter(chunks.iter().copied())
                        .map(|h| self.fetch_blob_counted(h))
                        .buffered(parallel);
                    while let Some(chunk) = fetched.next().await {
                        let (bytes, local) = chunk?;
                        each(bytes, local)?;
                    }
                }
                Entries::Manifests(children) => {
                    let Some(child) = children.get(i).copied() else {
                        continue;
                    };
                    if stack.len() + 1 >= MAX_DEPTH {
                        return Err(Error::Malformed("manifest tree too deep".into()));
                    }
                    stack.push((m.clone(), i + 1));
                    let sub = Manifest::decode(&self.fetch_blob(child.hash).await?)?;
                    if sub.size != child.size || sub.chunk_size != m.chunk_size {
                        return Err(Error::Malformed(
                            "a child manifest does not match its parent".into(),
                        ));
                    }
                    stack.push((std::sync::Arc::new(sub), 0));
                }
            }
        }
        Ok(top)
    }
}
