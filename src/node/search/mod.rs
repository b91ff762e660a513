//! Similarity search as a node uses it: [`Node::index`] publishes what a
//! document is about under the band keys of its signature (on the
//! `replicas` nodes closest to each), [`Node::search`] looks a query's band
//! keys and probes up and ranks what it finds by signature similarity, and
//! [`Node::similar_peers`] does the same for the profiles peers publish of
//! what they hold. Entries are signed by their publishers (a node storing
//! them cannot forge or alter one: a query drops what does not verify),
//! renewed while the node runs, repaired when one of their holders leaves,
//! and expire when nobody renews them. The decisions are the plain types of
//! [`crate::search`].
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! use butter::{Document, Node};
//! let local = "127.0.0.1:0".parse().unwrap();
//! let a = Node::builder().listen(local).lan_discovery(false).spawn().await?;
//! let b = Node::builder().listen(local).lan_discovery(false).bootstrap(a.addr()).spawn().await?;
//! a.add_known_host(b.addr()).await?;
//! let text = "fresh butter from the farm, salted and churned by hand every morning";
//! let key = a.put(text.as_bytes().to_vec()).await?;
//! a.index(key, text.len() as u64, &Document::text(text).named("butter.txt")).await?;
//! // b finds it by similar words.
//! let found = b.search("butter churned by hand on the farm every morning", 10).await?;
//! assert_eq!(found.hits[0].key, key);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

pub(crate) mod persist;
mod query;
mod service;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub(super) use service::SearchService;

use super::Node;
use crate::addr::{NodeAddr, Target};
use crate::content::Hash;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::search::entry::{
    Entry, Fields, Subject, MAX_ADDRS, MAX_KEYWORD, MAX_KEYWORDS, MAX_NAME, MAX_TERMS,
};
use crate::search::signature::Sketch;
use crate::search::store::{spill_key, IndexLimits, IndexStore, MAX_SPILL};
use crate::search::text::Feature;
use crate::search::{term_key, Bands};

pub use query::{Hit, HitStream, PeerHit, Query, SearchReport, Searched};

pub(crate) use crate::search::messages::{
    IndexFound, IndexGet, IndexPut, PutReply, GET_ROUTE, PUT_ROUTE,
};

/// Search settings.
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// Nodes each index entry is placed on (the closest to its key).
    pub replicas: usize,
    /// Probes a query looks up beyond its own bands (each about one
    /// message: a read of the key from the nodes the table says hold it).
    /// 40, with the 8 bands, found 0.97 of the ten nearest documents by
    /// signature with about 50 messages in the search benchmark (10,000
    /// documents on 50 nodes); 16 found 0.88 with 25.
    pub probes: usize,
    /// Words a document is also published under (its name's, its
    /// keywords', then its text's most frequent).
    pub terms_per_doc: usize,
    /// Words of a query looked up as terms; a query of at most this many
    /// distinct words ranks hits by how many of them they carry.
    pub query_terms: usize,
    /// Words of a longer query (a similarity query) looked up as terms
    /// besides its bands and probes (they find documents sharing its most
    /// frequent words).
    pub similarity_terms: usize,
    /// Keys a query looks up at once.
    pub parallel: usize,
    /// How long an entry this node publishes lives unless renewed.
    pub entry_ttl: Duration,
    /// How often this node renews its entries (and its profile).
    pub republish_interval: Duration,
    /// Documents this node keeps indexed (renewed) at most.
    pub max_indexed: usize,
    /// Whether `put_file` / `share_file` index what they share (by the
    /// file's name and, for a text file, its first 64 KiB).
    pub index_shared: bool,
    /// Whether this node publishes a profile of what it indexed (so that
    /// [`Node::similar_peers`] finds it).
    pub publish_profile: bool,
    /// Whether this node stores index entries for others and answers
    /// index reads (a node serving the DHT does by default).
    pub serve: bool,
    /// What this node stores for others.
    pub limits: IndexLimits,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            replicas: 3,
            probes: 40,
            terms_per_doc: 12,
            query_terms: 4,
            similarity_terms: 0,
            parallel: 16,
            entry_ttl: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(1200),
            max_indexed: 10_000,
            index_shared: true,
            publish_profile: true,
            serve: true,
            limits: IndexLimits::default(),
        }
    }
}

