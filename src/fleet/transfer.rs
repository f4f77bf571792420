//! Resumable bundle downloads over MQTT: the chunk messages and the device's download state.
//!
//! A download writes each chunk at its offset in `<state>/incoming/<sha256>.part` (so duplicates and reordering
//! are harmless). Every [`SYNC_EVERY`] chunks (and before the header check and the install) the file is synced and
//! only then the bitmap of the chunks written so far is recorded. After a broker restart, a lost connection or a
//! SIGKILL, the bitmap says which chunks are safely on disk: at most the last unsynced batch is fetched again, and
//! nothing is trusted that was not synced. Every chunk is checked against its digest in the signed offer before a
//! byte of it is written; the finished file then goes through the same install path as `outpost install`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::store::{Records, StoreError};
use crate::wire::command::Offer;
use crate::wire::status::TransferSummary;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub bundle: [u8; 32],
    pub index: u32,
    /// Where the chunk goes: must be a device's chunk topic (`outpost/v1/device/<id>/chunk`).
    pub reply_to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub bundle: [u8; 32],
    pub index: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The largest chunk request taken: a bundle digest, an index and a topic fit well within it.
const MAX_REQUEST: usize = 1024;

/// Why a chunk or chunk request message from the broker is dropped before it reaches a download or the bundle
/// server (logged and counted; the sender asks or sends again).
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{what} message of {len} bytes exceeds {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed {what} message: {source}")]
    Malformed {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("reply topic {0:?} is not a device chunk topic")]
    ReplyTopic(String),
}

/// Decodes a chunk, refusing anything larger than `max` bytes before decoding.
pub fn decode_chunk(bytes: &[u8], max: usize) -> Result<Chunk, MessageError> {
    let what = "chunk";
    if bytes.len() > max {
        return Err(MessageError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    postcard::from_bytes(bytes).map_err(|source| MessageError::Malformed { what, source })
}

/// Decodes a chunk request, refusing an oversized one before decoding and one whose reply topic is not a device's
/// chunk topic (a request must not make the server publish anywhere else).
pub fn decode_request(bytes: &[u8]) -> Result<ChunkRequest, MessageError> {
    let what = "chunk request";
    if bytes.len() > MAX_REQUEST {
        return Err(MessageError::TooLarge {
            what,
            len: bytes.len(),
            max: MAX_REQUEST,
        });
    }
    let r: ChunkRequest =
        postcard::from_bytes(bytes).map_err(|source| MessageError::Malformed { what, source })?;
    let ok = r
        .reply_to
        .strip_prefix("outpost/v1/device/")
        .and_then(|rest| rest.strip_suffix("/chunk"))
        .is_some_and(crate::config::valid_topic_level);
    if !ok {
        return Err(MessageError::ReplyTopic(r.reply_to));
    }
    Ok(r)
}

const OFFER: &str = "transfer.offer";
/// Chunks written between two syncs of the file and the bitmap: one fsync pair per batch instead of per chunk.
pub const SYNC_EVERY: usize = 16;
const DONE: &str = "transfer.done";
/// Present while the recorded download is a candidate (staged, not made live), so a resumed one stays one.
const CANDIDATE: &str = "transfer.candidate";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    offer: Offer,
    seq: u64,
}

/// Why a download cannot go on: its file or its record failed, or a chunk is not the one the offer signed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read or write the record of the download ({0}); check the disk of the state dir"
    )]
    Record(#[from] StoreError),
    #[error("chunk of another bundle")]
    OtherBundle,
    #[error("chunk index {index} out of range (0..{total})")]
    OutOfRange { index: usize, total: usize },
    #[error("chunk {index} has {len} bytes, {want} expected")]
    WrongLength { index: usize, len: usize, want: u64 },
    #[error("chunk {0} does not match its signed digest; asking again")]
    Digest(usize),
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

/// What happened to one arriving chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    New,
    Duplicate,
}

/// One download in progress.
pub struct Download {
    pub offer: Offer,
    /// The sequence number of the update command, for its acknowledgement.
    pub seq: u64,
    pub path: PathBuf,
    /// Staged as the candidate when complete, rather than made live on trial.
    pub candidate: bool,
    done: Vec<bool>,
    /// Chunks already on disk when this process took the download over.
    pub resumed_from: usize,
    /// Chunks received and written by this process.
    pub fetched: usize,
    pub duplicates: usize,
    pub retries: usize,
    pub rejected: usize,
    outstanding: BTreeMap<u32, Instant>,
    /// The signed header was verified.
    pub header_checked: bool,
    pub started: Instant,
    records: Records,
    file: Option<std::fs::File>,
    /// Chunks written since the last sync (their bits are not recorded yet).
    unsynced: Vec<usize>,
    /// Chunks recorded as durable.
    pub synced: usize,
}

