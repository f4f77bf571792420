//! Small durable records (the fleet link's command sequence, an update's progress): postcard values under string
//! keys, one file each in `<state>/records`. Each `put` is durable before it returns (written beside, synced,
//! renamed over, the directory synced), because callers act on "it is recorded" (a command is executed only after
//! its sequence number is durable, a chunk counts only after its bit is).
//!
//! A read or write here can fail (a full or failing disk); callers that make a promise on a record must refuse the
//! action when it does. So that this can be tested, every `Records` carries a fault plan ([`Faults`]) that makes
//! chosen reads or writes fail, and the daemon honours `OUTPOST_FAULT_RECORDS` (see [`crate::fault::records`]).

use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::space::{is_disk_full, DiskAlarm};
use super::{Reserve, StoreError};
use crate::wire::status::{StoreHealth, StoreName};

/// The records of one agent: a directory with one file per record, each replaced atomically.
///
/// Files, not a database: a record is read without writing anything (so the records open on a full disk), a
/// failed write changes nothing and leaves no error behind (sled keeps its first I/O error until it is opened
/// again), and the reserve ([`super::Reserve`]) can make room for the next write.
#[derive(Clone)]
pub struct Records {
    dir: PathBuf,
    faults: Faults,
    reserve: Option<Arc<Reserve>>,
    alarm: Arc<DiskAlarm>,
}

/// Values larger than this are refused: records are bookkeeping, not payloads.
pub const MAX_RECORD: usize = 1024 * 1024;

/// Which record operations fail on purpose (tests): reads, writes (a `remove` is a write) or both, of keys that
/// start with a prefix. Cloned handles share one plan, so a test can hold one while the code under test holds the
/// `Records`; a fresh plan fails nothing, and costs one relaxed atomic load per operation.
#[derive(Clone, Default)]
pub struct Faults(Arc<FaultPlan>);

#[derive(Default)]
struct FaultPlan {
    reads: AtomicBool,
    writes: AtomicBool,
    prefix: Mutex<String>,
}

impl Faults {
    /// From now on, reads (`reads`) and writes (`writes`) of keys starting with `prefix` fail ("" for every key).
    pub fn fail(&self, reads: bool, writes: bool, prefix: &str) {
        *self.0.prefix.lock().unwrap_or_else(|p| p.into_inner()) = prefix.to_string();
        self.0.reads.store(reads, Ordering::SeqCst);
        self.0.writes.store(writes, Ordering::SeqCst);
    }

    /// The store recovers: nothing fails any more.
    pub fn clear(&self) {
        self.fail(false, false, "");
    }

    fn check(&self, write: bool, key: &str) -> Result<(), StoreError> {
        let armed = if write { &self.0.writes } else { &self.0.reads };
        let planned = armed.load(Ordering::Relaxed)
            && key.starts_with(
                self.0
                    .prefix
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_str(),
            );
        if planned || crate::fault::records(write, key) {
            let op = if write { "write" } else { "read" };
            return Err(StoreError::Db(format!(
                "IO error: the {op} of record {key} failed (an injected fault)"
            )));
        }
        Ok(())
    }
}