/// What a document is about: a name, keywords and text (or the caller's
/// own embedding vector, which then decides the signature alone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    /// A name to show (a file's name); its words count too.
    pub name: String,
    /// Keywords to show; their words count twice.
    pub keywords: Vec<String>,
    /// The text.
    pub text: String,
    /// An embedding from the caller's own model, instead of the words.
    pub embedding: Option<Vec<f32>>,
}

impl Document {
    /// A document of `text`.
    pub fn text(text: impl Into<String>) -> Self {
        Document {
            text: text.into(),
            ..Default::default()
        }
    }

    /// A document known by the caller's embedding of it.
    pub fn embedding(v: Vec<f32>) -> Self {
        Document {
            embedding: Some(v),
            ..Default::default()
        }
    }

    /// With a name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// With keywords.
    pub fn keywords(mut self, keywords: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.keywords = keywords.into_iter().map(Into::into).collect();
        self
    }

    /// Its weighted features (name, keywords twice, text).
    pub fn features(&self) -> Vec<Feature> {
        let mut words = name_words(&self.name);
        for k in &self.keywords {
            let w = crate::search::text::words(k);
            words.extend(w.iter().cloned());
            words.extend(w);
        }
        words.extend(crate::search::text::words(&self.text));
        crate::search::text::features_of_words(&words)
    }

    /// The words it is published under, `max` at most: its name's, its
    /// keywords', then its text's most frequent ones.
    pub fn terms(&self, max: usize) -> Vec<String> {
        use crate::search::text::{top_terms, words};
        let mut out: Vec<String> = Vec::new();
        let mut add = |w: String| {
            if out.len() < max && w.len() <= MAX_KEYWORD && !out.contains(&w) {
                out.push(w);
            }
        };
        for w in name_words(&self.name) {
            add(w);
        }
        for k in &self.keywords {
            for w in words(k) {
                add(w);
            }
        }
        for w in top_terms(&words(&self.text), max) {
            add(w);
        }
        out
    }

    /// Its sketch: of the embedding if there is one, else of the features.
    pub fn sketch(&self) -> Result<Sketch> {
        match &self.embedding {
            Some(v) => Sketch::of_embedding(v).map_err(|e| Error::Malformed(e.to_string())),
            None => Ok(Sketch::of_features(&self.features())),
        }
    }

    /// Name and keywords cut to what an entry carries.
    fn shown(&self) -> (String, Vec<String>) {
        let name = cut(&self.name, MAX_NAME);
        let keywords = self
            .keywords
            .iter()
            .take(MAX_KEYWORDS)
            .map(|k| cut(k, MAX_KEYWORD))
            .collect();
        (name, keywords)
    }
}

/// The words of a name that say something: without a file extension,
/// without words of digits only.
fn name_words(name: &str) -> Vec<String> {
    let stem = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 4 => stem,
        _ => name,
    };
    crate::search::text::words(stem)
        .into_iter()
        .filter(|w| !w.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// What [`Node::index`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Band keys of the signature.
    pub bands: usize,
    /// Of those, keys at least one node took the entry under.
    pub bands_placed: usize,
    /// Term keys the entry went under (up to the settings'
    /// `terms_per_doc`).
    pub terms_placed: usize,
    /// Term keys found full (a word in very many documents says little
    /// about one of them): passed over for the next candidate.
    pub terms_full: usize,
}

/// How one key's placement went.
enum Placed {
    Yes,
    /// Full on every spill.
    Full,
    /// Nobody answered.
    No,
}

/// One document this node keeps indexed.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) sketch: Sketch,
    pub(crate) name: String,
    pub(crate) keywords: Vec<String>,
    pub(crate) terms: Vec<String>,
    pub(crate) size: u64,
    /// Its votes, normalised, in the profile.
    votes: [f32; 64],
}

