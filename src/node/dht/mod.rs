//! The DHT, as a node uses it: [`Node::dht`] gives a [`Dht`] handle for
//! lookups, signed records and provider records over the network. The
//! routes (`butter/dht/*`) and the upkeep (bootstrap, a self-lookup, bucket
//! refresh, republishing) are the DHT service every node runs; the
//! decisions are the sans-io types of [`crate::dht`].
//!
//! ```
//! # async fn run() -> butter::Result<()> {
//! use butter::Node;
//! let local = "127.0.0.1:0".parse().unwrap();
//! let a = Node::builder().listen(local).lan_discovery(false).spawn().await?;
//! let b = Node::builder()
//!     .listen(local)
//!     .lan_discovery(false)
//!     .bootstrap(a.addr())
//!     .spawn()
//!     .await?;
//! // a takes b into its table once b's lookups reach it; here at once.
//! a.add_known_host(b.addr()).await?;
//! // A record signed by b, stored on the nodes closest to its key...
//! let put = b.dht().put_record(b"greeting", b"hello".to_vec()).await?;
//! // ...is read back by anyone with the key.
//! let got = a.dht().get_record(put.key).await?;
//! assert_eq!(got.record.value, b"hello");
//! // Who is b? A lookup finds its address.
//! let found = a.dht().find_node(b.id()).await?;
//! assert_eq!(found.addr.id, b.id());
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod lookups;
pub(crate) mod persist;
mod service;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::Stream;

pub(super) use service::DhtService;

use super::Node;
use crate::addr::{NodeAddr, Target};
use crate::dht::lookup::LookupConfig;
use crate::dht::messages::{
    AddProvider, Store, Stored, ADD_PROVIDER_ROUTE, MAX_CONTACT_ADDRS, STORE_ROUTE,
};
use crate::dht::record::Record;
use crate::dht::store::{ProviderStore, RecordStore, StoreLimits};
use crate::error::{Error, Result};
use crate::identity::NodeId;
use lookups::{Ask, Reply};

/// DHT settings.
#[derive(Debug, Clone)]
pub struct DhtSettings {
    /// Whether this node serves the DHT (answers `butter/dht/*` and may be
    /// taken into others' tables). A guest (one-shot commands) still looks
    /// things up.
    pub serve: bool,
    /// Nodes a lookup converges on, and how many of the closest hold each
    /// record and provider record (Kademlia's k).
    pub k: usize,
    /// Queries in flight per lookup path.
    pub alpha: usize,
    /// Disjoint paths of the lookups that place and read records and
    /// provider records (S/Kademlia); `find_node` runs one.
    pub disjoint_paths: usize,
    /// A query unanswered this long counts as failed.
    pub query_timeout: Duration,
    /// Buckets not touched for this long get a lookup for a random id in them.
    pub refresh_interval: Duration,
    /// How often this node stores its own records and provider records again.
    pub republish_interval: Duration,
    /// How long a record this node publishes lives unless republished.
    pub record_ttl: Duration,
    /// What this node holds for others.
    pub limits: StoreLimits,
    /// Records (and, apart, provided keys) this node publishes at most; as
    /// many as other nodes keep per publisher by default
    /// ([`StoreLimits::per_publisher`]).
    pub max_published: usize,
    /// Nodes to join through on start (verified like any host).
    pub bootstrap: Vec<NodeAddr>,
}

impl Default for DhtSettings {
    fn default() -> Self {
        DhtSettings {
            serve: true,
            k: 20,
            alpha: 3,
            disjoint_paths: 3,
            query_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(600),
            republish_interval: Duration::from_secs(3600),
            record_ttl: Duration::from_secs(24 * 3600),
            limits: StoreLimits::default(),
            max_published: 64,
            bootstrap: Vec::new(),
        }
    }
}

