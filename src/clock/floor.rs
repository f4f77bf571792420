//! The durable time floor: a small file in the state dir (`time-floor`, the floor in Unix seconds as text), not a
//! record in the database, so that `outpost install` run by hand while the daemon holds the database still reads
//! and raises it. Written atomically ([`crate::fsutil::write_atomic`]): a SIGKILL leaves the old floor or the new.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{build_unix, show, Reading, SystemClock, TimeSource};
use crate::wire::status::{ClockHealth, ClockStatus};

/// The floor's file in a state dir.
pub const FILE: &str = "time-floor";

/// A raise smaller than this is kept in memory only: every verified cloud answer raises the floor by seconds, and
/// a file write with two fsyncs each time would cost more than a floor a minute low weakens.
const WRITE_EVERY_S: u64 = 60;

/// Longest floor file read: a number and a newline.
const MAX_FILE: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("cannot read the time floor {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the time floor {} is corrupt ({what}): the agent uses its build time ({}) until a signed time raises it, and rewrites the file then", path.display(), show(build_unix()))]
    Corrupt { path: PathBuf, what: String },
    #[error("cannot record the time floor in {}: {source} (the floor stays {} in memory; the expiry checks are no weaker than the clock's)", path.display(), show(*floor))]
    Write {
        path: PathBuf,
        floor: u64,
        source: std::io::Error,
    },
}

/// The clock and the floor of one device (one state dir): shared by everything that checks a signed time.
pub struct Clock {
    source: Arc<dyn TimeSource>,
    file: PathBuf,
    floor: AtomicU64,
    /// What the file held at the last read or write (raises below [`WRITE_EVERY_S`] past it stay in memory).
    persisted: AtomicU64,
    /// Why the file could not be read at start, or the last write failed (cleared by a good write).
    error: Mutex<Option<String>>,
    write_failures: AtomicU64,
}

impl Clock {
    /// The system clock and the floor kept in `state_dir`. Never fails: a floor that cannot be read is reported
    /// (status, log) and replaced by the build time, since refusing to start would strand the device.
    pub fn open(state_dir: &Path) -> Clock {
        Clock::open_with(state_dir, Arc::new(SystemClock))
    }

    /// As [`Clock::open`], with another time source (tests).
    pub fn open_with(state_dir: &Path, source: Arc<dyn TimeSource>) -> Clock {
        let file = state_dir.join(FILE);
        let (stored, error) = match read_floor(&file) {
            Ok(v) => (v.unwrap_or(0), None),
            Err(e) => {
                tracing::error!(error = %e, "time floor");
                (0, Some(e.to_string()))
            }
        };
        let floor = stored.max(build_unix());
        Clock {
            source,
            file,
            floor: AtomicU64::new(floor),
            persisted: AtomicU64::new(stored),
            error: Mutex::new(error),
            write_failures: AtomicU64::new(0),
        }
    }

    /// The clock and the floor now.
    pub fn reading(&self) -> Reading {
        Reading {
            clock_unix: self.source.now_unix(),
            floor_unix: self.floor.load(Ordering::SeqCst),
        }
    }

    /// A verified message issued at `issued_unix`: raises the floor within the rules' bounds and records it. A
    /// failed write does not refuse the message (a floor that stays low only weakens the check back to the
    /// clock's): it is logged, counted and shown in the status. Blocking (a file write): call off the async
    /// threads.
    pub fn observe(&self, issued_unix: u64) {
        let new = self.reading().raised(issued_unix);
        let before = self.floor.fetch_max(new, Ordering::SeqCst);
        if new <= before
            || new
                < self
                    .persisted
                    .load(Ordering::SeqCst)
                    .saturating_add(WRITE_EVERY_S)
        {
            return;
        }
        match self.persist(new) {
            Ok(written) => {
                self.persisted.fetch_max(written, Ordering::SeqCst);
                self.floor.fetch_max(written, Ordering::SeqCst);
                *lock(&self.error) = None;
            }
            Err(e) => {
                let n = self.write_failures.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!(crate::telemetry::CLOCK_FLOOR_WRITE_FAILURES).increment(1);
                // One line per failure at most once a minute of floor (raises below that are not written).
                tracing::warn!(error = %e, failures = n, "time floor not recorded");
                *lock(&self.error) = Some(e.to_string());
            }
        }
    }

