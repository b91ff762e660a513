//! The persistent store: blobs (chunks and manifests, by their 32-byte
//! hash) in a redb database in the node's data dir, under a byte budget.
//!
//! - Every write is a transaction: a blob is stored whole or not at all,
//!   and the bytes used are counted in the same transaction, so the count
//!   survives a crash exactly.
//! - An item written in several transactions (a large file) is a
//!   [`Batch`]: the blobs it adds (or finds that another unfinished batch
//!   added) are listed as pending until [`Batch::finish`] marks the item's
//!   root as held and its blobs as kept; a batch that never finished (an
//!   error, or `kill -9`) is rolled back, at once or when the store opens
//!   next: the blobs only it listed go, so an item is either wholly held or
//!   not at all, and no finished item loses a blob to another's rollback.
//! - Writes over the budget fail with [`Error::StorageFull`] before
//!   anything is written.
//!
//! ```
//! # fn main() -> butter::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let store = butter::store::Store::open(dir.path().join("store.redb"), 1 << 20)?;
//! let key = *blake3::hash(b"hello").as_bytes();
//! store.put(&key, b"hello")?;
//! assert_eq!(store.get(&key)?.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(store.used(), 5);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};

mod state;

/// Blob bytes by hash.
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// Items held whole (roots of manifest trees), with their size.
const ROOTS: TableDefinition<&[u8], u64> = TableDefinition::new("roots");
/// Blobs that batches not finished yet added or rely on: (batch id ‖ hash).
const PENDING: TableDefinition<&[u8], ()> = TableDefinition::new("pending");
/// The same, by blob: (hash ‖ batch id).
const PENDING_BY_BLOB: TableDefinition<&[u8], ()> = TableDefinition::new("pending_by_blob");
/// Counters: "used" bytes, "next_batch".
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bytes of the database's page cache.
const CACHE_BYTES: usize = 32 << 20;

/// A 32-byte blob key.
pub type Key = [u8; 32];

fn db(e: impl Into<redb::Error>) -> Error {
    Error::Storage(e.into().to_string())
}

/// The store.
pub struct Store {
    db: Database,
    budget: u64,
    persistent: bool,
    /// Bytes used (mirrors META "used"; updated after each commit).
    used: Mutex<u64>,
    /// Bytes committed without waiting for the disk since the last durable
    /// commit.
    unsynced: std::sync::atomic::AtomicU64,
}

/// Cached bytes committed without waiting for the disk before a durable
/// commit follows.
pub const SYNC_EVERY_BYTES: u64 = 32 << 20;

/// What opening found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unfinished batches rolled back.
    pub batches: u64,
    /// Blobs they had added, removed.
    pub blobs: u64,
}

impl Store {
    /// Opens (or creates) the store at `path` with a budget of `budget`
    /// bytes of blob content, rolling back unfinished batches.
    pub fn open(path: impl AsRef<Path>, budget: u64) -> Result<Store> {
        Ok(Store::open_reporting(path, budget)?.0)
    }