/// A record's file name: the key, with every byte outside `[A-Za-z0-9_-]` and a leading `.` written `%XX`, so
/// keys never collide, never climb out of the directory and never look like the temp files of a write.
pub(super) fn file_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Records {
    /// The records in `dir`, created when missing (blocking). Reading needs no free space; creating the directory
    /// may take the reserve.
    pub fn open(dir: &Path, reserve: Option<Arc<Reserve>>) -> Result<Records, StoreError> {
        let alarm = Arc::new(DiskAlarm::new(StoreName::Records, dir));
        let records = Records {
            dir: dir.to_path_buf(),
            faults: Faults::default(),
            reserve,
            alarm,
        };
        records.with_room(|| std::fs::create_dir_all(dir))?;
        // Temp files of writes a SIGKILL interrupted.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(records)
    }

    /// Records of their own under `name`, beside these (many simulated agents under one directory).
    pub fn named(&self, name: &str) -> Result<Records, StoreError> {
        Records::open(&self.dir.join(file_name(name)), self.reserve.clone())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fault plan of these records (shared with every clone of them).
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    pub fn health(&self) -> StoreHealth {
        self.alarm.health()
    }

    /// Runs a write, and once more after releasing the reserve when it fails for lack of space. Failures raise the
    /// alarm (one log line per run of them), a success clears it.
    fn with_room(&self, write: impl Fn() -> std::io::Result<()>) -> Result<(), StoreError> {
        let mut result = write();
        if let Err(e) = &result {
            if is_disk_full(e) && self.reserve.as_ref().is_some_and(|r| r.release()) {
                result = write();
            }
        }
        match result {
            Ok(()) => {
                self.alarm.succeeded();
                Ok(())
            }
            Err(e) => {
                let full = is_disk_full(&e);
                self.alarm.failed(full, &e.to_string());
                Err(if full {
                    StoreError::DiskFull {
                        what: StoreName::Records.what(),
                        dir: self.dir.clone(),
                    }
                } else {
                    StoreError::Io {
                        path: self.dir.clone(),
                        source: e,
                    }
                })
            }
        }
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.faults.check(false, key)?;
        let path = self.dir.join(file_name(key));
        let bytes = match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                let mut bytes = Vec::new();
                f.take(MAX_RECORD as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|source| StoreError::Io {
                        path: path.clone(),
                        source,
                    })?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        if bytes.len() > MAX_RECORD {
            return Err(StoreError::Corrupt(format!(
                "record {key} is larger than {MAX_RECORD} bytes"
            )));
        }
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("record {key}: {e}")))
    }

    /// Writes durably (blocking: call off the async threads). When it fails, the record is as it was.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| StoreError::Db(e.to_string()))?;
        if bytes.len() > MAX_RECORD {
            return Err(StoreError::Db(format!(
                "record {key} would take {} bytes (at most {MAX_RECORD})",
                bytes.len()
            )));
        }
        self.check_write(key)?;
        let path = self.dir.join(file_name(key));
        self.with_room(|| crate::fsutil::write_atomic(&path, &bytes))
    }

    /// `Ok` when the record `key` as last read is on disk: always after a `put` that returned `Ok` (a failed one
    /// changed nothing); an injected write fault of `key` fails it, as the write would.
    pub fn sync(&self, key: &str) -> Result<(), StoreError> {
        self.check_write(key)
    }

    /// Removes durably (blocking); a missing record is fine.
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.check_write(key)?;
        let path = self.dir.join(file_name(key));
        self.with_room(|| match std::fs::remove_file(&path) {
            Ok(()) => crate::fsutil::sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
    }

    /// An injected write fault counts as a failed write (the alarm included), as a real one would.
    fn check_write(&self, key: &str) -> Result<(), StoreError> {
        self.faults.check(true, key).inspect_err(|e| {
            self.alarm.failed(false, &e.to_string());
        })
    }
}

#[cfg(test)]
mod tests {
    /// The plan fails what it names (reads, writes, a key prefix) and nothing else, and clearing it recovers.
    #[test]
    fn the_fault_plan_fails_what_it_names() {
        // The records' folder inside a fresh one, so "nothing escaped beside it" is about this test alone.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("records");
        let r = super::Records::open(&dir, None).unwrap();
        r.put("a.x", &1u64).unwrap();
        let f = r.clone().faults();
        f.fail(false, true, "a.");
        assert!(r.put("a.x", &2u64).is_err());
        assert!(r.remove("a.x").is_err());
        assert_eq!(
            r.get::<u64>("a.x").unwrap(),
            Some(1),
            "the failed write left the record"
        );
        r.put("b.x", &3u64).unwrap();
        f.fail(true, false, "");
        let e = r.get::<u64>("b.x").unwrap_err();
        assert!(e.to_string().contains("read of record b.x"), "{e}");
        r.put("b.x", &4u64).unwrap();
        f.clear();
        assert_eq!(r.get::<u64>("b.x").unwrap(), Some(4));
        // Keys with any bytes stay apart and inside the directory.
        r.put("../x", &5u64).unwrap();
        r.put("..%2Fx", &6u64).unwrap();
        r.put(".tmp-a", &7u64).unwrap();
        assert_eq!(r.get::<u64>("../x").unwrap(), Some(5));
        assert_eq!(r.get::<u64>("..%2Fx").unwrap(), Some(6));
        assert!(!root.path().join("x").exists());
        let reopened = super::Records::open(&dir, None).unwrap();
        assert_eq!(
            reopened.get::<u64>(".tmp-a").unwrap(),
            Some(7),
            "a record is not a temp file"
        );
        r.remove("../x").unwrap();
        r.remove("../x").unwrap();
        assert_eq!(r.get::<u64>("../x").unwrap(), None);
    }
}
