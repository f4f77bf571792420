//! The state dir's stores, each apart so that one failing leaves the others:
//!
//! - `<state>/cache`: the result cache (sled). Disposable: closed while it cannot be written, reopened when it can.
//! - `<state>/outbox`: the hard cases waiting for the cloud (sled). Opens while it can be read; refuses new cases on
//!   a full disk and keeps the ones it holds.
//! - `<state>/records`: the small records promises rest on (one file each): opens while it can be read, and may
//!   take the reserve to write.
//! - `<state>/reserve`: `storage.reserve_bytes` of allocated space, released for the records when the disk fills.
//!
//! Agents before this layout kept the records and the outbox inside `<state>/cache`. [`migrate`] moves them out at
//! the first start: both are copied beside, then renamed into place (the outbox first, the records last, so
//! `<state>/records` existing means the move is complete), and only then dropped from the cache's database. A
//! SIGKILL at any point leaves either the old layout, which is migrated again, or the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::records::file_name;
use super::space::{self, DiskAlarm, FreeSpace};
use super::{open_db, Outbox, Records, Reserve, ResultCache, StoreError};
use crate::wire::status::{StorageStatus, StoreHealth, StoreName, StoreState};

/// The cache and the outbox leave this much free beyond the reserve, so sled's own growth (a new log segment) still
/// fits when they stop taking entries.
pub const MIN_FREE: u64 = 1024 * 1024;

/// The outbox's trees, as they were in the single database and as they are in their own.
const OUTBOX_TREES: [&str; 3] = ["outbox.cases", "outbox.ids", "outbox.meta"];
/// The records' tree in the single database.
const RECORDS_TREE: &str = "records";

/// The store directories in a state dir.
pub fn cache_dir(state: &Path) -> PathBuf {
    state.join("cache")
}

pub fn outbox_dir(state: &Path) -> PathBuf {
    state.join("outbox")
}

pub fn records_dir(state: &Path) -> PathBuf {
    state.join("records")
}

pub fn incoming_dir(state: &Path) -> PathBuf {
    state.join("incoming")
}

/// What [`Storage::open`] needs from the configuration.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// `storage.reserve_bytes` (0: no reserve).
    pub reserve_bytes: u64,
    /// The result cache's bounds (entries, bytes), or `None` when `cache.enabled = false`.
    pub cache: Option<(u64, u64)>,
}

/// The stores of one state dir, and what tends them while the agent runs.
pub struct Storage {
    dir: PathBuf,
    reserve: Arc<Reserve>,
    /// The records, or why they could not be opened (tried again by [`Storage::tend`]).
    records: Mutex<Result<Records, Arc<StoreError>>>,
    cache: Option<Arc<ResultCache>>,
    outbox: OnceLock<Outbox>,
    downloads: DiskAlarm,
    space: FreeSpace,
}

impl Storage {
    /// Opens the stores of `state` (blocking), migrating an older layout first. Never fails: a store that cannot
    /// open is reported in [`Storage::status`] and tried again by [`Storage::tend`], and serving goes on.
    pub fn open(state: &Path, options: &StorageOptions) -> Storage {
        let reserve = Arc::new(Reserve::new(state, options.reserve_bytes));
        let records = open_records(state, &reserve);
        let cache = options.cache.map(|(entries, bytes)| {
            Arc::new(ResultCache::open(
                &cache_dir(state),
                entries,
                bytes,
                options.reserve_bytes + MIN_FREE,
            ))
        });
        let storage = Storage {
            dir: state.to_path_buf(),
            reserve,
            records: Mutex::new(records),
            cache,
            outbox: OnceLock::new(),
            downloads: DiskAlarm::new(StoreName::Downloads, &incoming_dir(state)),
            space: FreeSpace::new(state),
        };
        storage.tend();
        storage
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Free bytes the cache and the outbox leave on the filesystem (the reserve's size and a margin).
    pub fn keep_free(&self) -> u64 {
        self.reserve.bytes() + MIN_FREE
    }

    pub fn reserve(&self) -> &Arc<Reserve> {
        &self.reserve
    }

    /// The records, or why they cannot be opened (the agent then runs without its fleet link until they can).
    pub fn records(&self) -> Result<Records, StoreError> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map_err(|e| StoreError::RecordsUnavailable {
                dir: records_dir(&self.dir),
                cause: e.to_string(),
            })
    }

    pub fn cache(&self) -> Option<Arc<ResultCache>> {
        self.cache.clone()
    }

    /// The outbox, opened at the first call with these bounds (only an agent that forwards hard cases has one).
    pub fn outbox(&self, max_entries: u64, max_bytes: u64) -> Outbox {
        self.outbox
            .get_or_init(|| {
                Outbox::open(
                    &outbox_dir(&self.dir),
                    max_entries,
                    max_bytes,
                    self.keep_free(),
                    Some(self.reserve.clone()),
                )
            })
            .clone()
    }

    /// Lets the writes promises rest on outside the stores (the slot records, the API's address file) take this
    /// state dir's reserve when the disk is full ([`crate::fsutil::write_promise`]). The daemon calls it once.
    pub fn make_room_for_promises(&self) {
        let reserve = self.reserve.clone();
        crate::fsutil::on_full_disk(move || reserve.release());
    }

    /// The alarm of bundle downloads (`<state>/incoming`), raised by the update path.
    pub fn downloads(&self) -> &DiskAlarm {
        &self.downloads
    }

    /// Every few seconds (blocking): puts the reserve back when there is room, reopens a closed cache or outbox,
    /// retries records that could not be opened, and updates the storage gauges.
    pub fn tend(&self) {
        let held = self.reserve.ensure();
        if let Some(c) = &self.cache {
            c.tend();
        }
        if let Some(o) = self.outbox.get() {
            o.tend();
        }
        {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if records.is_err() {
                *records = open_records(&self.dir, &self.reserve);
            }
        }
        if let Some(free) = self.space.fresh() {
            metrics::gauge!(space::FREE_BYTES).set(free as f64);
        }
        metrics::gauge!(space::RESERVE_HELD).set(if held { 1.0 } else { 0.0 });
    }

    /// Forces the cache and the outbox to disk (blocking; at shutdown). The records are durable as written.
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(c) = &self.cache {
            c.flush()?;
        }
        if let Some(o) = self.outbox.get() {
            o.flush()?;
        }
        Ok(())
    }