    /// A store in memory (a node without a data dir): the same rules,
    /// nothing kept across restarts.
    pub fn in_memory(budget: u64) -> Result<Store> {
        let database = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db)?;
        let mut store = Store::from_database(database, budget)?.0;
        store.persistent = false;
        Ok(store)
    }

    /// Whether the store is a file (kept across restarts), not memory.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// [`Store::open`], also saying what was rolled back.
    pub fn open_reporting(path: impl AsRef<Path>, budget: u64) -> Result<(Store, Recovery)> {
        if let Some(dir) = path.as_ref().parent() {
            std::fs::create_dir_all(dir)?;
        }
        // redb caches up to 1 GiB by default: a node's memory is the user's.
        let database = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path.as_ref())
            .map_err(db)?;
        Store::from_database(database, budget)
    }

    fn from_database(database: Database, budget: u64) -> Result<(Store, Recovery)> {
        let store = Store {
            db: database,
            budget,
            persistent: true,
            used: Mutex::new(0),
            unsynced: Default::default(),
        };
        let recovery = store.recover()?;
        let used = {
            let tx = store.db.begin_read().map_err(db)?;
            match tx.open_table(META) {
                Ok(t) => t.get("used").map_err(db)?.map_or(0, |v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(db(e)),
            }
        };
        *store.lock() = used;
        Ok((store, recovery))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of blob content held.
    pub fn used(&self) -> u64 {
        *self.lock()
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Rolls back every unfinished batch (after a crash).
    fn recover(&self) -> Result<Recovery> {
        let tx = self.db.begin_write().map_err(db)?;
        let mut recovery = Recovery::default();
        let batches: std::collections::BTreeSet<u64> = {
            let pending = tx.open_table(PENDING).map_err(db)?;
            let mut ids = std::collections::BTreeSet::new();
            for e in pending.iter().map_err(db)? {
                let (k, _) = e.map_err(db)?;
                if let Ok(id) = <[u8; 8]>::try_from(&k.value()[..8.min(k.value().len())]) {
                    ids.insert(u64::from_be_bytes(id));
                }
            }
            ids
        };
        if !batches.is_empty() {
            let mut freed = 0;
            for id in &batches {
                let (n, bytes) = roll_back(&tx, *id)?;
                recovery.blobs += n;
                freed += bytes;
            }
            recovery.batches = batches.len() as u64;
            let mut meta = tx.open_table(META).map_err(db)?;
            let used = meta.get("used").map_err(db)?.map_or(0, |v| v.value());
            meta.insert("used", used.saturating_sub(freed))
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        if recovery.batches > 0 {
            tracing::info!(
                batches = recovery.batches,
                blobs = recovery.blobs,
                "store: rolled back unfinished writes"
            );
        }
        Ok(recovery)
    }

    /// Stores one blob (a no-op if held). Over budget: [`Error::StorageFull`].
    pub fn put(&self, key: &Key, bytes: &[u8]) -> Result<bool> {
        self.write(None, &[(key, bytes)], true).map(|n| n > 0)
    }

    /// Stores a blob kept as a cache (a chunk fetched for a download):
    /// committed without waiting for the disk, made durable with the next
    /// durable commit, at the latest after [`SYNC_EVERY_BYTES`] of such
    /// writes or at [`sync`](Self::sync). A crash loses only cached blobs
    /// not yet synced (fetched again when needed); the store stays
    /// consistent either way. Waiting for the disk on every chunk was what
    /// slowed a download most.
    pub fn put_cached(&self, key: &Key, bytes: &[u8]) -> Result<bool> {
        let added = self.write(None, &[(key, bytes)], false)? > 0;
        let unsynced = self
            .unsynced
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed)
            + bytes.len() as u64;
        if unsynced >= SYNC_EVERY_BYTES {
            self.sync()?;
        }
        Ok(added)
    }

    /// Makes every write so far durable (a no-op when none waits).
    pub fn sync(&self) -> Result<()> {
        if self.unsynced.swap(0, std::sync::atomic::Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let _used = self.lock();
        let tx = self.db.begin_write().map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Writes blobs in one transaction; returns how many were new. With a
    /// batch id, new blobs are listed as pending.
    fn write(&self, batch: Option<u64>, items: &[(&Key, &[u8])], durable: bool) -> Result<usize> {
        let mut used = self.lock();
        let mut tx = self.db.begin_write().map_err(db)?;
        if !durable {
            tx.set_durability(redb::Durability::None).map_err(db)?;
        }
        let mut added = 0;
        let mut grew = 0u64;
        {
            let mut blobs = tx.open_table(BLOBS).map_err(db)?;
            let mut pending = tx.open_table(PENDING).map_err(db)?;
            let mut by_blob = tx.open_table(PENDING_BY_BLOB).map_err(db)?;
            let mut fresh = Vec::new();
            for (key, bytes) in items {
                if blobs.get(key.as_slice()).map_err(db)?.is_none() && !fresh.contains(key) {
                    fresh.push(*key);
                    grew += bytes.len() as u64;
                }
            }
            if *used + grew > self.budget {
                return Err(Error::StorageFull {
                    needed: grew,
                    free: self.budget.saturating_sub(*used),
                });
            }
            for (key, bytes) in items {
                let new = fresh.contains(key) && blobs.get(key.as_slice()).map_err(db)?.is_none();
                if new {
                    blobs.insert(key.as_slice(), *bytes).map_err(db)?;
                    added += 1;
                }
                let Some(id) = batch else { continue };
                // Listed if this batch added it, or if another unfinished
                // batch did (it must not go with that one's rollback while
                // this one relies on it).
                let adopted = !new && pending_elsewhere(&by_blob, key)?;
                if new || adopted {
                    pending
                        .insert(batch_key(id, key).as_slice(), ())
                        .map_err(db)?;
                    by_blob
                        .insert(blob_key(key, id).as_slice(), ())
                        .map_err(db)?;
                }
            }
            let mut meta = tx.open_table(META).map_err(db)?;
            meta.insert("used", *used + grew).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        *used += grew;
        Ok(added)
    }

    /// The blob under `key`. The bytes are the database's own page, not a
    /// copy (they keep it alive while they live).
    pub fn get(&self, key: &Key) -> Result<Option<bytes::Bytes>> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = match tx.open_table(BLOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        Ok(table
            .get(key.as_slice())
            .map_err(db)?
            .map(|v| bytes::Bytes::from_owner(Page(v))))
    }

    /// Whether the blob under `key` is held.
    pub fn has(&self, key: &Key) -> Result<bool> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = match tx.open_table(BLOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(db(e)),
        };
        Ok(table.get(key.as_slice()).map_err(db)?.is_some())
    }

    /// Whether each blob of `keys` is held (one read transaction).
    pub fn has_each(&self, keys: &[Key]) -> Result<Vec<bool>> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = match tx.open_table(BLOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![false; keys.len()]),
            Err(e) => return Err(db(e)),
        };
        keys.iter()
            .map(|k| Ok(table.get(k.as_slice()).map_err(db)?.is_some()))
            .collect()
    }

    /// Removes a blob; returns whether it was held.
    pub fn remove(&self, key: &Key) -> Result<bool> {
        let mut used = self.lock();
        let tx = self.db.begin_write().map_err(db)?;
        let freed = {
            let mut blobs = tx.open_table(BLOBS).map_err(db)?;
            let freed = blobs
                .remove(key.as_slice())
                .map_err(db)?
                .map(|v| v.value().len() as u64);
            if let Some(n) = freed {
                let mut meta = tx.open_table(META).map_err(db)?;
                meta.insert("used", used.saturating_sub(n)).map_err(db)?;
            }
            freed
        };
        tx.commit().map_err(db)?;
        if let Some(n) = freed {
            *used = used.saturating_sub(n);
        }
        Ok(freed.is_some())
    }

    /// Up to `limit` blob keys after `after` (in key order): pages through
    /// the store without holding it all.
    pub fn keys(&self, after: Option<&Key>, limit: usize) -> Result<Vec<Key>> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = match tx.open_table(BLOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db(e)),
        };
        let range = match after {
            Some(k) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(k.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range::<&[u8]>(..),
        }
        .map_err(db)?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, _) = entry.map_err(db)?;
            if let Ok(key) = <Key>::try_from(k.value()) {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Whether the item with root `key` is held whole.
    pub fn holds_item(&self, key: &Key) -> Result<bool> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = match tx.open_table(ROOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(db(e)),
        };
        Ok(table.get(key.as_slice()).map_err(db)?.is_some())
    }

    /// Items held whole: (root, size).
    pub fn items(&self) -> Result<Vec<(Key, u64)>> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = match tx.open_table(ROOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            if let Ok(key) = <Key>::try_from(k.value()) {
                out.push((key, v.value()));
            }
        }
        Ok(out)
    }

    /// Starts writing an item in several transactions.
    pub fn batch(&self) -> Result<Batch<'_>> {
        let tx = self.db.begin_write().map_err(db)?;
        let id = {
            let mut meta = tx.open_table(META).map_err(db)?;
            let id = meta.get("next_batch").map_err(db)?.map_or(0, |v| v.value());
            meta.insert("next_batch", id + 1).map_err(db)?;
            id
        };
        tx.commit().map_err(db)?;
        Ok(Batch {
            store: self,
            id,
            buffered: Vec::new(),
            buffered_bytes: 0,
            finished: false,
        })
    }
}

