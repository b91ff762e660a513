//! A query: its sketch's band keys and probes, each looked up (a lookup
//! converging on the key's few holders, then one read), the entries that
//! come back verified (publisher's signature, lifetime, size) and ranked by
//! signature similarity. A holder that fails, times out or answers garbage
//! costs only its own answer: the query goes on with the rest.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::stream::{self, Stream, StreamExt};

use super::{lock, IndexFound, IndexGet, GET_ROUTE};
use crate::addr::{NodeAddr, Target};
use crate::content::Hash;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::node::Node;
use crate::search::entry::{Entry, Subject};
use crate::search::rank::{Rank, Ranker};
use crate::search::signature::Sketch;
use crate::search::store::{spill_key, MAX_SPILL};
use crate::search::term_key;

/// What to search for.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Words.
    Text(String),
    /// An embedding from the caller's model (as given to
    /// [`Document::embedding`](super::Document::embedding)).
    Embedding(Vec<f32>),
    /// A sketch computed already.
    Sketch(Box<Sketch>),
}

impl From<&str> for Query {
    fn from(s: &str) -> Self {
        Query::Text(s.to_string())
    }
}

impl From<String> for Query {
    fn from(s: String) -> Self {
        Query::Text(s)
    }
}

impl From<Vec<f32>> for Query {
    fn from(v: Vec<f32>) -> Self {
        Query::Embedding(v)
    }
}

impl Query {
    /// Its ranking rule (up to `max_terms` words looked up as terms).
    pub fn ranker(&self, max_terms: usize) -> Result<Ranker> {
        match self {
            Query::Text(t) => Ok(Ranker::of_text(t, max_terms)),
            Query::Embedding(v) => Ok(Ranker::of_sketch(
                super::Document::embedding(v.clone()).sketch()?,
            )),
            Query::Sketch(s) => Ok(Ranker::of_sketch(s.as_ref().clone())),
        }
    }
}

/// A content item found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The key to fetch it by.
    pub key: Hash,
    /// Its name, as its publisher gave it.
    pub name: String,
    /// Its keywords.
    pub keywords: Vec<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Similarity to the query: `1 − distance / 64`.
    pub score: f32,
    /// Bits its signature differs from the query's in.
    pub distance: u32,
    /// Its place (lower first): query words it lacks, then distance.
    pub rank: Rank,
    /// Who published it (holds it), as far as the query heard.
    pub holders: Vec<NodeAddr>,
}

/// A peer found by the profile of what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHit {
    /// The peer.
    pub peer: NodeAddr,
    /// Similarity of its profile to the query.
    pub score: f32,
    /// Bits its profile differs from the query's signature in.
    pub distance: u32,
}

/// What a query cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchReport {
    /// Keys looked up (bands, probes and spills).
    pub keys: usize,
    /// Messages sent (lookup queries and reads).
    pub messages: usize,
    /// Entries received that verified.
    pub entries: usize,
    /// Entries received that did not (forged, altered, expired).
    pub refused: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// What [`Node::search`] found, best first.
#[derive(Debug, Clone, Default)]
pub struct Searched {
    /// Content items.
    pub hits: Vec<Hit>,
    /// Peers whose profiles are similar.
    pub peers: Vec<PeerHit>,
    /// What it cost.
    pub report: SearchReport,
}

/// One key's read.
#[derive(Default)]
struct Read {
    /// Entries that verified.
    entries: Vec<Entry>,
    /// Entries that did not.
    refused: usize,
    keys: usize,
    messages: usize,
}

/// Entries taken from one answer at most.
const MAX_PER_ANSWER: usize = 256;

/// Nodes one walk of a key's read asks at most (the table's closest, the
/// closer nodes their answers name, holders passed over for garbage).
const MAX_HOPS: usize = 4;

