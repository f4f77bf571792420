//! Sequence-number floors: the replay guard of signed commands, one per model.
//!
//! A command runs only once its sequence number is durable as its model's floor, and a command at or below the floor
//! is refused as a replay. When the floor cannot be read or written, the command is refused and does not run: a
//! failed read is not a floor of 0 (every old command would pass the check), and a command whose number is not on
//! disk could run a second time after a restart.
//!
//! A refused command's number is spent all the same. Its signature held, so the operator sent it; if the same bytes
//! come again once the store recovers (a broker's redelivery, or someone replaying what they captured), they must not
//! run then, at a time the operator did not choose and after being told "refused". So the number is kept in memory
//! as a pending floor, checked together with the durable one, and written to the store by [`Floors::settle`] (the
//! link calls it every tick) as soon as the store takes it. sled keeps its first real I/O error (a full disk) for the
//! life of the process, so there the store recovers only at a restart: pending numbers are therefore also written to
//! a reserve that a full disk cannot stop ([`super::spent`]: preallocated, overwritten in place), read back as
//! pending at the next start. Only a device whose reserve could not be prepared (no room at start) or is torn by a
//! SIGKILL mid-write forgets its newest pending number at a restart; the command's own expiry then bounds how long
//! its replay could run it, once. To try a refused command again, send it anew: a new command gets a new, higher
//! number.

use std::collections::BTreeMap;

use std::path::Path;

use super::spent::Reserve;
use crate::store::{Records, StoreError};

/// Why a verified command may not run.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot read this device's command sequence record {key} ({source}): the command is refused so that it \
             cannot be a replay; check the disk of the state dir, then send the command again (a new sequence number)")]
    Read { key: String, source: StoreError },
    #[error("cannot record the command's sequence number {seq} in {key} ({source}): the command is refused so that it \
             cannot run twice; check the disk of the state dir, then send the command again (a new sequence number)")]
    Write {
        key: String,
        seq: u64,
        source: StoreError,
    },
    /// At or below the durable floor: the number of a command accepted before, or of one refused and since recorded.
    #[error("sequence number {seq} is not above {last}, the last this device accepted or refused (replayed or out \
             of order)")]
    Replayed { seq: u64, last: u64 },
    /// At or below the number of a command refused earlier because the store failed.
    #[error("sequence number {seq} is not above {last}, the number of a command refused while this device could not \
             record its sequence (replayed or out of order): send the command again with a new sequence number")]
    Spent { seq: u64, last: u64 },
}

impl FloorError {
    /// A replay of a command this device has accepted or refused before (not a store failure).
    pub fn is_replay(&self) -> bool {
        matches!(self, FloorError::Replayed { .. } | FloorError::Spent { .. })
    }
}

/// The durable floors, and the numbers of refused commands not yet made durable.
pub(super) struct Floors {
    records: Records,
    pending: BTreeMap<String, u64>,
    /// Where pending numbers outlive a restart while the store fails ([`super::spent`]); `None` when it could not
    /// be prepared (they are then kept in memory only).
    reserve: Option<Reserve>,
}

impl Floors {
    /// The floors in `records`, with the reserve of spent numbers in `state_dir` (its numbers pending again, so a
    /// command refused before a restart stays refused after it). Blocking (the reserve's file).
    pub(super) fn new(records: Records, state_dir: &Path) -> Floors {
        let (reserve, pending) = match Reserve::open(state_dir) {
            Ok((reserve, pending)) => {
                if !pending.is_empty() {
                    tracing::info!(
                        ?pending,
                        "numbers of commands refused before the last stop are still refused"
                    );
                }
                (Some(reserve), pending)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reserve of refused command numbers");
                (None, BTreeMap::new())
            }
        };
        Floors {
            records,
            pending,
            reserve,
        }
    }

