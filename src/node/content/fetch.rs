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
    /// (this node may be one of them; found by a lookup, the next in line
    /// taking the place of one that fails); returns on how many it now
    /// lives, and on how many it could (fewer in a small network).
    pub(crate) async fn push_blob(&self, hash: Hash) -> (usize, usize) {
        let closest = match self.dht().closest(hash.to_key()).await {
            Ok((closest, _)) => closest,
            Err(e) => {
                // Nobody else to hold it (a network of one, or none
                // reachable): this node, if it serves, is the one holder.
                tracing::debug!(blob = %hash.short(), error = %e, "no node to push to");
                let here = usize::from(self.dht_state().settings.serve);
                return (here, here);
            }
        };
        let candidates = closest.into_iter().map(|a| (a, None)).collect();
        let (placed, wanted, _) = self.place_blob(hash, candidates).await;
        (placed, wanted)
    }

    /// A repair: the blob brought back onto the `replicas` closest live
    /// nodes to its hash. The candidates come from this node's own table
    /// (a holder is near the hash, and a table knows its neighbourhood
    /// best; a lookup only if the table is too small), nearest first; each
    /// is asked whether it holds the blob already (then nothing is sent),
    /// with a timeout of a few of its round trips: one that does not answer
    /// is suspected (checked at once) and the next candidate takes its
    /// place. Returns whether the blob is on all the holders there are, and
    /// the bytes sent.
    pub(crate) async fn repair_blob(&self, hash: Hash) -> (bool, u64) {
        let r = self.content().settings.replicas;
        let key = hash.to_key();
        let liveness = self.members().settings.liveness_timeout;
        let mut candidates: Vec<_> = self
            .members()
            .closest_hosts(&key, 2 * r)
            .into_iter()
            .map(|h| {
                let ask = crate::node::neighbours::check_timeout(h.rtt, liveness);
                (h.addr, Some(ask))
            })
            .collect();
        if candidates.len() < r {
            if let Ok((found, _)) = self.dht().closest(key).await {
                candidates = found.into_iter().map(|a| (a, Some(liveness))).collect();
            }
        }
        let (placed, wanted, sent) = self.place_blob(hash, candidates).await;
        if sent > 0 {
            self.counters().repairs.fetch_add(1, Ordering::Relaxed);
            self.counters()
                .repair_bytes
                .fetch_add(sent, Ordering::Relaxed);
            tracing::debug!(blob = %hash.short(), holders = placed, bytes = sent, "repaired");
        }
        (placed >= wanted, sent)
    }

    /// Puts a held blob on the `replicas` nearest of `candidates` (any
    /// order) that take it, this node counting as one if it is among them:
    /// in waves of as many as holders are missing, nearest first, until
    /// enough hold it or none is left. A candidate with an ask timeout is
    /// asked first whether it holds the blob. Returns (holders now, holders
    /// possible, bytes sent).
    async fn place_blob(
        &self,
        hash: Hash,
        mut candidates: Vec<(crate::addr::NodeAddr, Option<std::time::Duration>)>,
    ) -> (usize, usize, u64) {
        let state = self.content();
        let store = state.store.clone();
        let Ok(Ok(Some(bytes))) = tokio::task::spawn_blocking(move || store.get(&hash.0)).await
        else {
            return (0, 0, 0);
        };
        let r = state.settings.replicas;
        let key = hash.to_key();
        let me = self.id();
        candidates.retain(|(a, _)| a.id != me);
        candidates.sort_by_key(|(a, _)| crate::peers::table::distance(&a.id, &key));
        candidates.truncate(2 * r);
        let mine = crate::peers::table::distance(&me, &key);
        let closer_than_me = candidates
            .iter()
            .filter(|(a, _)| crate::peers::table::distance(&a.id, &key) < mine)
            .count();
        // (A guest leaves: it never counts as a holder.)
        let here = usize::from(self.dht_state().settings.serve && closer_than_me < r);
        let wanted = (here + candidates.len()).min(r);
        let mut body = Vec::with_capacity(32 + bytes.len());
        body.extend_from_slice(&hash.0);
        body.extend_from_slice(&bytes);
        let body = bytes::Bytes::from(body);
        let mut placed = here;
        let mut sent = 0u64;
        let mut next = candidates.into_iter();
        while placed < wanted {
            let wave: Vec<_> = next.by_ref().take(wanted - placed).collect();
            if wave.is_empty() {
                break;
            }
            let tries = wave
                .into_iter()
                .map(|(addr, ask)| self.hand_blob(addr, hash, body.clone(), ask));
            for bytes in futures_util::future::join_all(tries)
                .await
                .into_iter()
                .flatten()
            {
                placed += 1;
                sent += bytes;
            }
        }
        (placed, wanted, sent)
    }

    /// One target: asked whether it holds `hash` (if there is an `ask`
    /// timeout), sent `body` if not. `Some(bytes sent)` once it holds the
    /// blob; `None` if it did not answer (then it is suspected) or refused.
    async fn hand_blob(
        &self,
        addr: crate::addr::NodeAddr,
        hash: Hash,
        body: bytes::Bytes,
        ask: Option<std::time::Duration>,
    ) -> Option<u64> {
        let id = addr.id;
        let target = Target::Addr(addr);
        if let Some(ask) = ask {
            let held = self.call(target.clone(), HAS_ROUTE, hash.0.to_vec());
            match tokio::time::timeout(ask, held).await {
                Ok(Ok(reply)) if reply.first() == Some(&1) => return Some(0),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = %id.short(), error = %e, "holder check failed");
                    self.members().suspect(&id);
                    return None;
                }
                Err(_) => {
                    tracing::debug!(peer = %id.short(), timeout = ?ask, "holder check timed out");
                    self.members().suspect(&id);
                    return None;
                }
            }
        }
        let sent = body.len() as u64;
        let timeout = self.content().settings.holder_timeout;
        let put = tokio::time::timeout(timeout, self.call(target, PUT_ROUTE, body));
        match put.await {
            Ok(Ok(_)) => {
                self.counters().blobs_pushed.fetch_add(1, Ordering::Relaxed);
                Some(sent)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %id.short(), error = %e, "blob push failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %id.short(), "blob push timed out");
                None
            }
        }
    }

    /// One blob, verified: from the store, or from the closest holder that
    /// serves bytes with the right hash (kept here afterwards, as a cache).
    /// As part of `item`'s fetch, the nodes that announced the whole item
    /// are asked when every closest holder fails. Says whether the blob was
    /// held here already.
    pub(crate) async fn fetch_blob_in(
        &self,
        hash: Hash,
        item: Option<&ItemFetch>,
    ) -> Result<(bytes::Bytes, bool)> {
        let state = self.content();
        let store = state.store.clone();
        if let Ok(Ok(Some(bytes))) = tokio::task::spawn_blocking(move || store.get(&hash.0)).await {
            return Ok((bytes, true));
        }
        let mut asked = Asked::default();
        let mut rest = Vec::new();
        // A table smaller than k most likely holds the whole network (a LAN,
        // a small swarm): its nearest are the holders, asked before a lookup
        // costs a few round trips per blob. A wrong guess costs one "not
        // found" each; the lookup follows.
        let key = hash.to_key();
        let k = self.dht_state().settings.k;
        if self.members().len() < k {
            let near = self.members().closest(&key, state.settings.replicas);
            if let Some(bytes) = self.first_serving(near, &mut asked, hash, item).await {
                return Ok((bytes, false));
            }
        }
        match self.dht().closest(key).await {
            Ok((mut holders, _)) => {
                // The blob lives on the `r` closest; a few more are asked
                // (a newcomer repair has not reached yet), then providers,
                // then the rest of the lookup's answer.
                let first = (2 * state.settings.replicas).max(1);
                rest = holders.split_off(first.min(holders.len()));
                if let Some(bytes) = self.first_serving(holders, &mut asked, hash, item).await {
                    return Ok((bytes, false));
                }
            }
            Err(e) => asked.last = Some(e),
        }
        // The closest holders failed (gone before repair caught up, or
        // wrong bytes): whoever fetched the whole item and announced it.
        if let Some(item) = item {
            let providers = item.providers(self).await.to_vec();
            if let Some(bytes) = self
                .first_serving(providers, &mut asked, hash, Some(item))
                .await
            {
                item.from_providers.fetch_add(1, Ordering::Relaxed);
                return Ok((bytes, false));
            }
        }
        if let Some(bytes) = self.first_serving(rest, &mut asked, hash, item).await {
            return Ok((bytes, false));
        }
        let last = asked.last;
        Err(match last {
            Some(Error::Remote(m)) if m.contains("not found") => {
                Error::NotFound(format!("blob {}", hash.short()))
            }
            Some(e) => e,
            None => Error::NotFound(format!("blob {} (no holder found)", hash.short())),
        })
    }

    /// The blob from the first of `holders` (not asked before, not this
    /// node) that serves it.
    async fn first_serving(
        &self,
        holders: Vec<crate::addr::NodeAddr>,
        asked: &mut Asked,
        hash: Hash,
        item: Option<&ItemFetch>,
    ) -> Option<bytes::Bytes> {
        for holder in holders {
            if holder.id == self.id() || !asked.ids.insert(holder.id) {
                continue;
            }
            match self.fetch_from(holder, hash, item).await {
                Ok(bytes) => return Some(bytes),
                Err(e) => asked.last = Some(e),
            }
        }
        None
    }

    /// One blob from one holder, verified and kept here (as a cache, when
    /// the store is on disk); a holder serving wrong bytes is reported and
    /// loses standing.
    async fn fetch_from(
        &self,
        holder: crate::addr::NodeAddr,
        hash: Hash,
        item: Option<&ItemFetch>,
    ) -> Result<bytes::Bytes> {
        let state = self.content();
        let id = holder.id;
        let answer = tokio::time::timeout(
            state.settings.holder_timeout,
            self.call(Target::Addr(holder), GET_ROUTE, hash.0.to_vec()),
        )
        .await
        .map_err(|_| Error::Timeout("a holder of a blob"))??;
        if let Err(e) = verify(&hash, &answer) {
            self.counters().blobs_bad.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %id.short(), blob = %hash.short(), "a holder served wrong bytes");
            self.members().call_failed(&id);
            return Err(e);
        }
        self.counters()
            .blobs_fetched
            .fetch_add(1, Ordering::Relaxed);
        // Kept as a cache (and so a fetch that starts again need not fetch
        // it twice) when the store is on disk; a full store simply does not
        // keep it, and a store in memory never does (a large fetch would
        // fill memory).
        let mut kept = false;
        if state.store.is_persistent() {
            let store = state.store.clone();
            let keep = answer.clone();
            kept = matches!(
                tokio::task::spawn_blocking(move || store.put_cached(&hash.0, &keep)).await,
                Ok(Ok(_))
            );
        }
        if !kept {
            if let Some(item) = item {
                item.all_kept.store(false, Ordering::Relaxed);
            }
        }
        Ok(answer)
    }

    /// Walks the tree under `root`, handing `each` every chunk in order
    /// with whether it was held here already (many fetched at once, one
    /// leaf manifest at a time).
    pub(crate) async fn fetch_tree<F>(
        &self,
        item: &ItemFetch,
        each: impl FnMut(bytes::Bytes, bool) -> F,
    ) -> Result<Manifest>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let top = Manifest::decode(&self.fetch_blob_in(item.root, Some(item)).await?.0)?;
        self.walk_tree(item, top, each).await
    }

    /// [`fetch_tree`](Self::fetch_tree) from its root manifest, fetched
    /// already.
    pub(crate) async fn walk_tree<F>(
        &self,
        item: &ItemFetch,
        top: Manifest,
        mut each: impl FnMut(bytes::Bytes, bool) -> F,
    ) -> Result<Manifest>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let parallel = self.content().settings.parallel.max(1);
        // Depth first, children in order: (manifest, next child).
        let mut stack: Vec<(std::sync::Arc<Manifest>, usize)> =
            vec![(std::sync::Arc::new(top.clone()), 0)];
        while let Some((m, i)) = stack.pop() {
            match &m.entries {
                Entries::Chunks(chunks) => {
                    let mut fetched = stream::iter(chunks.iter().copied())
                        .map(|h| self.fetch_blob_in(h, Some(item)))
                        .buffered(parallel);
                    while let Some(chunk) = fetched.next().await {
                        let (bytes, local) = chunk?;
                        each(bytes, local).await?;
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
                    let sub =
                        Manifest::decode(&self.fetch_blob_in(child.hash, Some(item)).await?.0)?;
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

/// Who a blob was asked of during one fetch, and the last failure.
#[derive(Default)]
struct Asked {
    ids: std::collections::HashSet<crate::identity::NodeId>,
    last: Option<Error>,
}

/// Providers asked at most when a blob's closest holders fail.
const MAX_PROVIDERS_ASKED: usize = 20;

/// One item's fetch: its root, the nodes that announced the whole item
/// (looked up once, the first time a blob's closest holders all fail), and
/// whether every blob fetched was kept here (then this node announces
/// itself as a provider of the item).
pub(crate) struct ItemFetch {
    pub(crate) root: Hash,
    providers: tokio::sync::OnceCell<Vec<crate::addr::NodeAddr>>,
    all_kept: std::sync::atomic::AtomicBool,
    /// Blobs that came from providers rather than the closest holders.
    pub(crate) from_providers: std::sync::atomic::AtomicU64,
}

impl ItemFetch {
    pub(crate) fn new(root: Hash) -> Self {
        ItemFetch {
            root,
            providers: Default::default(),
            all_kept: true.into(),
            from_providers: 0.into(),
        }
    }

    /// Whether every blob fetched for it is kept in this node's store.
    pub(crate) fn all_kept(&self) -> bool {
        self.all_kept.load(Ordering::Relaxed)
    }

    async fn providers(&self, node: &Node) -> &[crate::addr::NodeAddr] {
        self.providers
            .get_or_init(|| async {
                node.dht()
                    .providers(self.root.to_key())
                    .take(MAX_PROVIDERS_ASKED)
                    .collect()
                    .await
            })
            .await
    }
}