impl Node {
    /// Searches the index for content (and peers) similar to `query`: the
    /// best `limit` of each, ranked by similarity, with what it cost.
    pub async fn search(&self, query: impl Into<Query>, limit: usize) -> Result<Searched> {
        let ranker = query
            .into()
            .ranker(self.search_state().settings.query_terms)?;
        let mut items: HashMap<[u8; 32], Hit> = HashMap::new();
        let mut peers: HashMap<NodeId, PeerHit> = HashMap::new();
        let report = self
            .search_entries(&ranker, |e| {
                std::future::ready(merge(&ranker, e, &mut items, &mut peers))
            })
            .await;
        let mut hits: Vec<Hit> = items
            .into_values()
            .filter(|h| ranker.is_hit(&h.rank))
            .collect();
        hits.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.key.0.cmp(&b.key.0)));
        hits.truncate(limit);
        let mut peers: Vec<PeerHit> = peers.into_values().collect();
        peers.sort_by(|a, b| a.distance.cmp(&b.distance).then(a.peer.id.cmp(&b.peer.id)));
        peers.truncate(limit);
        Ok(Searched {
            hits,
            peers,
            report,
        })
    }

    /// Peers whose profiles (what they hold) are most similar to `query`,
    /// best first.
    pub async fn similar_peers(
        &self,
        query: impl Into<Query>,
        limit: usize,
    ) -> Result<Vec<PeerHit>> {
        Ok(self.search(query, limit).await?.peers)
    }

    /// Content items similar to `query` as the answers arrive (each item
    /// once, with the holders known then); [`search`](Self::search) waits
    /// for all and ranks them. Dropping the stream ends the query.
    pub fn search_stream(&self, query: impl Into<Query>) -> Result<HitStream> {
        let ranker = query
            .into()
            .ranker(self.search_state().settings.query_terms)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let node = self.clone();
        self.shared().tasks.spawn(async move {
            let mut seen = HashSet::new();
            node.search_entries(&ranker, |e| {
                let hit = match e.subject {
                    Subject::Item { .. } if seen.insert(e.subject) => {
                        hit_of(&ranker, e).filter(|h| ranker.is_hit(&h.rank))
                    }
                    _ => None,
                };
                let tx = tx.clone();
                async move {
                    match hit {
                        // Waits while the reader lags (the query with it).
                        Some(hit) => tx.send(hit).await.is_err(),
                        None => tx.is_closed(),
                    }
                }
            })
            .await;
        });
        Ok(HitStream { rx })
    }

    /// Looks up every key of the query's plan, handing `each` every entry
    /// that verifies; `each` returns `true` to stop (checked per answer).
    async fn search_entries<F>(
        &self,
        ranker: &Ranker,
        mut each: impl FnMut(Entry) -> F,
    ) -> SearchReport
    where
        F: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        let state = self.search_state();
        // Band keys spill when full; term keys do not (a full one is
        // passed over by publishers).
        // A keyword query's hits carry its words: its term keys find them,
        // its bands only order them (no probes).
        let probes = if ranker.is_keyword_query() {
            0
        } else {
            state.settings.probes
        };
        let mut plan: Vec<(NodeId, u8)> = state
            .bands
            .probes(&ranker.sketch, probes)
            .iter()
            .map(|p| (state.bands.key(p.band, p.value), MAX_SPILL))
            .collect();
        let words = if ranker.is_keyword_query() {
            ranker.terms.len()
        } else {
            state.settings.similarity_terms
        };
        plan.extend(ranker.terms.iter().take(words).map(|t| (term_key(t), 0)));
        let mut report = SearchReport::default();
        let mut reads = stream::iter(plan)
            .map(|(key, spills)| self.read_key(key, spills))
            .buffer_unordered(state.settings.parallel.max(1));
        while let Some(read) = reads.next().await {
            report.keys += read.keys;
            report.messages += read.messages;
            report.refused += read.refused;
            for e in read.entries {
                report.entries += 1;
                if each(e).await {
                    report.elapsed = started.elapsed();
                    return report;
                }
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    /// The entries under `key` and up to `spills` of its spills (while
    /// they say they are full), verified. Each is read where the table
    /// says its holders are, going on to the closer nodes an answer names
    /// ([`walk_read`](Self::walk_read)); if that finds no answer, from the
    /// holders a lookup finds. A holder whose answer does not decode or
    /// holds an entry that does not verify is passed over for the next:
    /// it cannot hide the others'.
    async fn read_key(&self, key: NodeId, spills: u8) -> Read {
        let r = self.search_state().settings.replicas.max(1);
        let mut read = Read::default();
        let now = crate::node::dht::unix_now();
        for salt in 0..=spills.min(MAX_SPILL) {
            let at = spill_key(&key, salt);
            read.keys += 1;
            let mut full = None;
            if self.dht_state().settings.serve {
                let found = lock(&self.search_state().store).get(&at, usize::MAX, now);
                if !found.entries.is_empty() {
                    full = Some(found.full);
                    read.entries.extend(found.entries);
                }
            }
            if full.is_none() {
                let start = self.members().closest(&at, r);
                full = self.walk_read(at, start, &mut read, now).await;
            }
            if full.is_none() {
                // No answer on the way (dead holders not yet removed, a
                // table that points nowhere): the holders a lookup finds.
                if let Ok((closest, report)) = self.dht().closest_n(at, r).await {
                    read.messages += report.queries;
                    full = self.walk_read(at, closest, &mut read, now).await;
                }
            }
            if full != Some(true) {
                break;
            }
        }
        read
    }

    /// Reads `at` from the closest of `start`, going on to the closer nodes
    /// an empty answer names, [`MAX_HOPS`] asks at most. The first answer
    /// with entries that all verify, or an empty one naming nobody closer,
    /// ends the walk: `Some(full)`. `None`: no such answer.
    async fn walk_read(
        &self,
        at: NodeId,
        start: Vec<NodeAddr>,
        read: &mut Read,
        now: u64,
    ) -> Option<bool> {
        use crate::peers::table::distance;
        let me = self.id();
        let mut asked = HashSet::new();
        let mut candidates = start;
        for _ in 0..MAX_HOPS {
            candidates.retain(|c| c.id != me && !asked.contains(&c.id));
            candidates.sort_by_key(|c| distance(&c.id, &at));
            candidates.dedup_by_key(|c| c.id);
            if candidates.is_empty() {
                return None;
            }
            let next = candidates.remove(0);
            asked.insert(next.id);
            read.messages += 1;
            let found = match self.get_entries(next.clone(), at).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!(peer = %next.id.short(), error = %e, "index read failed");
                    continue;
                }
            };
            if found.entries.is_empty() {
                if found.closer.is_empty() {
                    return Some(false);
                }
                candidates.extend(found.closer.into_iter().filter_map(|mut c| {
                    c.addrs.retain(|a| !crate::nat::scope::is_unusable(*a));
                    (!c.addrs.is_empty()).then_some(c)
                }));
                continue;
            }
            let before = read.refused;
            for e in found.entries.into_iter().take(MAX_PER_ANSWER) {
                match e.verify(now) {
                    Ok(()) => read.entries.push(e),
                    Err(err) => {
                        read.refused += 1;
                        tracing::debug!(error = %err, "index entry refused");
                    }
                }
            }
            if read.refused == before {
                return Some(found.full);
            }
        }
        None
    }

    async fn get_entries(&self, from: NodeAddr, key: NodeId) -> Result<IndexFound> {
        let timeout = self.dht_state().settings.query_timeout;
        let found = tokio::time::timeout(
            timeout,
            self.call_typed::<_, IndexFound>(Target::Addr(from), GET_ROUTE, &IndexGet { key }),
        )
        .await
        .map_err(|_| Error::Timeout("an index read"))??;
        found.check()?;
        Ok(found)
    }
}

