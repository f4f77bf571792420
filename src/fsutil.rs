//! Crash-safe file writes: a file is either its old content or its new content, never a mix, whatever instant a
//! SIGKILL or power cut hits (write a temp file in the same directory, fsync it, rename it over, fsync the directory).

use std::io::Write;
use std::path::Path;

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// What frees room on a full disk for a write a promise rests on: the daemon registers its reserve's release
/// ([`crate::store::Reserve`]) once its state dir is open. A process without one (a hand-run command) has none.
static MAKE_ROOM: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>> =
    std::sync::OnceLock::new();

/// Registers what [`write_promise`] calls when the disk is full (the first registration stands).
pub fn on_full_disk(make_room: impl Fn() -> bool + Send + Sync + 'static) {
    let _ = MAKE_ROOM.set(Box::new(make_room));
}

/// [`write_atomic`] for a write a promise rests on (a slot record: a boot counted before a trial model loads, an
/// install's commit): when the disk is full, room is made ([`on_full_disk`]) and the write tried once more.
pub fn write_promise(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match write_atomic(path, bytes) {
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                && MAKE_ROOM.get().is_some_and(|f| f()) =>
        {
            write_atomic(path, bytes)
        }
        other => other,
    }
}

/// fsync of a directory, so that a rename in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Takes an exclusive OS lock on `path` (blocking), creating the file if needed; released when the returned file is
/// dropped or the process dies (a writer killed while holding it releases it with its last descriptor). flock works
/// on a read-only descriptor, so a lock file created by another user (root running `outpost install` beside the
/// service user) still serves everyone.
pub fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?,
        Err(e) => return Err(e),
    };
    file.lock()?;
    Ok(file)
}