    pub fn status(&self) -> StorageStatus {
        let mut stores = std::collections::BTreeMap::new();
        let off = |dir: PathBuf| StoreHealth {
            state: StoreState::Off,
            dir: dir.display().to_string(),
            failures: 0,
            error: None,
        };
        stores.insert(
            StoreName::Cache,
            match &self.cache {
                Some(c) => c.health(),
                None => off(cache_dir(&self.dir)),
            },
        );
        stores.insert(
            StoreName::Outbox,
            match self.outbox.get() {
                Some(o) => o.health(),
                None => off(outbox_dir(&self.dir)),
            },
        );
        stores.insert(
            StoreName::Records,
            match &*self.records.lock().unwrap_or_else(|p| p.into_inner()) {
                Ok(r) => r.health(),
                Err(e) => StoreHealth {
                    state: StoreState::Failed,
                    dir: records_dir(&self.dir).display().to_string(),
                    failures: 1,
                    error: Some(e.to_string()),
                },
            },
        );
        stores.insert(StoreName::Downloads, self.downloads.health());
        StorageStatus {
            dir: self.dir.display().to_string(),
            free_bytes: self.space.recent(),
            reserve_bytes: self.reserve.bytes(),
            reserve_held: self.reserve.held(),
            stores,
        }
    }
}

fn open_records(state: &Path, reserve: &Arc<Reserve>) -> Result<Records, Arc<StoreError>> {
    migrate(state)
        .and_then(|_| Records::open(&records_dir(state), Some(reserve.clone())))
        .map_err(|e| {
            tracing::error!(
                "the device records in {} cannot be opened ({e}): the agent serves, and its fleet link waits for them",
                records_dir(state).display()
            );
            Arc::new(e)
        })
}