    /// Writes the pending numbers to the reserve (in place: a full disk does not stop it).
    async fn keep_pending(&mut self) {
        let Some(mut reserve) = self.reserve.take() else {
            return;
        };
        let pending = self.pending.clone();
        match crate::blocking::value(move || {
            let r = reserve.write(&pending);
            (reserve, r)
        })
        .await
        {
            Ok((reserve, r)) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "a refused command's number is kept in memory only");
                }
                self.reserve = Some(reserve);
            }
            Err(e) => {
                tracing::error!(error = %e, "the reserve of refused command numbers is closed")
            }
        }
    }

    /// Admits command number `seq` under the floor record `key`: `Ok` once `seq` is above every number seen under
    /// `key` and durable as its new floor; else the command must be refused, and (unless it is a replay) its number
    /// is kept pending, so that its replay is refused too.
    pub(super) async fn admit(&mut self, key: &str, seq: u64) -> Result<(), FloorError> {
        let records = self.records.clone();
        let k = key.to_string();
        let durable = match crate::blocking::run(move || records.get::<u64>(&k)).await {
            Ok(v) => v.unwrap_or(0),
            Err(source) => {
                self.spend(key, seq).await;
                return Err(FloorError::Read {
                    key: key.to_string(),
                    source,
                });
            }
        };
        let pending = self.pending.get(key).copied().unwrap_or(0);
        if seq <= durable {
            return Err(FloorError::Replayed { seq, last: durable });
        }
        if seq <= pending {
            return Err(FloorError::Spent { seq, last: pending });
        }
        let (records, k) = (self.records.clone(), key.to_string());
        if let Err(source) = crate::blocking::run(move || records.put(&k, &seq)).await {
            self.spend(key, seq).await;
            return Err(FloorError::Write {
                key: key.to_string(),
                seq,
                source,
            });
        }
        // The durable floor is now above every pending number of this key.
        self.pending.remove(key);
        Ok(())
    }

    async fn spend(&mut self, key: &str, seq: u64) {
        let p = self.pending.entry(key.to_string()).or_insert(0);
        *p = (*p).max(seq);
        self.keep_pending().await;
    }

    /// Writes pending floors that the store now takes (raising a durable floor, never lowering it); those it still
    /// does not take stay pending for the next call.
    pub(super) async fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (records, pending) = (self.records.clone(), self.pending.clone());
        let settled = crate::blocking::run(move || {
            let mut done = Vec::new();
            for (key, seq) in pending {
                let durable = records.get::<u64>(&key).map(Option::unwrap_or_default);
                let ok = match durable {
                    // In memory at least as high; on disk only if a flush succeeds (a write whose flush failed
                    // may have left its value in memory).
                    Ok(d) if d >= seq => records.sync(&key).is_ok(),
                    Ok(_) => records.put(&key, &seq).is_ok(),
                    Err(_) => false,
                };
                if ok {
                    done.push((key, seq));
                }
            }
            Ok::<_, StoreError>(done)
        })
        .await;
        let before = self.pending.len();
        for (key, seq) in settled.unwrap_or_default() {
            tracing::info!(%key, seq, "the sequence number of a command refused earlier is now recorded");
            if self.pending.get(&key) == Some(&seq) {
                self.pending.remove(&key);
            }
        }
        if self.pending.len() != before {
            self.keep_pending().await;
        }
    }

    /// The pending floor of `key`, if any (tests).
    #[cfg(test)]
    fn pending(&self, key: &str) -> Option<u64> {
        self.pending.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floors() -> (tempfile::TempDir, Floors, Records) {
        let dir = tempfile::tempdir().unwrap();
        let records = crate::store::Records::open(&dir.path().join("records"), None).unwrap();
        let floors = Floors::new(records.clone(), dir.path());
        (dir, floors, records)
    }

    const KEY: &str = "command.last_seq";

    /// The floor write fails: the command is refused with the cause and what to do, the durable floor is
    /// unchanged; once the store recovers the refused number's replay is still refused, the floor is written at
    /// the next settle, and a new number passes.
    #[tokio::test]
    async fn a_failed_floor_write_refuses_the_command_and_its_replay() {
        let (_dir, mut f, records) = floors();
        f.admit(KEY, 10).await.unwrap();
        records.faults().fail(false, true, KEY);
        let e = f.admit(KEY, 11).await.unwrap_err();
        assert!(matches!(e, FloorError::Write { seq: 11, .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("cannot record") && text.contains("refused") && text.contains("disk"),
            "{text}"
        );
        records.faults().clear();
        assert_eq!(
            records.get::<u64>(KEY).unwrap(),
            Some(10),
            "the floor is unchanged"
        );
        // Recovered: the replay of 11 is refused before the pending floor is even written.
        let e = f.admit(KEY, 11).await.unwrap_err();
        assert!(matches!(e, FloorError::Spent { seq: 11, last: 11 }), "{e}");
        assert!(e.is_replay());
        f.settle().await;
        assert_eq!(
            records.get::<u64>(KEY).unwrap(),
            Some(11),
            "settled durably"
        );
        assert_eq!(f.pending(KEY), None);
        let e = f.admit(KEY, 11).await.unwrap_err();
        assert!(
            matches!(e, FloorError::Replayed { seq: 11, last: 11 }),
            "{e}"
        );
        f.admit(KEY, 12).await.unwrap();
        assert_eq!(records.get::<u64>(KEY).unwrap(), Some(12));
    }

    /// The floor read fails: refused (not taken as a floor of 0, which would let a replay of an old number through),
    /// and the refused number's replay is refused after recovery.
    #[tokio::test]
    async fn a_failed_floor_read_is_not_a_floor_of_zero() {
        let (_dir, mut f, records) = floors();
        f.admit(KEY, 10).await.unwrap();
        records.faults().fail(true, false, KEY);
        // An old number (a replay) and a new one are both refused: the device cannot tell them apart.
        for seq in [5, 20] {
            let e = f.admit(KEY, seq).await.unwrap_err();
            assert!(matches!(e, FloorError::Read { .. }), "{e}");
            assert!(e.to_string().contains("cannot read"), "{e}");
        }
        assert_eq!(f.pending(KEY), Some(20));
        records.faults().clear();
        assert!(f.admit(KEY, 5).await.unwrap_err().is_replay());
        assert!(matches!(
            f.admit(KEY, 20).await.unwrap_err(),
            FloorError::Spent { seq: 20, last: 20 }
        ));
        f.admit(KEY, 21).await.unwrap();
        assert_eq!(records.get::<u64>(KEY).unwrap(), Some(21));
        assert_eq!(f.pending(KEY), None);
    }

    /// A restart while the store still fails keeps the refused number (the reserve), so its replay after the restart
    /// is refused too; a value the failed write left in memory is not taken as durable.
    #[tokio::test]
    async fn a_refused_number_outlives_a_restart() {
        let (dir, mut f, records) = floors();
        f.admit(KEY, 10).await.unwrap();
        records.faults().fail(false, true, KEY);
        assert!(f.admit(KEY, 11).await.is_err());
        // The store still fails at settle: the number stays pending, however memory reads.
        f.settle().await;
        assert_eq!(f.pending(KEY), Some(11));
        drop(f);
        // A restart: the durable floor is still 10 (the write failed), the reserve still holds 11.
        records.faults().clear();
        records.put(KEY, &10u64).unwrap();
        let mut again = Floors::new(records.clone(), dir.path());
        assert_eq!(again.pending(KEY), Some(11));
        assert!(again.admit(KEY, 11).await.unwrap_err().is_replay());
        again.admit(KEY, 12).await.unwrap();
    }

    /// A pending floor is written only when it raises the durable floor, and stays pending while the store fails.
    #[tokio::test]
    async fn settle_waits_for_the_store_and_never_lowers_a_floor() {
        let (_dir, mut f, records) = floors();
        records.faults().fail(false, true, "");
        assert!(f.admit("a", 7).await.is_err());
        f.settle().await;
        assert_eq!(f.pending("a"), Some(7), "still failing: still pending");
        records.faults().clear();
        records.put("a", &9u64).unwrap();
        f.settle().await;
        assert_eq!(f.pending("a"), None);
        assert_eq!(
            records.get::<u64>("a").unwrap(),
            Some(9),
            "not lowered to 7"
        );
        // Floors are per key: another model's floor is untouched.
        f.admit("b", 1).await.unwrap();
    }
}
