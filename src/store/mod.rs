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

/// How long an open waits for sled's file lock to be released (see [`open_db`]).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether sled refused to open because another handle holds the database's file lock. sled says so only in its
/// message (an `io::ErrorKind::Other` with this text, sled 0.34 `config.rs`).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens (or creates) a sled database in `dir`. sled's page cache is capped (sled issue 1410: large RSS after
/// opening a large database), and writes reach disk at least every 500 ms. `what` names the store in errors.
///
/// A database dropped in this process releases its file lock only when sled's background flusher has let go of it,
/// a moment later; a reopen at once (the cache or outbox reopening after a failed write, a migration) found the lock
/// held under load and failed. So the open waits for the lock, up to [`LOCK_WAIT`] (sled's own tests block on it for
/// the same reason); a lock another process holds for longer is still an error.
pub(crate) fn open_db(dir: &Path, what: &'static str) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    let opened = loop {
        let r = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open();
        match r {
            Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            r => break r,
        }
    };
    opened.map_err(|e| match e {
        sled::Error::Io(io) if space::is_disk_full(&io) => StoreError::DiskFull {
            what,
            dir: dir.to_path_buf(),
        },
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Unreadable {
            path: dir.to_path_buf(),
            message: e.to_string(),
        },
        e => StoreError::Open {
            path: dir.to_path_buf(),
            message: e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    /// An open waits for a lock its holder lets go of soon (a database dropped a moment ago), and refuses, with the
    /// store named, one held on past the wait.
    #[test]
    fn an_open_waits_for_a_lock_released_soon_and_refuses_one_held_on() {
        let dir = tempfile::tempdir().unwrap();
        let held = super::open_db(dir.path(), "test store").unwrap();
        let holder = std::thread::spawn(move || {
            // The holder lets go a moment after the second open began (the scenario, not a synchronisation).
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let reopened = super::open_db(dir.path(), "test store");
        holder.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());

        let held = reopened.unwrap();
        let t = std::time::Instant::now();
        let refused = super::open_db(dir.path(), "test store");
        assert!(
            matches!(refused, Err(super::StoreError::Open { .. })),
            "{:?}",
            refused.err()
        );
        assert!(t.elapsed() >= super::LOCK_WAIT);
        drop(held);
    }

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