/// A value read from the database, owned by the bytes made of it.
struct Page(redb::AccessGuard<'static, &'static [u8]>);

impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

/// Bytes a batch buffers before it commits them.
const BATCH_BYTES: usize = 8 << 20;

/// An item being written: blobs go in a few MiB per transaction, listed as
/// pending until [`Batch::finish`]; dropped unfinished, its blobs are
/// removed (and a crash leaves them to be removed when the store opens).
pub struct Batch<'a> {
    store: &'a Store,
    id: u64,
    buffered: Vec<(Key, Vec<u8>)>,
    buffered_bytes: usize,
    finished: bool,
}

impl Batch<'_> {
    /// Adds a blob (written with the next commit).
    pub fn put(&mut self, key: Key, bytes: Vec<u8>) -> Result<()> {
        self.buffered_bytes += bytes.len();
        self.buffered.push((key, bytes));
        if self.buffered_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let items: Vec<(&Key, &[u8])> = self
            .buffered
            .iter()
            .map(|(k, b)| (k, b.as_slice()))
            .collect();
        self.store.write(Some(self.id), &items, true)?;
        self.buffered.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Writes what is buffered and marks `root` (of `size` bytes) as held
    /// whole, in the transaction that clears the batch's pending list.
    pub fn finish(mut self, root: &Key, size: u64) -> Result<()> {
        self.flush()?;
        let tx = self.store.db.begin_write().map_err(db)?;
        {
            let mut roots = tx.open_table(ROOTS).map_err(db)?;
            roots.insert(root.as_slice(), size).map_err(db)?;
            keep(&tx, self.id)?;
        }
        tx.commit().map_err(db)?;
        self.finished = true;
        Ok(())
    }
}

