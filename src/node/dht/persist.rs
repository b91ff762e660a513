//! What the DHT holds survives a restart: the records and provider records
//! held for others, and what this node publishes and provides itself, are
//! kept as one snapshot in the node's store ([`Store::put_state`]) — written
//! a few seconds after a change and on shutdown — and taken back when the
//! node starts (each entry through the store's bounds again; expired ones
//! and records whose signature no longer verifies are left out).
//!
//! A snapshot rather than a write per request: requests stay off the disk,
//! and the file holds what memory holds, never more. A crash loses at most
//! the changes of the last [`EVERY`].

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{lock, unix_now, DhtState};
use crate::addr::NodeAddr;
use crate::dht::record::Record;
use crate::identity::NodeId;
use crate::store::Store;
use crate::tasks::Tasks;

/// Name of the snapshot in the store.
const NAME: &str = "dht";

/// How long after a change the snapshot is written (at most).
pub(crate) const EVERY: Duration = Duration::from_secs(5);

/// The snapshot (postcard).
#[derive(Serialize, Deserialize, Default)]
struct Snapshot {
    records: Vec<(Record, IpAddr)>,
    providers: Vec<(NodeId, NodeAddr, IpAddr, u64)>,
    published: Vec<Record>,
    provided: Vec<NodeId>,
}

/// What [`restore`] took back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restored {
    pub(crate) records: usize,
    pub(crate) providers: usize,
}

fn snapshot(state: &DhtState) -> Snapshot {
    Snapshot {
        records: lock(&state.records)
            .held()
            .map(|(r, s)| (r.clone(), s))
            .collect(),
        providers: lock(&state.providers)
            .held()
            .map(|(k, a, s, e)| (k, a.clone(), s, e))
            .collect(),
        published: lock(&state.published).values().cloned().collect(),
        provided: lock(&state.provided).iter().copied().collect(),
    }
}

/// Writes the snapshot if something changed since the last one.
fn save(state: &DhtState, store: &Store) {
    save_if_dirty(&state.dirty, store, NAME, || snapshot(state));
}

/// Writes the snapshot `name` (what `make` gives, postcard) if `dirty`
/// says something changed since the last one; a write that fails is tried
/// again at the next round. Shared by every snapshot a node keeps.
pub(crate) fn save_if_dirty<S: Serialize>(
    dirty: &std::sync::atomic::AtomicBool,
    store: &Store,
    name: &str,
    make: impl FnOnce() -> S,
) {
    if !dirty.swap(false, Ordering::AcqRel) {
        return;
    }
    let bytes = match postcard::to_allocvec(&make()) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, name, "cannot encode a snapshot");
            return;
        }
    };
    if let Err(e) = store.put_state(name, &bytes) {
        dirty.store(true, Ordering::Release);
        tracing::warn!(error = %e, name, "cannot keep a snapshot");
    }
}

/// Takes back what the last snapshot held (nothing in a store in memory).
pub(crate) fn restore(state: &DhtState, store: &Store) -> Restored {
    let bytes = match store.get_state(NAME) {
        Ok(Some(b)) => b,
        Ok(None) => return Restored::default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the DHT snapshot");
            return Restored::default();
        }
    };
    let snap: Snapshot = match postcard::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "the DHT snapshot is unreadable: starting empty");
            return Restored::default();
        }
    };
    let now = unix_now();
    let mut restored = Restored::default();
    {
        let mut records = lock(&state.records);
        for (record, source) in snap.records {
            restored.records += usize::from(records.put(record, source, now).is_ok());
        }
    }
    {
        let mut providers = lock(&state.providers);
        for (key, provider, source, expires) in snap.providers {
            restored.providers += usize::from(
                providers
                    .restore(key, &provider, source, expires, now)
                    .is_ok(),
            );
        }
    }
    {
        let mut published = lock(&state.published);
        for record in snap
            .published
            .into_iter()
            .take(state.settings.max_published)
        {
            published.insert(record.key(), record);
        }
    }
    {
        let mut provided = lock(&state.provided);
        provided.extend(snap.provided.into_iter().take(state.settings.max_published));
    }
    // Republished at the next upkeep tick; the next snapshot drops what
    // did not come back.
    state.dirty.store(true, Ordering::Release);
    restored
}

/// Keeps the snapshot current until shutdown, then writes it a last time
/// (a graceful task: awaited on shutdown). Holds the state, not the node.
pub(crate) fn keep(tasks: &Tasks, state: Arc<DhtState>, store: Arc<Store>) {
    keep_with(tasks, state, store, save);
}

/// Runs `save(state, store)` every [`EVERY`] and once more on shutdown
/// (a graceful task), off the async threads; nothing for a store in
/// memory.
pub(crate) fn keep_with<T: Send + Sync + 'static>(
    tasks: &Tasks,
    state: Arc<T>,
    store: Arc<Store>,
    save: fn(&T, &Store),
) {
    if !store.is_persistent() {
        return;
    }
    let cancelled = tasks.cancelled();
    tasks.spawn_graceful(async move {
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = &mut cancelled => break,
            }
            let (state, store) = (state.clone(), store.clone());
            let _ = tokio::task::spawn_blocking(move || save(&state, &store)).await;
        }
        let _ = tokio::task::spawn_blocking(move || save(&state, &store)).await;
    });
}
