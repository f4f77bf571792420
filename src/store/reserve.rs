//! The reserve: a file of `storage.reserve_bytes` kept in the state dir while there is room, and deleted when a
//! record cannot be written for lack of space, so that the records' promise writes (a command's sequence number, a
//! download's progress) still succeed on a disk that another process filled. It is put back once the filesystem
//! has room for it and as much again, so a disk hovering at full does not take it back and forth.
//!
//! Blocks are allocated (`posix_fallocate`), not just sized: a sparse file would free nothing when deleted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The reserve's file in a state dir.
pub const FILE: &str = "reserve";

pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: AtomicBool,
    /// One creation or release at a time.
    busy: Mutex<()>,
}

impl Reserve {
    /// The reserve of `bytes` in `state_dir` (0: none). Does not create it: see [`Reserve::ensure`].
    pub fn new(state_dir: &Path, bytes: u64) -> Reserve {
        let path = state_dir.join(FILE);
        let held = bytes > 0 && std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes);
        Reserve {
            path,
            bytes,
            held: AtomicBool::new(held),
            busy: Mutex::new(()),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Puts the reserve in place when it is missing and the filesystem has room for it twice over (blocking).
    /// Returns whether it is held now.
    pub fn ensure(&self) -> bool {
        if self.bytes == 0 {
            return false;
        }
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes) {
            self.held.store(true, Ordering::Relaxed);
            return true;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match super::space::free_bytes(dir) {
            Ok(free) if free >= self.bytes.saturating_mul(2) => {}
            _ => return false,
        }
        match self.create(dir) {
            Ok(()) => {
                if !self.held.swap(true, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), bytes = self.bytes, "the reserve for the device records is in place");
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot put the reserve in place yet");
                false
            }
        }
    }

    fn create(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix(".reserve-")
            .tempfile_in(dir)?;
        let len =
            i64::try_from(self.bytes).map_err(|_| std::io::Error::other("reserve too large"))?;
        nix::fcntl::posix_fallocate(tmp.as_file(), 0, len).map_err(std::io::Error::from)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        crate::fsutil::sync_dir(dir)
    }

    /// Deletes the reserve to make room for a record (blocking). Returns whether it freed anything.
    pub fn release(&self) -> bool {
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                self.held.store(false, Ordering::Relaxed);
                tracing::warn!(
                    path = %self.path.display(),
                    bytes = self.bytes,
                    "the disk is full: released the reserve so the device records can be written; it is put back \
                     once the filesystem has room"
                );
                true
            }
            Err(_) => {
                self.held.store(false, Ordering::Relaxed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reserve_is_allocated_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let r = super::Reserve::new(dir.path(), 64 * 1024);
        assert!(!r.held());
        assert!(r.ensure());
        let meta = std::fs::metadata(dir.path().join(super::FILE)).unwrap();
        assert_eq!(meta.len(), 64 * 1024);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= 64 * 1024,
            "blocks are allocated, not sparse"
        );
        assert!(super::Reserve::new(dir.path(), 64 * 1024).held());
        assert!(r.release());
        assert!(!r.held() && !r.release());
        assert!(!super::Reserve::new(dir.path(), 0).ensure());
    }
}