fn batch_key(id: u64, key: &Key) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

fn blob_key(key: &Key, id: u64) -> Vec<u8> {
    let mut k = key.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn pending_elsewhere(by_blob: &redb::Table<'_, &'static [u8], ()>, key: &Key) -> Result<bool> {
    let lo = blob_key(key, 0);
    let hi = blob_key(key, u64::MAX);
    Ok(by_blob
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(db)?
        .next()
        .is_some())
}

/// The blobs batch `id` lists.
fn listed(tx: &redb::WriteTransaction, id: u64) -> Result<Vec<Key>> {
    let pending = tx.open_table(PENDING).map_err(db)?;
    let lo = id.to_be_bytes();
    let hi = (id + 1).to_be_bytes();
    let mut out = Vec::new();
    for e in pending.range(lo.as_slice()..hi.as_slice()).map_err(db)? {
        let (k, _) = e.map_err(db)?;
        if let Ok(key) = <Key>::try_from(&k.value()[8..]) {
            out.push(key);
        }
    }
    Ok(out)
}

/// A finished batch: its blobs are kept for good, whoever else listed them.
fn keep(tx: &redb::WriteTransaction, id: u64) -> Result<()> {
    let keys = listed(tx, id)?;
    let mut pending = tx.open_table(PENDING).map_err(db)?;
    let mut by_blob = tx.open_table(PENDING_BY_BLOB).map_err(db)?;
    for key in keys {
        let lo = blob_key(&key, 0);
        let hi = blob_key(&key, u64::MAX);
        let others: Vec<Vec<u8>> = by_blob
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(db)?
            .map(|e| e.map(|(k, _)| k.value().to_vec()))
            .collect::<std::result::Result<_, _>>()
            .map_err(db)?;
        for b in others {
            let other = u64::from_be_bytes(b[32..40].try_into().unwrap_or([0; 8]));
            pending
                .remove(batch_key(other, &key).as_slice())
                .map_err(db)?;
            by_blob.remove(b.as_slice()).map_err(db)?;
        }
    }
    Ok(())
}

/// An unfinished batch: the blobs only it lists go. Returns (blobs, bytes)
/// removed.
fn roll_back(tx: &redb::WriteTransaction, id: u64) -> Result<(u64, u64)> {
    let keys = listed(tx, id)?;
    let mut pending = tx.open_table(PENDING).map_err(db)?;
    let mut by_blob = tx.open_table(PENDING_BY_BLOB).map_err(db)?;
    let mut blobs = tx.open_table(BLOBS).map_err(db)?;
    let (mut n, mut bytes) = (0, 0);
    for key in keys {
        pending.remove(batch_key(id, &key).as_slice()).map_err(db)?;
        by_blob.remove(blob_key(&key, id).as_slice()).map_err(db)?;
        if pending_elsewhere(&by_blob, &key)? {
            continue;
        }
        if let Some(v) = blobs.remove(key.as_slice()).map_err(db)? {
            n += 1;
            bytes += v.value().len() as u64;
        }
    }
    Ok((n, bytes))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("persistent", &self.persistent)
            .field("budget", &self.budget)
            .field("used", &self.used())
            .finish()
    }
}

