//! Small named values beside the blobs: snapshots of state a node keeps
//! across restarts (the DHT's records and provider records). Each value is
//! replaced whole in one transaction, so a crash leaves the previous
//! snapshot or the new one, never a mix. Not counted in the blob budget:
//! what goes in is bounded by its owner (the DHT store's limits).
//!
//! ```
//! # fn main() -> butter::Result<()> {
//! let store = butter::store::Store::in_memory(1 << 20)?;
//! assert_eq!(store.get_state("dht")?, None);
//! store.put_state("dht", b"snapshot")?;
//! assert_eq!(store.get_state("dht")?.as_deref(), Some(&b"snapshot"[..]));
//! # Ok(()) }
//! ```

use redb::{ReadableDatabase, TableDefinition};

use super::{db, Store};
use crate::error::Result;

/// Named values.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

impl Store {
    /// Replaces the value `name` (one durable transaction).
    pub fn put_state(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(STATE).map_err(db)?;
            t.insert(name, bytes).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// The value `name`, if one was put.
    pub fn get_state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        Ok(t.get(name).map_err(db)?.map(|v| v.value().to_vec()))
    }
}
