//! A sled database that a failed write closes and that is reopened once there is room: what the cache and the
//! outbox share. sled keeps its first I/O error until the database is opened again, so after a failed write the only
//! way back is to drop every handle and open anew; callers hold the handle only for one operation, so closing is
//! dropping the one kept here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::space::{DiskAlarm, FreeSpace};
use super::StoreError;
use crate::wire::status::{StoreHealth, StoreName};

/// What [`Closable::flush`] needs of a database.
pub(super) trait Database {
    fn sled(&self) -> &sled::Db;
}

pub(super) struct Closable<T> {
    dir: PathBuf,
    db: RwLock<Option<Arc<T>>>,
    alarm: DiskAlarm,
    space: FreeSpace,
    /// Free bytes below which nothing new is written (and a closed database is not reopened).
    keep_free: u64,
}

impl<T> Closable<T> {
    /// Closed until [`Closable::reopen`].
    pub(super) fn new(store: StoreName, dir: &Path, keep_free: u64) -> Closable<T> {
        Closable {
            dir: dir.to_path_buf(),
            db: RwLock::new(None),
            alarm: DiskAlarm::new(store, dir),
            space: FreeSpace::new(dir.parent().unwrap_or(dir)),
            keep_free,
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn alarm(&self) -> &DiskAlarm {
        &self.alarm
    }

    pub(super) fn health(&self) -> StoreHealth {
        self.alarm.health()
    }

    /// The database while it is open.
    pub(super) fn current(&self) -> Option<Arc<T>> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Opens with `open` when closed; `true` when open afterwards. A failure to open raises the alarm.
    pub(super) fn reopen(&self, open: impl FnOnce() -> Result<T, StoreError>) -> bool {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return true;
        }
        match open() {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                true
            }
            Err(e) => {
                self.alarm.failed(e.is_disk_full(), &e.to_string());
                false
            }
        }
    }

    /// Closed, and the filesystem has room to try again (blocking: statvfs).
    pub(super) fn due_for_reopen(&self) -> bool {
        self.current().is_none() && self.space.fresh().is_none_or(|free| free >= self.keep_free)
    }

    /// A database error closes it (sled would repeat the error until reopened); a corrupt value does not.
    pub(super) fn failed(&self, e: &StoreError) {
        if matches!(e, StoreError::Corrupt(_)) {
            return;
        }
        self.alarm.failed(e.is_disk_full(), &e.to_string());
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `Err` (and counted) when the filesystem has less than `keep_free + need` bytes free: a write of `need`
    /// bytes is not tried.
    pub(super) fn check_room(&self, what: &'static str, need: u64) -> Result<(), StoreError> {
        let want = self.keep_free.saturating_add(need);
        match self.space.recent() {
            Some(free) if free < want => {
                self.alarm.failed(
                    true,
                    &format!("{free} bytes free, under the {want} a write here leaves free"),
                );
                Err(StoreError::DiskFull {
                    what,
                    dir: self.dir.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Runs a write on the open database: a failure closes it, a success clears the alarm.
    pub(super) fn write<R>(
        &self,
        db: &T,
        put: impl FnOnce(&T) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let r = put(db).inspect_err(|e| self.failed(e))?;
        self.alarm.succeeded();
        Ok(r)
    }

    /// Forces what is written to disk (blocking; at shutdown); nothing while closed.
    pub(super) fn flush(&self) -> Result<(), StoreError>
    where
        T: Database,
    {
        if let Some(db) = self.current() {
            db.sled().flush()?;
        }
        Ok(())
    }
}