/// The search state of a node.
pub(crate) struct SearchState {
    pub(crate) settings: SearchSettings,
    bands: Bands,
    /// Entries held for others.
    pub(crate) store: Mutex<IndexStore>,
    /// What this node indexed, by content key.
    published: Mutex<HashMap<Hash, Published>>,
    /// The sum of the published documents' normalised votes.
    profile: Mutex<[f32; 64]>,
    /// The profile signature last published.
    profile_published: Mutex<Option<crate::search::Signature>>,
    /// Told when the profile changed (the renewal task publishes it
    /// shortly after, once for a burst of changes).
    pub(crate) profile_changed: std::sync::Arc<tokio::sync::Notify>,
    /// Something held or indexed changed since the last snapshot.
    pub(crate) dirty: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SearchState {
    pub(crate) fn new(settings: SearchSettings) -> Self {
        let bands = Bands::DEFAULT;
        SearchState {
            store: Mutex::new(IndexStore::new(settings.limits.clone(), bands)),
            bands,
            published: Default::default(),
            profile: Mutex::new([0.0; 64]),
            profile_published: Mutex::new(None),
            profile_changed: Default::default(),
            dirty: Default::default(),
            settings,
        }
    }

    /// What is held or indexed changed: the next snapshot writes it.
    pub(crate) fn changed(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Takes back a document this node indexed (from a snapshot).
    pub(crate) fn restore_indexed(
        &self,
        key: Hash,
        sketch: Sketch,
        name: String,
        keywords: Vec<String>,
        terms: Vec<String>,
        size: u64,
    ) -> bool {
        let mut published = lock(&self.published);
        if published.len() >= self.settings.max_indexed || published.contains_key(&key) {
            return false;
        }
        let votes = normalised_votes(&sketch);
        for (p, v) in lock(&self.profile).iter_mut().zip(votes) {
            *p += v;
        }
        published.insert(
            key,
            Published {
                sketch,
                name,
                keywords,
                terms,
                size,
                votes,
            },
        );
        true
    }

    /// The documents this node indexed.
    pub(crate) fn indexed(&self) -> Vec<(Hash, Published)> {
        lock(&self.published)
            .iter()
            .map(|(k, p)| (*k, p.clone()))
            .collect()
    }

    /// The sketch of this node's profile, if it indexed anything.
    fn profile(&self) -> Option<Sketch> {
        let votes = *lock(&self.profile);
        if lock(&self.published).is_empty() {
            return None;
        }
        Some(Sketch::of_votes(&votes))
    }
}

/// A document's contribution to its publisher's profile: its sketch's
/// votes, scaled so that every document weighs the same.
fn normalised_votes(sketch: &Sketch) -> [f32; 64] {
    let total: f32 = sketch.margins.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut v = [0f32; 64];
    for (i, out) in v.iter_mut().enumerate() {
        let sign = if sketch.signature.0 >> i & 1 == 1 {
            1.0
        } else {
            -1.0
        };
        *out = sign * sketch.margins[i] / total;
    }
    v
}

impl Node {
    pub(crate) fn search_state(&self) -> &SearchState {
        &self.shared().search
    }

    /// Indexes the content under `key` (`size` bytes) as `doc`: an entry
    /// under each band key of its signature, on the nodes closest to each,
    /// renewed while this node runs (until [`unindex`](Self::unindex)).
    pub async fn index(&self, key: Hash, size: u64, doc: &Document) -> Result<Indexed> {
        let sketch = doc.sketch()?;
        let (name, keywords) = doc.shown();
        let state = self.search_state();
        // Candidates: the first that are not too common are published.
        let terms = doc.terms(MAX_TERMS);
        {
            let mut published = lock(&state.published);
            if published.len() >= state.settings.max_indexed && !published.contains_key(&key) {
                return Err(Error::Busy("documents indexed by this node"));
            }
            let votes = normalised_votes(&sketch);
            let mut profile = lock(&state.profile);
            if let Some(old) = published.insert(
                key,
                Published {
                    sketch: sketch.clone(),
                    name: name.clone(),
                    keywords: keywords.clone(),
                    terms: terms.clone(),
                    size,
                    votes,
                },
            ) {
                for (p, o) in profile.iter_mut().zip(old.votes) {
                    *p -= o;
                }
            }
            for (p, v) in profile.iter_mut().zip(votes) {
                *p += v;
            }
        }
        let entry = self.sign_entry(Fields {
            name,
            keywords,
            terms,
            ..Fields::new(Subject::Item { key: key.0, size }, sketch.signature, 0)
        })?;
        state.profile_changed.notify_one();
        state.changed();
        Ok(self.publish_entry(entry).await)
    }

    /// Whether this node holds index entries under `key` (for others or
    /// its own).
    pub fn holds_index_key(&self, key: &NodeId) -> bool {
        !lock(&self.search_state().store)
            .get(key, 1, super::dht::unix_now())
            .entries
            .is_empty()
    }

    /// Stops renewing the entries of `key` (they expire within the entry
    /// lifetime); says whether it was indexed.
    pub fn unindex(&self, key: Hash) -> bool {
        let state = self.search_state();
        let Some(old) = lock(&state.published).remove(&key) else {
            return false;
        };
        let mut profile = lock(&state.profile);
        for (p, o) in profile.iter_mut().zip(old.votes) {
            *p -= o;
        }
        state.profile_changed.notify_one();
        state.changed();
        true
    }

    /// `fields` signed by this node, with its addresses and a fresh
    /// lifetime.
    fn sign_entry(&self, fields: Fields) -> Result<Entry> {
        let ttl = self.search_state().settings.entry_ttl.as_secs().max(1);
        let ttl = ttl.min(crate::search::entry::MAX_LIFETIME_SECS);
        let addrs = self
            .addr()
            .addrs
            .into_iter()
            .take(MAX_ADDRS)
            .collect::<Vec<_>>();
        Entry::sign(
            &self.shared().identity,
            Fields {
                addrs,
                expires: super::dht::unix_now() + ttl,
                ..fields
            },
        )
        .map_err(|e| Error::Malformed(e.to_string()))
    }

    /// Places `entry` under each band key of its signature (spilling
    /// where a key is full) and under the keys of up to `terms_per_doc` of
    /// its terms, in their order, a term whose key is full giving its place
    /// to the next (the network's own measure of how common a word is).
    async fn publish_entry(&self, entry: Entry) -> Indexed {
        let state = self.search_state();
        let bands = state.bands.keys(entry.signature);
        let mut done = Indexed {
            bands: bands.len(),
            bands_placed: 0,
            terms_placed: 0,
            terms_full: 0,
        };
        let placing_bands = futures_util::future::join_all(
            bands
                .into_iter()
                .map(|k| self.place_entry(k, entry.clone(), MAX_SPILL)),
        );
        let placing_terms = async {
            let mut candidates = entry.terms.iter().map(|t| term_key(t));
            let (mut placed, mut full) = (0, 0);
            loop {
                let need = state.settings.terms_per_doc.saturating_sub(placed);
                let wave: Vec<NodeId> = candidates.by_ref().take(need).collect();
                if wave.is_empty() {
                    break;
                }
                let tries = wave
                    .into_iter()
                    .map(|k| self.place_entry(k, entry.clone(), 0));
                for p in futures_util::future::join_all(tries).await {
                    match p {
                        Placed::Yes => placed += 1,
                        Placed::Full => full += 1,
                        Placed::No => {}
                    }
                }
            }
            (placed, full)
        };
        let (bands, (terms, full)) = futures_util::future::join(placing_bands, placing_terms).await;
        done.bands_placed = bands.iter().filter(|p| matches!(p, Placed::Yes)).count();
        done.terms_placed = terms;
        done.terms_full = full;
        done
    }

    /// Puts `entry` under `key` on its closest nodes, spilling to the next
    /// salt (up to `spills`) while they say the key is full.
    async fn place_entry(&self, key: NodeId, entry: Entry, spills: u8) -> Placed {
        let r = self.search_state().settings.replicas.max(1);
        for salt in 0..=spills.min(MAX_SPILL) {
            let at = spill_key(&key, salt);
            let holders = self.index_holders(at, r, &mut 0).await;
            let mut stored = 0;
            let mut full = 0;
            if self.dht_state().settings.serve
                && self.search_state().settings.serve
                && self.should_hold_index(&at, &holders, r)
            {
                let now = super::dht::unix_now();
                match lock(&self.search_state().store).put_own(at, entry.clone(), now) {
                    Ok(()) => stored += 1,
                    Err(crate::search::store::IndexError::KeyFull) => full += 1,
                    Err(_) => {}
                }
            }
            let puts = holders
                .into_iter()
                .take(r)
                .map(|h| self.put_entry(h, at, &entry));
            for reply in futures_util::future::join_all(puts).await {
                match reply {
                    Ok(PutReply::Stored) => stored += 1,
                    Ok(PutReply::Full) => full += 1,
                    Err(_) => {}
                }
            }
            if stored > 0 {
                return Placed::Yes;
            }
            if full == 0 {
                return Placed::No;
            }
        }
        Placed::Full
    }

    /// The `r` nodes closest to `key`: from the table when it knows the
    /// key's region whole (no message), else by a lookup converging on `r`
    /// (its queries added to `messages`).
    pub(crate) async fn index_holders(
        &self,
        key: NodeId,
        r: usize,
        messages: &mut usize,
    ) -> Vec<NodeAddr> {
        if self.members().knows_region(&key) {
            let near = self.members().closest(&key, r);
            if near.len() >= r {
                return near;
            }
        }
        match self.dht().closest_n(key, r).await {
            Ok((closest, report)) => {
                *messages += report.queries;
                closest
            }
            Err(_) => Vec::new(),
        }
    }

    /// Whether this node is among the `r` closest to `key` of itself and
    /// `others`.
    fn should_hold_index(&self, key: &NodeId, others: &[NodeAddr], r: usize) -> bool {
        let ids: Vec<NodeId> = others.iter().map(|a| a.id).collect();
        crate::content::repair::should_hold(&self.id(), key, &ids, r)
    }

    async fn put_entry(&self, to: NodeAddr, key: NodeId, entry: &Entry) -> Result<PutReply> {
        let timeout = self.dht_state().settings.query_timeout;
        tokio::time::timeout(
            timeout,
            self.call_typed::<_, PutReply>(
                Target::Addr(to),
                PUT_ROUTE,
                &IndexPut {
                    key,
                    entry: entry.clone(),
                },
            ),
        )
        .await
        .map_err(|_| Error::Timeout("an index put"))?
    }

    /// Publishes this node's entries again with a fresh lifetime, and its
    /// profile (the renewal task's round).
    pub(crate) async fn republish_index(&self) {
        let state = self.search_state();
        let docs: Vec<(Hash, Published)> = lock(&state.published)
            .iter()
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        for (key, p) in docs {
            let fields = Fields {
                name: p.name,
                keywords: p.keywords,
                terms: p.terms,
                ..Fields::new(
                    Subject::Item {
                        key: key.0,
                        size: p.size,
                    },
                    p.sketch.signature,
                    0,
                )
            };
            if let Ok(entry) = self.sign_entry(fields) {
                self.publish_entry(entry).await;
            }
        }
        self.publish_profile(true).await;
    }

    /// Publishes this node's profile (if it indexed anything and the
    /// settings allow), unless it is the one published last and `renew`
    /// is false.
    pub(crate) async fn publish_profile(&self, renew: bool) -> Option<Indexed> {
        let state = self.search_state();
        if !state.settings.publish_profile || !self.dht_state().settings.serve {
            return None;
        }
        let sketch = state.profile()?;
        {
            let mut last = lock(&state.profile_published);
            if !renew && *last == Some(sketch.signature) {
                return None;
            }
            *last = Some(sketch.signature);
        }
        let entry = self
            .sign_entry(Fields::new(Subject::Peer, sketch.signature, 0))
            .ok()?;
        Some(self.publish_entry(entry).await)
    }
}