/// The DHT's state in a node: what it holds for others and what it
/// publishes itself.
pub(crate) struct DhtState {
    pub(crate) settings: DhtSettings,
    records: Mutex<RecordStore>,
    providers: Mutex<ProviderStore>,
    published: Mutex<HashMap<NodeId, Record>>,
    provided: Mutex<HashSet<NodeId>>,
    last_seq: AtomicU64,
    /// Something changed since the last snapshot ([`persist`]).
    dirty: std::sync::atomic::AtomicBool,
    /// Whether a lookup for this node's own id was answered since it last
    /// had no known host ([`Dht::joined`]).
    joined: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds since the Unix epoch (record expiry is wall-clock time).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DhtState {
    pub(crate) fn new(settings: DhtSettings) -> Self {
        DhtState {
            records: Mutex::new(RecordStore::new(settings.limits.clone())),
            providers: Mutex::new(ProviderStore::new(settings.limits.clone())),
            published: Default::default(),
            provided: Default::default(),
            last_seq: AtomicU64::new(0),
            dirty: Default::default(),
            joined: tokio::sync::watch::Sender::new(false),
            settings,
        }
    }

    /// The self-lookup was answered (true), or the node is alone again.
    pub(crate) fn set_joined(&self, joined: bool) {
        self.joined
            .send_if_modified(|j| std::mem::replace(j, joined) != joined);
    }

    /// Whether this node announces itself as a provider of `key` already
    /// (renewed with the others every republish interval).
    pub(crate) fn provides(&self, key: &NodeId) -> bool {
        lock(&self.provided).contains(key)
    }

    /// What is held or published changed: the next snapshot writes it.
    pub(crate) fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// A sequence number above every earlier one, also across restarts
    /// (milliseconds of wall-clock time, or one more than the last).
    fn next_seq(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_seq
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    fn lookup_config(&self, paths: usize) -> LookupConfig {
        LookupConfig {
            alpha: self.settings.alpha,
            k: self.settings.k,
            paths,
            timeout: self.settings.query_timeout,
            ..LookupConfig::default()
        }
    }
}

/// What a lookup cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupReport {
    /// Hops from this node to the node that answered (1: a node it knew).
    pub hops: u8,
    /// Queries sent.
    pub queries: usize,
    /// Answers received.
    pub responses: usize,
    /// Queries that failed or timed out.
    pub failures: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// A node found by [`Dht::find_node`].
#[derive(Debug, Clone)]
pub struct FoundNode {
    /// Its id and the addresses it was reached at.
    pub addr: NodeAddr,
    /// What the lookup cost.
    pub report: LookupReport,
}

/// A record found by [`Dht::get_record`].
#[derive(Debug, Clone)]
pub struct FoundRecord {
    /// The record, its signature verified.
    pub record: Record,
    /// What the lookup cost (zero when held locally).
    pub report: LookupReport,
}

/// What [`Dht::put_record`] or [`Dht::provide`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The key (for a record: derived from the publisher and the name).
    pub key: NodeId,
    /// Nodes that took it.
    pub stored: usize,
    /// What finding the closest nodes cost.
    pub report: LookupReport,
}

/// The providers of a key as a lookup finds them ([`Dht::providers`]): a
/// [`Stream`] that ends with the lookup. Dropping it ends the lookup.
pub struct ProviderStream {
    rx: tokio::sync::mpsc::Receiver<NodeAddr>,
}

impl Stream for ProviderStream {
    type Item = NodeAddr;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<NodeAddr>> {
        self.rx.poll_recv(cx)
    }
}

/// The DHT as this node uses it (cheap to clone).
#[derive(Clone)]
pub struct Dht {
    node: Node,
}

impl Node {
    /// The DHT: lookups, records and provider records.
    pub fn dht(&self) -> Dht {
        Dht { node: self.clone() }
    }

    pub(crate) fn dht_state(&self) -> &DhtState {
        &self.shared().dht
    }
}

impl Dht {
    fn state(&self) -> &DhtState {
        self.node.dht_state()
    }

    /// The up to k nodes closest to `target` that answered a lookup,
    /// closest first.
    pub async fn closest(&self, target: NodeId) -> Result<(Vec<NodeAddr>, LookupReport)> {
        self.closest_along(target, 1).await
    }

    /// The up to `n` nodes closest to `target` that answered a lookup
    /// converging on `n` only (a few queries where [`closest`](Self::closest)
    /// asks k): what placing and reading a small value on its `n` holders
    /// needs.
    pub async fn closest_n(
        &self,
        target: NodeId,
        n: usize,
    ) -> Result<(Vec<NodeAddr>, LookupReport)> {
        let config = LookupConfig {
            k: n.max(1),
            ..self.state().lookup_config(1)
        };
        let done = lookups::run(&self.node, target, Ask::Node, config, |_, _| false).await?;
        Ok((done.closest, done.report))
    }

