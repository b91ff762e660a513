//! The index survives a restart: the entries a node holds for others and
//! the documents it indexed itself are kept as one snapshot in the node's
//! store (like the DHT's: written a few seconds after a change and on
//! shutdown) and taken back when it starts, every held entry verified and
//! bounded again (expired ones are left out). Its own documents are
//! renewed at the first renewal round after the start.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{lock, SearchState};
use crate::content::Hash;
use crate::identity::NodeId;
use crate::search::entry::Entry;
use crate::search::signature::{Signature, Sketch};
use crate::store::Store;
use crate::tasks::Tasks;

/// Name of the snapshot in the store.
const NAME: &str = "search";

/// A document this node indexed.
#[derive(Serialize, Deserialize)]
struct Doc {
    key: [u8; 32],
    signature: u64,
    margins: Vec<f32>,
    name: String,
    keywords: Vec<String>,
    terms: Vec<String>,
    size: u64,
}

/// The snapshot (postcard).
#[derive(Serialize, Deserialize, Default)]
struct Snapshot {
    held: Vec<(NodeId, Entry, Option<IpAddr>)>,
    indexed: Vec<Doc>,
}

fn snapshot(state: &SearchState) -> Snapshot {
    Snapshot {
        held: lock(&state.store)
            .held()
            .map(|(k, e, s)| (k, e.clone(), s))
            .collect(),
        indexed: state
            .indexed()
            .into_iter()
            .map(|(key, p)| Doc {
                key: key.0,
                signature: p.sketch.signature.0,
                margins: p.sketch.margins.to_vec(),
                name: p.name,
                keywords: p.keywords,
                terms: p.terms,
                size: p.size,
            })
            .collect(),
    }
}

fn save(state: &SearchState, store: &Store) {
    crate::node::dht::persist::save_if_dirty(&state.dirty, store, NAME, || snapshot(state));
}

/// Takes back what the last snapshot held: (entries held for others,
/// documents indexed).
pub(crate) fn restore(state: &SearchState, store: &Store) -> (usize, usize) {
    let bytes = match store.get_state(NAME) {
        Ok(Some(b)) => b,
        Ok(None) => return (0, 0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the index snapshot");
            return (0, 0);
        }
    };
    let snap: Snapshot = match postcard::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "the index snapshot is unreadable: starting empty");
            return (0, 0);
        }
    };
    let now = crate::node::dht::unix_now();
    let mut held = 0;
    {
        let mut index = lock(&state.store);
        for (key, entry, source) in snap.held {
            held += usize::from(index.restore(key, entry, source, now).is_ok());
        }
    }
    let mut indexed = 0;
    for d in snap.indexed {
        let Ok(margins) = <[f32; 64]>::try_from(d.margins) else {
            continue;
        };
        let sketch = Sketch {
            signature: Signature(d.signature),
            margins,
        };
        indexed += usize::from(state.restore_indexed(
            Hash(d.key),
            sketch,
            d.name,
            d.keywords,
            d.terms,
            d.size,
        ));
    }
    // The next snapshot drops what did not come back.
    state.changed();
    (held, indexed)
}

/// Keeps the snapshot current until shutdown, then writes it a last time
/// (a graceful task). Holds the state, not the node.
pub(crate) fn keep(tasks: &Tasks, state: Arc<SearchState>, store: Arc<Store>) {
    crate::node::dht::persist::keep_with(tasks, state, store, save);
}
