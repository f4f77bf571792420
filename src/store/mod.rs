//! Durable local state: the only module that imports sled.
//!
//! Three stores, apart so that one failing leaves the others ([`layout`]): the result cache and the outbox are sled
//! databases (sled gives crash-consistent multi-tree transactions, so an entry and its bookkeeping are written
//! together or not at all: a SIGKILL at any instant leaves a database that opens and agrees with itself), the
//! records are one file each. A full disk closes the cache, refuses new hard cases and may take the reserve for the
//! records, and never stops serving ([`space`], [`reserve`]).

pub mod cache;
mod closable;
pub mod layout;
pub mod outbox;
pub mod records;
pub mod reserve;
pub mod space;

use std::path::{Path, PathBuf};

pub use cache::{CacheKey, CachedAnswer, CachedResult, ResultCache, Tier};
pub use layout::{Storage, StorageOptions};
pub use outbox::Outbox;
pub use records::{Faults, Records};
pub use reserve::Reserve;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database at {}: {message} (is another outpost using this state dir?)", path.display())]
    Open { path: PathBuf, message: String },
    #[error("database error: {0}")]
    Db(String),
    /// sled's write failed for lack of space.
    #[error("the disk is full ({0})")]
    DbDiskFull(String),
    #[error("the disk is full: cannot write the {what} in {} (free space on that filesystem)", dir.display())]
    DiskFull { what: &'static str, dir: PathBuf },
    #[error("the {what} in {} is closed after a failed write; it is reopened once the filesystem has room", dir.display())]
    Unavailable { what: &'static str, dir: PathBuf },
    #[error("the device records in {} cannot be opened ({cause}): the agent serves, and its fleet link waits for them", dir.display())]
    RecordsUnavailable { dir: PathBuf, cause: String },
    #[error("cannot read the database at {}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        if space::sled_disk_full(&e) {
            StoreError::DbDiskFull(e.to_string())
        } else {
            StoreError::Db(e.to_string())
        }
    }
}

impl StoreError {
    /// The write failed (or was not tried) for lack of space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DbDiskFull(_) | StoreError::DiskFull { .. } => true,
            StoreError::Io { source, .. } => space::is_disk_full(source),
            _ => false,
        }
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

/// Opens (or creates) a sled database in `dir`. sled's page cache is capped (sled issue 1410: large RSS after
/// opening a large database), and writes reach disk at least every 500 ms. `what` names the store in errors.
pub(crate) fn open_db(dir: &Path, what: &'static str) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(16 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if space::is_disk_full(&io) => StoreError::DiskFull {
                what,
                dir: dir.to_path_buf(),
            },
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
                StoreError::Unreadable {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                }
            }
            e => StoreError::Open {
                path: dir.to_path_buf(),
                message: e.to_string(),
            },
        })
}

#[cfg(test)]
mod tests {
    /// A database dropped and opened again at once, as a migration or a reopen after a failure does: every open
    /// succeeds and sees what the last one wrote.
    #[test]
    fn a_database_reopens_at_once_after_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0u32..20 {
            let db = super::open_db(dir.path(), "test store").unwrap();
            if i > 0 {
                let last = db.get(b"n").unwrap().expect("the last open's write");
                assert_eq!(u32::from_be_bytes(last.as_ref().try_into().unwrap()), i - 1);
            }
            db.insert(b"n", &i.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
    }
}