    async fn closest_along(
        &self,
        target: NodeId,
        paths: usize,
    ) -> Result<(Vec<NodeAddr>, LookupReport)> {
        let config = self.state().lookup_config(paths);
        let done = lookups::run(&self.node, target, Ask::Node, config, |_, _| false).await?;
        Ok((done.closest, done.report))
    }

    /// Whether this node has joined the DHT: a lookup for its own id was
    /// answered since it last had no known host. From then on the nodes
    /// closest to it hold it (they took it in when it asked them), so a
    /// lookup for it from anywhere finds it.
    pub fn is_joined(&self) -> bool {
        *self.state().joined.borrow()
    }

    /// Waits until this node [has joined](Self::is_joined) the DHT (at
    /// once if it has); [`Error::Shutdown`] if the node shuts down first,
    /// [`Error::Config`] at once for a node that does not serve the DHT (a
    /// guest asks, is never held, and never joins).
    /// A node with neither a bootstrap node nor a host that finds it waits
    /// until one does: bound the wait with a timeout.
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// let first = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
    /// let second = butter::Node::builder()
    ///     .listen("127.0.0.1:0".parse().unwrap())
    ///     .bootstrap(first.addr())
    ///     .spawn()
    ///     .await?;
    /// second.dht().joined().await?;
    /// // The node it asked holds it now: lookups find it.
    /// let found = first.dht().find_node(second.id()).await?;
    /// assert_eq!(found.addr.id, second.id());
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn joined(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let mut joined = self.state().joined.subscribe();
        let stopped = self.node.shared().tasks.cancelled();
        let serves = self.state().settings.serve;
        async move {
            if !serves {
                return Err(Error::Config(
                    "this node does not serve the DHT (DhtSettings::serve): nobody holds it, it never joins"
                        .into(),
                ));
            }
            tokio::select! {
                r = joined.wait_for(|j| *j) => r.map(|_| ()).map_err(|_| Error::Shutdown),
                _ = stopped => Err(Error::Shutdown),
            }
        }
    }

    /// Looks `id` up: its address, as it answered the lookup (which ends
    /// as soon as it did).
    pub async fn find_node(&self, id: NodeId) -> Result<FoundNode> {
        let config = self.state().lookup_config(1);
        let done = lookups::run(&self.node, id, Ask::Node, config, |from, _| *from == id).await?;
        let report = done.report;
        match done.closest.into_iter().find(|a| a.id == id) {
            Some(addr) => Ok(FoundNode { addr, report }),
            None => Err(Error::NotFound(format!(
                "node {} ({} queries)",
                id.short(),
                report.queries
            ))),
        }
    }

    /// Signs `value` under `name` with this node's key (a sequence number
    /// above any earlier one) and stores it on the k nodes closest to its
    /// key, which is returned (derived from this node's id and `name`:
    /// only this node can replace it). The record is republished while the
    /// node runs.
    pub async fn put_record(&self, name: &[u8], value: Vec<u8>) -> Result<Published> {
        let state = self.state();
        let expires = unix_now().saturating_add(state.settings.record_ttl.as_secs());
        let record = Record::sign(self.node.identity(), name, value, state.next_seq(), expires)
            .map_err(|e| Error::Refused(e.to_string()))?;
        let key = record.key();
        {
            let mut published = lock(&state.published);
            if published.len() >= state.settings.max_published && !published.contains_key(&key) {
                return Err(Error::Busy("records published by this node"));
            }
            published.insert(key, record.clone());
        }
        state.changed();
        self.store_record(record).await
    }

    /// `record` signed again with a new sequence number and expiry (kept as
    /// the one to republish); the old one if signing fails.
    fn resign(&self, record: Record) -> Record {
        let state = self.state();
        let expires = unix_now().saturating_add(state.settings.record_ttl.as_secs());
        match Record::sign(
            self.node.identity(),
            &record.name,
            record.value.clone(),
            state.next_seq(),
            expires,
        ) {
            Ok(again) => {
                lock(&state.published).insert(again.key(), again.clone());
                state.changed();
                again
            }
            Err(_) => record,
        }
    }

    /// Stores `record` (already signed) on the k nodes closest to its key.
    pub(super) async fn store_record(&self, record: Record) -> Result<Published> {
        let key = record.key();
        let state = self.state();
        if state.settings.serve {
            let _ = lock(&state.records).put(
                record.clone(),
                std::net::Ipv6Addr::LOCALHOST.into(),
                unix_now(),
            );
            state.changed();
        }
        self.place(key, STORE_ROUTE, &Store { record }).await
    }