/// Moves the records and the outbox of a single-database state dir (`<state>/cache` holding everything) into their
/// own stores (blocking). Returns whether there was anything to move. A no-op once `<state>/records` exists.
pub fn migrate(state: &Path) -> Result<bool, StoreError> {
    let records = records_dir(state);
    let old = cache_dir(state);
    if records.exists() || !old.join("conf").exists() {
        return Ok(false);
    }
    let staged_records = state.join("records.migrating");
    let staged_outbox = state.join("outbox.migrating");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    for d in [&staged_records, &staged_outbox] {
        match std::fs::remove_dir_all(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(d)(e)),
            _ => {}
        }
    }
    let db = open_db(&old, "result cache")?;
    let names = db.tree_names();
    let has = |t: &str| names.iter().any(|n| n.as_ref() == t.as_bytes());

    let mut has_outbox = false;
    for t in OUTBOX_TREES {
        has_outbox |= has(t) && !db.open_tree(t)?.is_empty();
    }
    if has_outbox {
        let new = open_db(&staged_outbox, "outbox")?;
        for t in OUTBOX_TREES {
            let (from, to) = (db.open_tree(t)?, new.open_tree(t)?);
            for kv in from.iter() {
                let (k, v) = kv?;
                to.insert(k, v)?;
            }
        }
        new.flush()?;
    }

    std::fs::create_dir_all(&staged_records).map_err(io(&staged_records))?;
    let mut moved = 0;
    if has(RECORDS_TREE) {
        for kv in db.open_tree(RECORDS_TREE)?.iter() {
            let (k, v) = kv?;
            let Ok(key) = std::str::from_utf8(&k) else {
                continue;
            };
            let path = staged_records.join(file_name(key));
            crate::fsutil::write_atomic(&path, &v).map_err(io(&path))?;
            moved += 1;
        }
    }
    crate::fsutil::sync_dir(&staged_records).map_err(io(&staged_records))?;

    if has_outbox {
        let target = outbox_dir(state);
        if target.exists() {
            // A migration killed between its two renames: this copy is the same cases again.
            std::fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        std::fs::rename(&staged_outbox, &target).map_err(io(&target))?;
    }
    std::fs::rename(&staged_records, &records).map_err(io(&records))?;
    crate::fsutil::sync_dir(state).map_err(io(state))?;
    tracing::info!(records = moved, outbox = has_outbox, state = %state.display(), "moved the records and the outbox out of the cache's database");

    // No longer read from here: dropped so that their space returns (best effort).
    for t in names.iter() {
        let drop = t.as_ref() == RECORDS_TREE.as_bytes()
            || t.starts_with(b"records/")
            || OUTBOX_TREES.iter().any(|o| t.as_ref() == o.as_bytes());
        if drop {
            let _ = db.drop_tree(t);
        }
    }
    let _ = db.flush();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single database with records, a named agent's records, outbox cases and cache entries becomes the three
    /// stores, each with what it held; a second run changes nothing.
    #[test]
    fn a_single_database_is_split_into_its_stores() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let case = |id: &str| {
            let mut v = postcard::to_stdvec(&id.to_string()).unwrap();
            v.extend([7u8; 20]);
            v
        };
        {
            let db = sled::open(cache_dir(state)).unwrap();
            let r = db.open_tree(RECORDS_TREE).unwrap();
            r.insert("command.last_seq", postcard::to_stdvec(&41u64).unwrap())
                .unwrap();
            r.insert("transfer.done", postcard::to_stdvec(&vec![3u8, 1]).unwrap())
                .unwrap();
            db.open_tree("records/sim-1")
                .unwrap()
                .insert("x", vec![1u8])
                .unwrap();
            let old = Outbox::open(&state.join("tmp-outbox"), 10, 1 << 20, 0, None);
            old.push("c1", &case("c1")).unwrap();
            old.push("c2", &case("c2")).unwrap();
            drop(old);
            // The old layout kept the outbox's trees in the same database.
            let tmp = sled::open(state.join("tmp-outbox")).unwrap();
            for t in OUTBOX_TREES {
                let (from, to) = (tmp.open_tree(t).unwrap(), db.open_tree(t).unwrap());
                for kv in from.iter() {
                    let (k, v) = kv.unwrap();
                    to.insert(k, v).unwrap();
                }
            }
            let cache = db.open_tree("cache.entries").unwrap();
            cache.insert(b"k", vec![0u8; 9]).unwrap();
            db.flush().unwrap();
        }
        assert!(migrate(state).unwrap());
        assert!(!migrate(state).unwrap(), "a second run is a no-op");
        let records = Records::open(&records_dir(state), None).unwrap();
        assert_eq!(records.get::<u64>("command.last_seq").unwrap(), Some(41));
        assert_eq!(
            records.get::<Vec<u8>>("transfer.done").unwrap(),
            Some(vec![3, 1])
        );
        let outbox = Outbox::open(&outbox_dir(state), 10, 1 << 20, 0, None);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.get("c2").unwrap(), Some(case("c2")));
        assert_eq!(outbox.bytes(), 2 * case("c1").len() as u64);
        let db = sled::open(cache_dir(state)).unwrap();
        let names: Vec<_> = db.tree_names();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with(b"records") || n.starts_with(b"outbox")),
            "the moved trees are dropped"
        );
        assert_eq!(
            db.open_tree("cache.entries").unwrap().len(),
            1,
            "the cache stays"
        );
    }

    /// A migration killed between its renames (the outbox moved, the records not) runs again to the same result.
    #[test]
    fn a_migration_cut_short_runs_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        {
            let db = sled::open(cache_dir(state)).unwrap();
            db.open_tree(RECORDS_TREE)
                .unwrap()
                .insert("a", postcard::to_stdvec(&5u64).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        // What the first run left: a stale staging directory and an outbox already in place.
        std::fs::create_dir_all(state.join("records.migrating")).unwrap();
        std::fs::write(state.join("records.migrating/junk"), b"x").unwrap();
        assert!(migrate(state).unwrap());
        let records = Records::open(&records_dir(state), None).unwrap();
        assert_eq!(records.get::<u64>("a").unwrap(), Some(5));
        assert_eq!(records.get::<u64>("junk").ok().flatten(), None);
        assert!(!state.join("records.migrating").exists());
    }
}