impl Drop for Store {
    /// Cached blobs not yet durable are made so (best effort: a failure
    /// only loses cached copies).
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::debug!(error = %e, "store: last sync failed");
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Unfinished: what it wrote goes (best effort; the next open rolls
        // back what this misses).
        let mut used = self.store.lock();
        let Ok(tx) = self.store.db.begin_write() else {
            return;
        };
        let Ok((_, freed)) = roll_back(&tx, self.id) else {
            return;
        };
        let now = used.saturating_sub(freed);
        let ok = tx
            .open_table(META)
            .map_err(db)
            .and_then(|mut m| m.insert("used", now).map(|_| ()).map_err(db))
            .is_ok();
        if ok && tx.commit().is_ok() {
            *used = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: &[u8]) -> Key {
        *blake3::hash(bytes).as_bytes()
    }

    fn blob(i: u32, len: usize) -> (Key, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|j| (i as usize * 7 + j) as u8).collect();
        (key(&bytes), bytes)
    }

    #[test]
    fn blobs_and_the_count_of_bytes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (k, b) = blob(1, 1000);
        {
            let s = Store::open(&path, 1 << 20).unwrap();
            assert!(s.put(&k, &b).unwrap());
            assert!(!s.put(&k, &b).unwrap(), "a second put is a no-op");
            assert_eq!(s.used(), 1000);
        }
        let s = Store::open(&path, 1 << 20).unwrap();
        assert_eq!(s.get(&k).unwrap().unwrap(), b);
        assert_eq!(s.used(), 1000);
        assert!(s.remove(&k).unwrap());
        assert_eq!(s.used(), 0);
        assert!(s.get(&k).unwrap().is_none());
    }

    #[test]
    fn cached_blobs_count_against_the_budget_and_are_durable_after_a_sync_or_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let (k1, b1) = blob(1, 1000);
        let (k2, b2) = blob(2, 1000);
        let (k3, b3) = blob(3, 1000);
        {
            let s = Store::open(&path, 2500).unwrap();
            assert!(s.put_cached(&k1, &b1).unwrap());
            s.sync().unwrap();
            assert!(s.put_cached(&k2, &b2).unwrap());
            assert!(s.has(&k2).unwrap(), "visible before it is durable");
            assert!(matches!(
                s.put_cached(&k3, &b3),
                Err(Error::StorageFull { .. })
            ));
            assert_eq!(s.used(), 2000);
            // Closed without a sync: the close makes it durable.
        }
        let s = Store::open(&path, 2500).unwrap();
        assert_eq!(s.get(&k1).unwrap().unwrap(), b1);
        assert_eq!(s.get(&k2).unwrap().unwrap(), b2);
        assert!(!s.has(&k3).unwrap());
        assert_eq!(s.used(), 2000);
    }

    #[test]
    fn a_write_over_the_budget_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("s.redb"), 2500).unwrap();
        let (k1, b1) = blob(1, 1000);
        let (k2, b2) = blob(2, 1000);
        let (k3, b3) = blob(3, 1000);
        s.put(&k1, &b1).unwrap();
        let err = s
            .write(None, &[(&k2, b2.as_slice()), (&k3, b3.as_slice())], true)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::StorageFull {
                    needed: 2000,
                    free: 1500
                }
            ),
            "{err}"
        );
        assert!(!s.has(&k2).unwrap() && !s.has(&k3).unwrap());
        assert_eq!(s.used(), 1000);
    }

    #[test]
    fn an_unfinished_batch_leaves_nothing_at_once_or_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let blobs: Vec<_> = (0..40).map(|i| blob(i, 300_000)).collect();
        let s = Store::open(&path, 1 << 30).unwrap();
        // Dropped unfinished (an error midway): rolled back at once.
        {
            let mut batch = s.batch().unwrap();
            for (k, b) in &blobs[..20] {
                batch.put(*k, b.clone()).unwrap();
            }
        }
        assert_eq!(s.used(), 0);
        assert!(blobs[..20].iter().all(|(k, _)| !s.has(k).unwrap()));
        // A crash midway (the batch never ends: as `kill -9`), with several
        // commits behind it.
        let mut batch = s.batch().unwrap();
        for (k, b) in &blobs {
            batch.put(*k, b.clone()).unwrap();
        }
        std::mem::forget(batch);
        assert!(s.used() > 0);
        drop(s);
        let (s, recovery) = Store::open_reporting(&path, 1 << 30).unwrap();
        assert_eq!(recovery.batches, 1);
        assert!(recovery.blobs > 0);
        assert_eq!(s.used(), 0);
        assert!(blobs.iter().all(|(k, _)| !s.has(k).unwrap()));
        // A finished batch holds its item whole, across a reopen.
        let mut batch = s.batch().unwrap();
        for (k, b) in &blobs[..3] {
            batch.put(*k, b.clone()).unwrap();
        }
        batch.finish(&blobs[0].0, 900_000).unwrap();
        drop(s);
        let (s, recovery) = Store::open_reporting(&path, 1 << 30).unwrap();
        assert_eq!(recovery, Recovery::default());
        assert!(s.holds_item(&blobs[0].0).unwrap());
        assert!(blobs[..3].iter().all(|(k, _)| s.has(k).unwrap()));
        assert_eq!(s.used(), 900_000);
    }

    #[test]
    fn a_rollback_never_takes_a_blob_a_finished_item_shares() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("s.redb"), 1 << 30).unwrap();
        let shared = blob(9, 9 << 20); // over a batch's buffer: committed at once
        let mut a = s.batch().unwrap();
        a.put(shared.0, shared.1.clone()).unwrap();
        let mut b = s.batch().unwrap();
        b.put(shared.0, shared.1.clone()).unwrap();
        b.finish(&shared.0, shared.1.len() as u64).unwrap();
        drop(a); // fails after b finished
        assert!(s.has(&shared.0).unwrap(), "a finished item lost a blob");
        assert_eq!(s.used(), shared.1.len() as u64);
    }
}