fn io(path: &Path, source: std::io::Error) -> TransferError {
    TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bits(done: &[bool]) -> Vec<u8> {
    let mut v = vec![0u8; done.len().div_ceil(8)];
    for (i, d) in done.iter().enumerate() {
        if *d {
            v[i / 8] |= 1 << (i % 8);
        }
    }
    v
}

fn unbits(v: &[u8], n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| v.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
        .collect()
}

impl Download {
    pub fn part_path(dir: &Path, offer: &Offer) -> PathBuf {
        dir.join(format!("{}.part", offer.bundle_hex()))
    }

    /// Starts a new download (blocking): an empty file of the bundle's size and an empty bitmap, both durable.
    pub fn start(
        records: Records,
        dir: &Path,
        offer: Offer,
        seq: u64,
        candidate: bool,
    ) -> Result<Download, TransferError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = Self::part_path(dir, &offer);
        let f = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        f.set_len(offer.size).map_err(|e| io(&path, e))?;
        f.sync_all().map_err(|e| io(&path, e))?;
        crate::fsutil::sync_dir(dir).map_err(|e| io(dir, e))?;
        let done = vec![false; offer.chunks.len()];
        // The bitmap and the candidate flag before the offer: the offer's record is what makes a download resume,
        // so a failure part way leaves no download that resumes with another's bitmap.
        records.remove(OFFER)?;
        records.put(DONE, &bits(&done))?;
        if candidate {
            records.put(CANDIDATE, &true)?;
        } else {
            records.remove(CANDIDATE)?;
        }
        records.put(
            OFFER,
            &Recorded {
                offer: offer.clone(),
                seq,
            },
        )?;
        let mut d = Download::new(records, path, offer, seq, done);
        d.candidate = candidate;
        Ok(d)
    }

    fn new(records: Records, path: PathBuf, offer: Offer, seq: u64, done: Vec<bool>) -> Download {
        let resumed_from = done.iter().filter(|d| **d).count();
        Download {
            offer,
            seq,
            path,
            candidate: false,
            done,
            resumed_from,
            fetched: 0,
            duplicates: 0,
            retries: 0,
            rejected: 0,
            outstanding: BTreeMap::new(),
            header_checked: false,
            started: Instant::now(),
            records,
            file: None,
            unsynced: Vec::new(),
            synced: resumed_from,
        }
    }

    /// Syncs the file, then records every chunk written so far (blocking). When either fails, the chunks written
    /// since the last sync no longer count as done: they are fetched and written again, so no chunk counts (nor
    /// does the header check or the install start) before its bit is durable.
    pub fn sync(&mut self) -> Result<(), TransferError> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        let synced = match &self.file {
            Some(f) => f.sync_data().map_err(|e| io(&self.path, e)),
            None => Ok(()),
        }
        .and_then(|()| {
            self.records
                .put(DONE, &bits(&self.done))
                .map_err(TransferError::from)
        });
        if let Err(e) = synced {
            for i in std::mem::take(&mut self.unsynced) {
                self.done[i] = false;
            }
            return Err(e);
        }
        self.unsynced.clear();
        self.synced = self.done_count();
        Ok(())
    }

    /// The download recorded before a restart, if any (blocking).
    pub fn resume(records: Records, dir: &Path) -> Result<Option<Download>, TransferError> {
        let Some(rec) = records.get::<Recorded>(OFFER)? else {
            return Ok(None);
        };
        let n = rec.offer.chunks.len();
        let path = Self::part_path(dir, &rec.offer);
        let intact = std::fs::metadata(&path).is_ok_and(|m| m.len() == rec.offer.size);
        let done = if intact {
            let raw: Vec<u8> = records.get(DONE)?.unwrap_or_default();
            unbits(&raw, n)
        } else {
            // The file went missing or was cut: start it over rather than trust the bitmap.
            let f = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
            f.set_len(rec.offer.size).map_err(|e| io(&path, e))?;
            f.sync_all().map_err(|e| io(&path, e))?;
            vec![false; n]
        };
        let candidate = records.get::<bool>(CANDIDATE)?.unwrap_or(false);
        let mut d = Download::new(records, path, rec.offer, rec.seq, done);
        d.candidate = candidate;
        Ok(Some(d))
    }

    pub fn done_count(&self) -> usize {
        self.done.iter().filter(|d| **d).count()
    }

    pub fn total(&self) -> usize {
        self.done.len()
    }

    pub fn complete(&self) -> bool {
        self.done.iter().all(|d| *d)
    }

    pub fn header_ready(&self) -> bool {
        self.done[..self.offer.header_chunks().min(self.done.len())]
            .iter()
            .all(|d| *d)
    }

    /// Chunks to request now, keeping at most `window` in flight; the header's chunks come first and alone, so
    /// nothing else is fetched for a bundle whose signature does not hold.
    pub fn next_requests(&mut self, window: usize, now: Instant) -> Vec<u32> {
        let limit = if self.header_checked {
            self.done.len()
        } else {
            self.offer.header_chunks().min(self.done.len())
        };
        let mut out = Vec::new();
        for i in 0..limit {
            if self.outstanding.len() >= window {
                break;
            }
            let idx = i as u32;
            if !self.done[i] && !self.outstanding.contains_key(&idx) {
                self.outstanding.insert(idx, now);
                out.push(idx);
            }
        }
        out
    }

    /// Forgets requests older than `timeout` so they are asked again; returns how many.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> usize {
        let before = self.outstanding.len();
        self.outstanding
            .retain(|_, at| now.saturating_duration_since(*at) < timeout);
        let n = before - self.outstanding.len();
        self.retries += n;
        n
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// After a reconnect every request in flight may be lost.
    pub fn forget_in_flight(&mut self) {
        self.outstanding.clear();
    }

    /// Checks a chunk against the signed offer, writes it at its offset, syncs, and records it (blocking).
    pub fn accept(&mut self, c: &Chunk) -> Result<Accepted, TransferError> {
        let i = c.index as usize;
        if c.bundle != self.offer.bundle {
            return Err(TransferError::OtherBundle);
        }
        if i >= self.done.len() {
            self.rejected += 1;
            return Err(TransferError::OutOfRange {
                index: i,
                total: self.done.len(),
            });
        }
        if self.done[i] {
            self.duplicates += 1;
            self.outstanding.remove(&c.index);
            return Ok(Accepted::Duplicate);
        }
        let want = self.offer.chunk_len(i);
        if c.data.len() as u64 != want {
            self.rejected += 1;
            return Err(TransferError::WrongLength {
                index: i,
                len: c.data.len(),
                want,
            });
        }
        if crate::bundle::sha256(&c.data) != self.offer.chunks[i] {
            self.rejected += 1;
            self.outstanding.remove(&c.index);
            return Err(TransferError::Digest(i));
        }
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| io(&self.path, e))?;
            self.file = Some(f);
        }
        let f = self.file.as_ref().expect("opened above");
        f.write_all_at(&c.data, i as u64 * self.offer.chunk_size as u64)
            .map_err(|e| io(&self.path, e))?;
        self.done[i] = true;
        self.unsynced.push(i);
        self.outstanding.remove(&c.index);
        self.fetched += 1;
        if self.unsynced.len() >= SYNC_EVERY
            || self.complete()
            || (!self.header_checked && self.header_ready())
        {
            self.sync()?;
        }
        Ok(Accepted::New)
    }

    /// The work that removes the download's record and file (blocking; run it off the async threads), apart from
    /// the download so that the download can be kept when it fails. The offer's record goes first: once it is
    /// gone, nothing resumes this download at the next start, whatever fails after.
    pub fn discard_job(&self) -> impl FnOnce() -> Result<(), TransferError> + Send + 'static {
        let (records, path) = (self.records.clone(), self.path.clone());
        move || {
            records.remove(OFFER)?;
            records.remove(DONE)?;
            records.remove(CANDIDATE)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
                _ => Ok(()),
            }
        }
    }

    pub fn summary(&self) -> TransferSummary {
        TransferSummary {
            bundle: self.offer.bundle_hex(),
            name: self.offer.name.clone(),
            version: self.offer.version,
            candidate: self.candidate,
            size: self.offer.size,
            chunks_total: self.total() as u64,
            chunks_done: self.done_count() as u64,
            chunks_synced: self.synced as u64,
            resumed_from: self.resumed_from as u64,
            fetched: self.fetched as u64,
            duplicates: self.duplicates as u64,
            retries: self.retries as u64,
            rejected: self.rejected as u64,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bitmap write that fails takes back the chunks it was to record: they do not count as done (nor start the
    /// header check or the install), are fetched again, and count once a later write holds; a download whose offer
    /// cannot be recorded does not start.
    #[test]
    fn a_chunk_counts_only_once_its_bit_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let records = crate::store::Records::open(&dir.path().join("db"), None).unwrap();
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1024]).collect();
        let offer = Offer {
            bundle: [7; 32],
            size: 3 * 1024,
            chunk_size: 1024,
            header_len: 2048,
            chunks: data.iter().map(|d| crate::bundle::sha256(d)).collect(),
            name: "m".into(),
            version: 2,
        };
        let incoming = dir.path().join("incoming");
        let faults = records.faults();
        faults.fail(false, true, OFFER);
        let e = Download::start(records.clone(), &incoming, offer.clone(), 5, false)
            .err()
            .expect("an offer that cannot be recorded does not start");
        assert!(matches!(e, TransferError::Record(_)), "{e}");
        assert!(Download::resume(records.clone(), &incoming)
            .unwrap()
            .is_none());
        faults.clear();
        let mut d = Download::start(records.clone(), &incoming, offer.clone(), 5, false).unwrap();
        let chunk = |i: u32| Chunk {
            bundle: offer.bundle,
            index: i,
            data: data[i as usize].clone(),
        };
        assert_eq!(d.accept(&chunk(0)).unwrap(), Accepted::New);
        // Chunk 1 completes the header: its sync fails, so neither header chunk counts.
        faults.fail(false, true, DONE);
        assert!(matches!(d.accept(&chunk(1)), Err(TransferError::Record(_))));
        assert_eq!(d.done_count(), 0);
        assert!(!d.header_ready());
        assert_eq!(
            d.next_requests(8, Instant::now()),
            vec![0, 1],
            "asked again"
        );
        faults.clear();
        assert_eq!(d.accept(&chunk(0)).unwrap(), Accepted::New);
        assert_eq!(d.accept(&chunk(1)).unwrap(), Accepted::New);
        assert!(d.header_ready());
        let resumed = Download::resume(records.clone(), &incoming)
            .unwrap()
            .unwrap();
        assert_eq!(resumed.done_count(), 2, "durable once the write held");
        // A read that fails is an error, never "no download".
        faults.fail(true, false, "");
        assert!(Download::resume(records.clone(), &incoming).is_err());
        faults.clear();
        // A discard whose first removal fails leaves the download to resume; once it holds, nothing resumes.
        faults.fail(false, true, OFFER);
        assert!(d.discard_job()().is_err());
        assert!(Download::resume(records.clone(), &incoming)
            .unwrap()
            .is_some());
        faults.clear();
        d.discard_job()().unwrap();
        assert!(Download::resume(records, &incoming).unwrap().is_none());
    }

    #[test]
    fn bitmap_round_trips() {
        let d = vec![true, false, true, true, false, false, false, false, true];
        assert_eq!(unbits(&bits(&d), d.len()), d);
    }

    #[test]
    fn requests_must_reply_to_a_device_chunk_topic() {
        let ok = ChunkRequest {
            bundle: [0; 32],
            index: 1,
            reply_to: "outpost/v1/device/d1/chunk".into(),
        };
        assert!(decode_request(&postcard::to_stdvec(&ok).unwrap()).is_ok());
        for bad in [
            "outpost/v1/device/+/chunk",
            "outpost/v1/device/a/b/chunk",
            "elsewhere/chunk",
            "outpost/v1/device//chunk",
        ] {
            let r = ChunkRequest {
                reply_to: bad.into(),
                ..ok.clone()
            };
            assert!(
                matches!(
                    decode_request(&postcard::to_stdvec(&r).unwrap()),
                    Err(MessageError::ReplyTopic(t)) if t == bad
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            decode_request(&[0xff; 3]),
            Err(MessageError::Malformed { .. })
        ));
        assert!(matches!(
            decode_request(&[0; MAX_REQUEST + 1]),
            Err(MessageError::TooLarge { len, .. }) if len == MAX_REQUEST + 1
        ));
        assert!(matches!(
            decode_chunk(&[0; 65], 64),
            Err(MessageError::TooLarge { max: 64, .. })
        ));
    }
}
