//! Free space, and what a store says when the disk is full.
//!
//! A device's disk fills for reasons of its own (a journal, a camera's recordings), and a full disk must not take
//! serving down nor fill the journal further: each store has one [`DiskAlarm`], which logs one sentence when its
//! writes start failing ("the disk is full", with the directory) and one when they succeed again, and in between
//! only counts (`outpost_storage_write_failures_total`, the status's `storage`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::wire::status::{StoreHealth, StoreName, StoreState};

/// Failed writes by store (a counter; the alarm logs only the first of a run).
pub const WRITE_FAILURES: &str = "outpost_storage_write_failures_total";
/// 1 while a store's writes fail, by store.
pub const FAILING: &str = "outpost_storage_failing";
/// Bytes free to the agent on the state dir's filesystem.
pub const FREE_BYTES: &str = "outpost_storage_free_bytes";
/// 1 while the reserve file is held (0 once released for the records).
pub const RESERVE_HELD: &str = "outpost_storage_reserve_held";

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    // The field types differ by target (32-bit on armv7 without LFS), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Why a download or an install is refused before it writes a byte.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("not enough disk in {}: this needs {need} bytes and leaves {keep} free (storage.reserve_bytes and 1 MiB \
             for the device's records), but only {free} are free; free space on that filesystem, or lower \
             storage.reserve_bytes", dir.display())]
    Short {
        dir: PathBuf,
        need: u64,
        keep: u64,
        free: u64,
    },
    #[error("cannot tell how much disk is free in {} ({source}): refused rather than risk filling it; check that \
             the state dir exists on a mounted filesystem", dir.display())]
    Unknown {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses unless the filesystem of `dir` has `need` bytes free and `keep` more. A statvfs that fails refuses too:
/// "don't know" is not room.
pub fn check_room(dir: &Path, need: u64, keep: u64) -> Result<u64, RoomError> {
    let free = free_bytes(dir).map_err(|source| RoomError::Unknown {
        dir: dir.to_path_buf(),
        source,
    })?;
    if free < need.saturating_add(keep) {
        return Err(RoomError::Short {
            dir: dir.to_path_buf(),
            need,
            keep,
            free,
        });
    }
    Ok(free)
}

/// The error says the disk (or the user's quota) is full, as opposed to a failing disk or a bug.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// The same of a sled error (its I/O errors keep the OS error).
pub(super) fn sled_disk_full(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => is_disk_full(io),
        _ => false,
    }
}

/// The free space of a filesystem, asked at most once a second on the request path.
pub struct FreeSpace {
    dir: PathBuf,
    last: Mutex<Option<(std::time::Instant, u64)>>,
}

impl FreeSpace {
    pub fn new(dir: &Path) -> FreeSpace {
        FreeSpace {
            dir: dir.to_path_buf(),
            last: Mutex::new(None),
        }
    }

    /// Free bytes now (`None` when statvfs fails).
    pub fn fresh(&self) -> Option<u64> {
        let free = free_bytes(&self.dir).ok();
        if let Some(f) = free {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now(), f));
        }
        free
    }

    /// Free bytes as of at most a second ago.
    pub fn recent(&self) -> Option<u64> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some((at, f)) if at.elapsed() < std::time::Duration::from_secs(1) => Some(f),
            _ => self.fresh(),
        }
    }
}

/// One store's health: the first failure of a run is logged, the rest counted; the first success after logs again.
pub struct DiskAlarm {
    store: StoreName,
    dir: PathBuf,
    failing: AtomicBool,
    failures: AtomicU64,
    state: Mutex<(StoreState, Option<String>)>,
}

impl DiskAlarm {
    pub fn new(store: StoreName, dir: &Path) -> DiskAlarm {
        metrics::gauge!(FAILING, "store" => store.name()).set(0.0);
        DiskAlarm {
            store,
            dir: dir.to_path_buf(),
            failing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            state: Mutex::new((StoreState::Ok, None)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A write failed (or was not tried because the disk is full: `disk_full`). Logs only when the store was
    /// healthy; counts always.
    pub fn failed(&self, disk_full: bool, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(WRITE_FAILURES, "store" => self.store.name()).increment(1);
        let state = if disk_full {
            StoreState::DiskFull
        } else {
            StoreState::Failed
        };
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, Some(error.to_string()));
        if self.failing.swap(true, Ordering::SeqCst) {
            return;
        }
        metrics::gauge!(FAILING, "store" => self.store.name()).set(1.0);
        // A cause that already says the disk is full adds nothing to the sentence.
        let cause = if error.starts_with("the disk is full") {
            String::new()
        } else {
            format!(" ({error})")
        };
        if disk_full {
            tracing::warn!(
                store = self.store.name(),
                dir = %self.dir.display(),
                "the disk is full: the {} in {} cannot be written{cause}; {}. Free space on that filesystem; \
                 further failures are counted in outpost_storage_write_failures_total, not logged",
                self.store.what(),
                self.dir.display(),
                self.store.meanwhile()
            );
        } else {
            tracing::warn!(
                store = self.store.name(),
                dir = %self.dir.display(),
                "the {} in {} cannot be written{cause}; {}. Check that disk; further failures are counted in \
                 outpost_storage_write_failures_total, not logged",
                self.store.what(),
                self.dir.display(),
                self.store.meanwhile()
            );
        }
    }

    /// A write succeeded: logs once when the store was failing.
    pub fn succeeded(&self) {
        if !self.failing.load(Ordering::Relaxed) || !self.failing.swap(false, Ordering::SeqCst) {
            return;
        }
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (StoreState::Ok, None);
        metrics::gauge!(FAILING, "store" => self.store.name()).set(0.0);
        tracing::info!(
            store = self.store.name(),
            dir = %self.dir.display(),
            failures = self.failures.load(Ordering::Relaxed),
            "the {} in {} can be written again",
            self.store.what(),
            self.dir.display()
        );
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> StoreHealth {
        let (state, error) = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        StoreHealth {
            state,
            dir: self.dir.display().to_string(),
            failures: self.failures.load(Ordering::Relaxed),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_reports_a_run_of_failures_once_and_counts_them() {
        let a = DiskAlarm::new(StoreName::Cache, Path::new("/x"));
        assert_eq!(a.health().state, StoreState::Ok);
        a.failed(true, "no space");
        a.failed(true, "no space");
        let h = a.health();
        assert_eq!((h.state, h.failures), (StoreState::DiskFull, 2));
        assert!(a.is_failing());
        a.succeeded();
        assert_eq!(a.health().state, StoreState::Ok);
        assert_eq!(a.health().failures, 2, "the count is since start");
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(
            libc::ENOSPC
        )));
        assert!(!is_disk_full(&std::io::Error::from_raw_os_error(libc::EIO)));
    }
}