/// The hit an item's entry makes (`None` for a peer's).
fn hit_of(ranker: &Ranker, e: Entry) -> Option<Hit> {
    let Subject::Item { key, size } = e.subject else {
        return None;
    };
    let rank = ranker.rank(e.signature, &e.terms);
    Some(Hit {
        key: Hash(key),
        score: 1.0 - rank.distance as f32 / 64.0,
        distance: rank.distance,
        rank,
        holders: vec![NodeAddr::new(e.publisher, e.addrs)],
        name: e.name,
        keywords: e.keywords,
        size,
    })
}

/// Adds a verified entry to the hits.
fn merge(
    ranker: &Ranker,
    e: Entry,
    items: &mut HashMap<[u8; 32], Hit>,
    peers: &mut HashMap<NodeId, PeerHit>,
) -> bool {
    match e.subject {
        Subject::Item { key, .. } => {
            let Some(new) = hit_of(ranker, e) else {
                return false;
            };
            match items.get_mut(&key) {
                None => {
                    items.insert(key, new);
                }
                Some(hit) => {
                    // Publishers may disagree on the signature: the best
                    // counts.
                    if new.rank < hit.rank {
                        hit.rank = new.rank;
                        hit.distance = new.distance;
                        hit.score = new.score;
                    }
                    let holder = new.holders.into_iter().next();
                    if let Some(holder) = holder {
                        if hit.holders.len() < MAX_HOLDERS
                            && !hit.holders.iter().any(|h| h.id == holder.id)
                        {
                            hit.holders.push(holder);
                        }
                    }
                }
            }
        }
        Subject::Peer => {
            let distance = ranker.sketch.signature.hamming(e.signature);
            let holder = NodeAddr::new(e.publisher, e.addrs);
            peers.entry(holder.id).or_insert(PeerHit {
                peer: holder,
                score: 1.0 - distance as f32 / 64.0,
                distance,
            });
        }
    }
    false
}

/// Holders listed per hit at most.
const MAX_HOLDERS: usize = 16;

/// Hits as a query finds them ([`Node::search_stream`]).
pub struct HitStream {
    rx: tokio::sync::mpsc::Receiver<Hit>,
}

impl Stream for HitStream {
    type Item = Hit;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Hit>> {
        self.rx.poll_recv(cx)
    }
}
