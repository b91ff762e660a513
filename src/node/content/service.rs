//! The content routes: `butter/content/get` serves a held blob (request:
//! its 32-byte hash; reply: its bytes), `butter/content/has` says whether
//! one is held (request: its hash; reply: one byte, 1 if held, so a repair
//! sends nothing to a node that has it), `butter/content/put` takes a replica
//! (request: hash ‖ bytes), verified, within the store's budget and the
//! sender's share of it.

use std::sync::atomic::Ordering;

use super::lock;
use crate::content::chunk::MAX_CHUNK_SIZE;
use crate::content::{verify, Hash};
use crate::error::{Error, Result};
use crate::node::service::{Routes, Service, ServiceContext, WeakNode};
use crate::node::Node;

/// Route serving blobs.
pub const GET_ROUTE: &str = "butter/content/get";
/// Route taking replicas.
pub const PUT_ROUTE: &str = "butter/content/put";
/// Route saying whether a blob is held (request: its hash; reply: one byte).
pub const HAS_ROUTE: &str = "butter/content/has";

/// Serves and takes blobs.
pub(crate) struct ContentService;

fn upgrade(node: &WeakNode) -> Result<Node> {
    node.upgrade().ok_or(Error::Shutdown)
}

fn hash_of(body: &[u8]) -> Result<Hash> {
    <[u8; 32]>::try_from(body.get(..32).unwrap_or_default())
        .map(Hash)
        .map_err(|_| Error::Malformed("a blob request starts with its 32-byte hash".into()))
}

/// Runs `f` on the node's store off the async threads (redb blocks).
async fn on_store<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce(&crate::store::Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = node.content().store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
}

impl Service for ContentService {
    fn name(&self) -> &'static str {
        "content"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        let n = routes.node();
        routes.buffered(GET_ROUTE, 32, move |req: crate::Request| {
            let node = upgrade(&n);
            async move {
                let node = node?;
                let hash = hash_of(req.body())?;
                let blob = on_store(&node, move |s| s.get(&hash.0)).await?;
                match blob {
                    Some(bytes) => {
                        node.counters().blobs_served.fetch_add(1, Ordering::Relaxed);
                        Ok(bytes)
                    }
                    None => Err(Error::NotFound(format!("blob {}", hash.short()))),
                }
            }
        });
        let n = routes.node();
        routes.buffered(HAS_ROUTE, 32, move |req: crate::Request| {
            let node = upgrade(&n);
            async move {
                let node = node?;
                let hash = hash_of(req.body())?;
                let held = on_store(&node, move |s| s.has(&hash.0)).await?;
                Ok(vec![u8::from(held)])
            }
        });
        let n = routes.node();
        routes.buffered(
            PUT_ROUTE,
            32 + MAX_CHUNK_SIZE,
            move |req: crate::Request| {
                let node = upgrade(&n);
                async move {
                    let node = node?;
                    let body = req.body();
                    let hash = hash_of(body)?;
                    let bytes = body.slice(32..);
                    verify(&hash, &bytes)?;
                    let state = node.content();
                    let ip = req.remote_addr().ip();
                    let n = bytes.len() as u64;
                    if !lock(&state.taken).try_add(ip, n) {
                        node.counters()
                            .blobs_refused
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(Error::Busy("replicas from this address"));
                    }
                    let store = state.store.clone();
                    let stored = tokio::task::spawn_blocking(move || store.put(&hash.0, &bytes))
                        .await
                        .map_err(|e| Error::Storage(e.to_string()))?;
                    match stored {
                        Ok(new) => {
                            if new {
                                node.counters().blobs_taken.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Held already: it costs the sender nothing.
                                lock(&state.taken).remove(ip, n);
                            }
                            Ok(Vec::new())
                        }
                        Err(e) => {
                            lock(&state.taken).remove(ip, n);
                            node.counters()
                                .blobs_refused
                                .fetch_add(1, Ordering::Relaxed);
                            Err(e)
                        }
                    }
                }
            },
        );
    }

    fn start(&self, ctx: &ServiceContext) {
        ctx.spawn(super::repair::run(ctx.node()));
    }
}