    /// Writes `floor`, or the file's own value when another process (a hand-run `outpost install`) raised it
    /// further; returns what was written.
    fn persist(&self, floor: u64) -> Result<u64, ClockError> {
        let on_disk = read_floor(&self.file).ok().flatten().unwrap_or(0);
        let value = floor.max(on_disk);
        crate::fsutil::write_atomic(&self.file, format!("{value}\n").as_bytes()).map_err(
            |source| ClockError::Write {
                path: self.file.clone(),
                floor: value,
                source,
            },
        )?;
        Ok(value)
    }

    /// What the status shows; also sets the clock's gauges for `/metrics`.
    pub fn status(&self) -> ClockStatus {
        let r = self.reading();
        let health = r.health();
        metrics::gauge!(crate::telemetry::CLOCK_UNIX).set(r.clock_unix as f64);
        metrics::gauge!(crate::telemetry::CLOCK_FLOOR_UNIX).set(r.floor_unix as f64);
        for h in [
            ClockHealth::Ok,
            ClockHealth::BehindFloor,
            ClockHealth::FarAhead,
        ] {
            metrics::gauge!(crate::telemetry::CLOCK_HEALTH, "health" => h.name())
                .set(if h == health { 1.0 } else { 0.0 });
        }
        ClockStatus {
            system_unix: r.clock_unix,
            floor_unix: r.floor_unix,
            build_unix: build_unix(),
            health,
            floor_error: lock(&self.error).clone(),
            floor_write_failures: self.write_failures.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The stored floor: `None` when there is no file yet.
fn read_floor(path: &Path) -> Result<Option<u64>, ClockError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ClockError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut text = String::new();
    file.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| ClockError::Corrupt {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    text.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|e| ClockError::Corrupt {
            path: path.to_path_buf(),
            what: format!("{:?} is not a number of seconds: {e}", text.trim()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    const DAY: u64 = 86_400;

    #[test]
    fn the_floor_survives_a_restart_and_starts_at_the_build_time() {
        let dir = tempfile::tempdir().unwrap();
        let today = build_unix() + 3 * DAY;
        let time = FixedClock::at(3_600); // a board at 1970
        let c = Clock::open_with(dir.path(), Arc::new(time.clone()));
        assert_eq!(c.reading().floor_unix, build_unix());
        assert_eq!(c.status().health, ClockHealth::BehindFloor);
        // Three signed messages of today, a day at most each time: the floor reaches today.
        for _ in 0..3 {
            c.observe(today);
        }
        assert_eq!(c.reading().floor_unix, today);
        drop(c);
        let again = Clock::open_with(dir.path(), Arc::new(time));
        assert_eq!(again.reading().floor_unix, today);
        assert_eq!(again.status().floor_error, None);
    }

    #[test]
    fn a_corrupt_floor_is_reported_replaced_by_the_build_time_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a time\x00\xff").unwrap();
        let now = build_unix() + DAY;
        let c = Clock::open_with(dir.path(), Arc::new(FixedClock::at(now)));
        let st = c.status();
        assert_eq!(st.floor_unix, build_unix());
        let err = st.floor_error.expect("the corrupt floor is reported");
        assert!(err.contains("corrupt") && err.contains(FILE), "{err}");
        // The next signed time rewrites it.
        c.observe(now);
        assert_eq!(c.status().floor_error, None);
        assert_eq!(read_floor(&dir.path().join(FILE)).unwrap(), Some(now));
    }

    #[test]
    fn a_failed_write_is_counted_and_never_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let now = build_unix() + DAY;
        // The floor's path is a directory: its write fails as a full or read-only disk's would.
        std::fs::create_dir(dir.path().join(FILE)).unwrap();
        let c = Clock::open_with(dir.path(), Arc::new(FixedClock::at(now)));
        c.observe(now);
        let st = c.status();
        assert_eq!(st.floor_write_failures, 1);
        assert!(st.floor_error.is_some());
        // The raise still holds in memory.
        assert_eq!(st.floor_unix, now);
    }

    #[test]
    fn another_process_raise_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = build_unix() + 10 * DAY;
        let time = Arc::new(FixedClock::at(now));
        let daemon = Clock::open_with(dir.path(), time.clone());
        let by_hand = Clock::open_with(dir.path(), time.clone());
        by_hand.observe(now);
        daemon.observe(now - 5 * DAY);
        assert_eq!(read_floor(&dir.path().join(FILE)).unwrap(), Some(now));
    }
}
