//! Small durable records (the fleet link's command sequence, an update's progress): postcard values under string
//! keys in their own tree. Each `put` is flushed before it returns, because callers act on "it is recorded" (a
//! command is executed only after its sequence number is durable, a chunk counts only after its bit is).

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

#[derive(Clone)]
pub struct Records {
    tree: sled::Tree,
}

/// Values larger than this are refused: records are bookkeeping, not payloads.
pub const MAX_RECORD: usize = 1024 * 1024;

impl Records {
    pub(super) fn open(db: &sled::Db) -> Result<Records, StoreError> {
        Records::open_named(db, "records")
    }

    pub(super) fn open_named(db: &sled::Db, tree: &str) -> Result<Records, StoreError> {
        Ok(Records {
            tree: db.open_tree(tree)?,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("record {key}: {e}"))),
        }
    }

    /// Writes and flushes (blocking: call off the async threads).
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| StoreError::Db(e.to_string()))?;
        if bytes.len() > MAX_RECORD {
            return Err(StoreError::Db(format!(
                "record {key} would take {} bytes (at most {MAX_RECORD})",
                bytes.len()
            )));
        }
        self.tree.insert(key.as_bytes(), bytes)?;
        self.tree.flush()?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.tree.remove(key.as_bytes())?;
        self.tree.flush()?;
        Ok(())
    }
}