    /// The record under `key`: held here, or found by a lookup along
    /// disjoint paths (every record's signature and key are checked; a
    /// forged or stale one counts as a failed answer).
    pub async fn get_record(&self, key: NodeId) -> Result<FoundRecord> {
        let state = self.state();
        if let Some(record) = lock(&state.records).get(&key, unix_now()).cloned() {
            return Ok(FoundRecord {
                record,
                report: LookupReport::default(),
            });
        }
        let config = state.lookup_config(state.settings.disjoint_paths);
        let mut found: Option<Record> = None;
        let done = lookups::run(&self.node, key, Ask::Value, config, |_, reply| {
            if let Reply::Record(r) = reply {
                if found.as_ref().is_none_or(|f| r.seq > f.seq) {
                    found = Some(r.clone());
                }
                return true;
            }
            false
        })
        .await?;
        match found {
            Some(record) => Ok(FoundRecord {
                record,
                report: done.report,
            }),
            None => Err(Error::NotFound(format!(
                "record {} ({} queries)",
                key.short(),
                done.report.queries
            ))),
        }
    }

    /// Announces that this node holds the content of `key`: a provider
    /// record on the k nodes closest to it (renewed while the node runs).
    pub async fn provide(&self, key: NodeId) -> Result<Published> {
        let state = self.state();
        {
            let mut provided = lock(&state.provided);
            if provided.len() >= state.settings.max_published && !provided.contains(&key) {
                return Err(Error::Busy("keys provided by this node"));
            }
            provided.insert(key);
        }
        state.changed();
        self.announce(key).await
    }

    pub(super) async fn announce(&self, key: NodeId) -> Result<Published> {
        let state = self.state();
        let me = self.node.addr();
        let addrs: Vec<_> = me.addrs.iter().copied().take(MAX_CONTACT_ADDRS).collect();
        if state.settings.serve {
            let _ = lock(&state.providers).add(
                key,
                me.id,
                &addrs,
                std::net::Ipv6Addr::LOCALHOST.into(),
                unix_now(),
            );
            state.changed();
        }
        self.place(key, ADD_PROVIDER_ROUTE, &AddProvider { key, addrs })
            .await
    }

    /// Finds the k nodes closest to `key` (along disjoint paths) and sends
    /// each `request` on `route`; counts who took it.
    async fn place<Req: serde::Serialize + Sync>(
        &self,
        key: NodeId,
        route: &str,
        request: &Req,
    ) -> Result<Published> {
        let state = self.state();
        let (closest, report) = self
            .closest_along(key, state.settings.disjoint_paths)
            .await?;
        let calls = closest.into_iter().map(|addr| {
            let node = &self.node;
            async move {
                tokio::time::timeout(
                    state.settings.query_timeout,
                    node.call_typed::<_, Stored>(Target::Addr(addr), route, request),
                )
                .await
            }
        });
        let stored = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(_))))
            .count();
        Ok(Published {
            key,
            stored,
            report,
        })
    }

    /// The nodes that say they hold the content of `key`, as a lookup along
    /// disjoint paths finds them (each once; the stream ends with the
    /// lookup, or once [`MAX_PROVIDERS`](crate::dht::messages::MAX_PROVIDERS)
    /// were found). Dropping the stream ends the lookup.
    pub fn providers(&self, key: NodeId) -> ProviderStream {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::dht::messages::MAX_PROVIDERS);
        let dht = self.clone();
        self.node.shared().tasks.spawn(async move {
            let state = dht.state();
            let mut seen = HashSet::new();
            if state.settings.serve {
                let held = lock(&state.providers).get(&key, usize::MAX, unix_now());
                for p in held {
                    if seen.insert(p.id) && tx.send(p).await.is_err() {
                        return;
                    }
                }
            }
            let config = state.lookup_config(state.settings.disjoint_paths);
            let _ = lookups::run(&dht.node, key, Ask::Providers, config, |_, reply| {
                if let Reply::Providers(list) = reply {
                    for p in list {
                        if seen.len() >= crate::dht::messages::MAX_PROVIDERS {
                            return true;
                        }
                        if seen.insert(p.id) && tx.try_send(p.clone()).is_err() {
                            return true;
                        }
                    }
                }
                tx.is_closed() || seen.len() >= crate::dht::messages::MAX_PROVIDERS
            })
            .await;
        });
        ProviderStream { rx }
    }
}
