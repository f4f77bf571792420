//! Small durable records (the fleet link's command sequence, an update's progress): postcard values under string
//! keys in their own tree. Each `put` is flushed before it returns, because callers act on "it is recorded" (a
//! command is executed only after its sequence number is durable, a chunk counts only after its bit is).
//!
//! A read or write here can fail (a full or failing disk); callers that make a promise on a record must refuse the
//! action when it does. So that this can be tested, every `Records` carries a fault plan ([`Faults`]) that makes
//! chosen reads or writes fail, and the daemon honours `OUTPOST_FAULT_RECORDS` (see [`crate::fault::records`]).

use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::StoreError;

#[derive(Clone)]
pub struct Records {
    tree: sled::Tree,
    faults: Faults,
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

impl Records {
    pub(super) fn open(db: &sled::Db) -> Result<Records, StoreError> {
        Records::open_named(db, "records")
    }

    pub(super) fn open_named(db: &sled::Db, tree: &str) -> Result<Records, StoreError> {
        Ok(Records {
            tree: db.open_tree(tree)?,
            faults: Faults::default(),
        })
    }

    /// The fault plan of these records (shared with every clone of them).
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.faults.check(false, key)?;
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("record {key}: {e}"))),
        }
    }

    /// Writes and flushes (blocking: call off the async threads). When the flush fails, the value in memory is put
    /// back as it was, so that a later flush of other work cannot make durable what the caller was told failed.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| StoreError::Db(e.to_string()))?;
        if bytes.len() > MAX_RECORD {
            return Err(StoreError::Db(format!(
                "record {key} would take {} bytes (at most {MAX_RECORD})",
                bytes.len()
            )));
        }
        let old = self.tree.insert(key.as_bytes(), bytes)?;
        self.flush_or_restore(key, old)
    }

    /// Flushes what is in memory (blocking): `Ok` only when every record read so far is on disk. After a write
    /// whose flush failed, sled may keep the new value in memory (its first I/O error sticks, so the restore fails
    /// too): a value read then is not known durable until this succeeds. `key` names the record whose durability
    /// is asked (an injected write fault of it fails this).
    pub fn sync(&self, key: &str) -> Result<(), StoreError> {
        self.faults.check(true, key)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Removes and flushes (blocking), restoring the value in memory when the flush fails, as [`Records::put`].
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        let old = self.tree.remove(key.as_bytes())?;
        self.flush_or_restore(key, old)
    }

    /// An injected write fault fails here, where a real one does: after the change in memory, at the flush.
    fn flush_or_restore(&self, key: &str, old: Option<sled::IVec>) -> Result<(), StoreError> {
        let flushed = self
            .faults
            .check(true, key)
            .and_then(|()| self.tree.flush().map(drop).map_err(StoreError::from));
        let Err(e) = flushed else {
            return Ok(());
        };
        // Best effort: sled keeps the first I/O error for the life of the process, and then refuses this too.
        let _ = match old {
            Some(v) => self.tree.insert(key.as_bytes(), v).map(drop),
            None => self.tree.remove(key.as_bytes()).map(drop),
        };
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    /// The plan fails what it names (reads, writes, a key prefix) and nothing else, and clearing it recovers.
    #[test]
    fn the_fault_plan_fails_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::store::Store::open(dir.path())
            .unwrap()
            .records()
            .unwrap();
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
    }
}
