//! Durable local state in sled: the only module that imports sled.
//!
//! sled gives crash-consistent multi-tree transactions, so an entry and its bookkeeping are written together or not
//! at all: a SIGKILL at any instant leaves a database that opens and agrees with itself.

pub mod cache;
pub mod outbox;
pub mod records;

use std::path::{Path, PathBuf};

pub use cache::{CacheKey, CachedAnswer, CachedResult, ResultCache};
pub use outbox::Outbox;
pub use records::{Faults, Records};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {}: {message} (is another outpost using this state dir?)", path.display())]
    Open { path: PathBuf, message: String },
    #[error("database error: {0}")]
    Db(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}

/// The agent's database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the database in `dir`. sled's page cache is capped (sled issue 1410: large RSS after
    /// opening a large database), and writes reach disk at least every 500 ms.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| StoreError::Open {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Store { db })
    }

    pub fn result_cache(
        &self,
        max_entries: u64,
        max_bytes: u64,
    ) -> Result<ResultCache, StoreError> {
        ResultCache::open(&self.db, max_entries, max_bytes)
    }

    /// The outbox of hard cases for the cloud tier.
    pub fn outbox(&self, max_entries: u64, max_bytes: u64) -> Result<Outbox, StoreError> {
        Outbox::open(&self.db, max_entries, max_bytes)
    }

    /// Small durable records (fleet link state).
    pub fn records(&self) -> Result<Records, StoreError> {
        Records::open(&self.db)
    }

    /// Records of their own under `name`, in this database: many simulated agents share one database (one set of
    /// sled threads) yet keep separate command sequences and downloads.
    pub fn records_named(&self, name: &str) -> Result<Records, StoreError> {
        Records::open_named(&self.db, &format!("records/{name}"))
    }

    /// Forces everything written so far to disk (fsync); blocking, so call it off the async threads.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
