//! The numbers of commands refused because the store failed, kept where a full disk cannot lose them.
//!
//! sled keeps its first real I/O error (a full disk) until it is opened again, so a refused command's number, which
//! [`super::floors::Floors`] keeps pending in memory, could reach the store only after a restart, and a restart
//! forgot it: the replay of a command the operator was told was refused would then run. So the pending numbers are
//! also written here: a small file created and filled at start, while there is room, and afterwards only
//! overwritten in place, which needs no new block, so it still succeeds on a disk that another process filled.
//! Two halves are written in turn, each with a generation and a digest: a SIGKILL in the middle of a write leaves
//! the other half whole (the newest number it lacks is then the only one forgotten, as before this file existed).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The reserve's file in a state dir.
pub const FILE: &str = "spent-seq";
const HALF: usize = 2048;
const MAGIC: &[u8; 4] = b"OSP1";
/// Magic, generation, payload length, digest.
const HEADER: usize = 4 + 8 + 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SpentError {
    #[error("cannot prepare the reserve of refused command numbers {}: {source} (a refused command's number is kept in memory only until the next start)", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the reserve of refused command numbers {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{count} refused command numbers do not fit the reserve's {HALF} bytes")]
    TooMany { count: usize },
}

/// The preallocated file, open for writing in place.
pub(super) struct Reserve {
    path: PathBuf,
    file: File,
    generation: u64,
}

impl Reserve {
    /// Opens the reserve in `dir` (creating and filling it when missing or of the wrong size) and returns what it
    /// holds: the numbers spent before the last stop and not yet in the store.
    pub(super) fn open(dir: &Path) -> Result<(Reserve, BTreeMap<String, u64>), SpentError> {
        let path = dir.join(FILE);
        let create = |source| SpentError::Create {
            path: path.clone(),
            source,
        };
        let right_size = std::fs::metadata(&path).is_ok_and(|m| m.len() == 2 * HALF as u64);
        if !right_size {
            // Written, not just sized: a sparse file would still need blocks when it is first overwritten.
            crate::fsutil::write_atomic(&path, &[0u8; 2 * HALF]).map_err(create)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(create)?;
        let mut bytes = vec![0u8; 2 * HALF];
        file.read_exact(&mut bytes).map_err(create)?;
        let newest = [&bytes[..HALF], &bytes[HALF..]]
            .into_iter()
            .filter_map(decode_half)
            .max_by_key(|(generation, _)| *generation);
        let (generation, spent) = newest.unwrap_or_default();
        Ok((
            Reserve {
                path,
                file,
                generation,
            },
            spent,
        ))
    }

    /// Records `spent` (every pending number) in the half not written last, in place, and syncs it. Blocking.
    pub(super) fn write(&mut self, spent: &BTreeMap<String, u64>) -> Result<(), SpentError> {
        let entries: Vec<(&str, u64)> = spent.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let payload = postcard::to_stdvec(&entries).map_err(|e| SpentError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        if HEADER + payload.len() > HALF {
            return Err(SpentError::TooMany {
                count: entries.len(),
            });
        }
        let generation = self.generation + 1;
        let mut half = vec![0u8; HALF];
        half[..4].copy_from_slice(MAGIC);
        half[4..12].copy_from_slice(&generation.to_le_bytes());
        half[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        half[16..24].copy_from_slice(&digest(generation, &payload));
        half[HEADER..HEADER + payload.len()].copy_from_slice(&payload);
        let offset = (generation % 2) * HALF as u64;
        let write = |e| SpentError::Write {
            path: self.path.clone(),
            source: e,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(write)?;
        self.file.write_all(&half).map_err(write)?;
        self.file.sync_data().map_err(write)?;
        self.generation = generation;
        Ok(())
    }
}

fn digest(generation: u64, payload: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(generation.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize()[..8]);
    out
}

/// A half's generation and numbers, if it is whole.
fn decode_half(half: &[u8]) -> Option<(u64, BTreeMap<String, u64>)> {
    if &half[..4] != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(half[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(half[12..16].try_into().ok()?) as usize;
    let payload = half.get(HEADER..HEADER.checked_add(len)?)?;
    if half[16..24] != digest(generation, payload) {
        return None;
    }
    let entries: Vec<(String, u64)> = postcard::from_bytes(payload).ok()?;
    Some((generation, entries.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// What is written is what the next start reads; the newest whole half wins.
    #[test]
    fn spent_numbers_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, first) = Reserve::open(dir.path()).unwrap();
        assert!(first.is_empty());
        r.write(&map(&[("command.last_seq", 11)])).unwrap();
        r.write(&map(&[("command.last_seq", 12), ("command.last_seq/b", 3)]))
            .unwrap();
        drop(r);
        let (_, back) = Reserve::open(dir.path()).unwrap();
        assert_eq!(
            back,
            map(&[("command.last_seq", 12), ("command.last_seq/b", 3)])
        );
    }

    /// A write torn half way (SIGKILL): the other half, one generation older, is read.
    #[test]
    fn a_torn_write_leaves_the_previous_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _) = Reserve::open(dir.path()).unwrap();
        r.write(&map(&[("k", 11)])).unwrap();
        r.write(&map(&[("k", 12)])).unwrap();
        drop(r);
        // Generation 2 sits in the first half: tear it.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, back) = Reserve::open(dir.path()).unwrap();
        assert_eq!(back, map(&[("k", 11)]));
    }

    /// A file of garbage or of the wrong size is taken as empty and rewritten; too many numbers are refused.
    #[test]
    fn garbage_is_empty_and_the_size_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"garbage").unwrap();
        let (mut r, back) = Reserve::open(dir.path()).unwrap();
        assert!(back.is_empty());
        let many: BTreeMap<String, u64> = (0..200)
            .map(|i| (format!("command.last_seq/model-{i}"), i))
            .collect();
        assert!(matches!(
            r.write(&many),
            Err(SpentError::TooMany { count: 200 })
        ));
    }
}
