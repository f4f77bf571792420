//! A/B model slots and the record that says which one is live.
//!
//! As in bottlerocket's signpost, every change is a pure function from one [`SlotState`] to the next, and
//! [`SlotStore::save`] is the one explicit, atomic write (temp file, fsync, rename, fsync dir). A slot's files are only
//! written while the record says the slot is empty, so a SIGKILL at any instant leaves a record that points at
//! complete files: the old model's or the new one's, never a mix.

pub mod install;

use serde::{Deserialize, Serialize};

use crate::inference::Release;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SlotError {
    #[error("version {offered} is not newer than version {highest}, the highest ever accepted (older or replayed bundle)")]
    NotNewer { offered: u64, highest: u64 },
    #[error("a trial of version {0} is in progress: promote or roll it back first")]
    TrialPending(u64),
    #[error("nothing to roll back to")]
    NothingToRollBack,
    #[error("no model is on trial: nothing to promote")]
    NoTrial,
    #[error("no candidate of version {0} is staged: send it as a candidate first")]
    NoCandidate(u64),
    #[error("version {version} was signed by {signers:?}, and the device's trust no longer lists enough of them for \
             bundles ({valid} of {needed}): it cannot be made live again; install a release signed by a current key \
             (or `outpostctl resign` this one and install it)")]
    SignerRemoved {
        version: u64,
        signers: Vec<String>,
        valid: usize,
        needed: usize,
    },
    #[error("the slot record at {path} is unreadable: {message}")]
    Corrupt { path: String, message: String },
    #[error("I/O error on {path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotId {
    A,
    B,
}

impl SlotId {
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub name: String,
    pub version: u64,
    /// Hex SHA-256 of the installed model file.
    pub digest: String,
    /// Which variant of the bundle was chosen, and why.
    pub variant: String,
    pub reason: String,
    /// The manifest's hardness threshold for forwarding to the cloud (config and `set` override it).
    #[serde(default)]
    pub hardness_threshold: Option<f32>,
    /// Hex SHA-256 of the installed spec ([`crate::inference::spec_digest`]). Records written before releases were
    /// told apart by their spec have none; theirs is whatever spec file sits in the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    /// The release's NNEF form, kept beside a chosen ONNX variant so that an agent upgraded to the slim device
    /// build (which reads NNEF only) still serves this slot. Records from before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spare: Option<Spare>,
    /// The release's forward budget and drift baseline, from its bundle (format 3; records from before have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::bundle::ForwardBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::bundle::Baseline>,
    /// The distinct keys whose signatures held at install, and the trust version they were checked under (records
    /// from before trust documents have neither). A rotation that removes them leaves the release serving but
    /// refuses a rollback or activation to it ([`SlotState::rollback_trusted`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_version: Option<u64>,
}

/// A second form of a slot's release, from the same signed bundle (see [`SlotInfo::spare`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spare {
    /// The bundle's variant it is.
    pub variant: String,
    /// Hex SHA-256 of its file.
    pub digest: String,
}

impl SlotInfo {
    /// Is `release` the model this slot records? Name, version and file digest must all match, and the spec too
    /// when the record names one: the same bytes under another version or spec are another release. The file is
    /// the chosen variant's or the spare form's: both come from the bundle the record installed.
    pub fn matches(&self, release: &Release) -> bool {
        self.name == release.name
            && self.version == release.version
            && (self.digest == release.digest
                || self
                    .spare
                    .as_ref()
                    .is_some_and(|s| s.digest == release.digest))
            && self
                .spec_digest
                .as_ref()
                .is_none_or(|s| *s == release.spec_digest)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: SlotId,
    /// What was live before the flip (None: the built-in or configured model).
    pub previous: Option<SlotId>,
    /// Agent starts while this trial was pending.
    pub boots: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotState {
    /// None: the built-in or configured model serves.
    pub active: Option<SlotId>,
    pub slots: [Option<SlotInfo>; 2],
    pub highest_version: u64,
    pub trial: Option<Trial>,
    /// A model staged in the inactive slot for shadow (and A/B) evaluation: installed and checked, not live.
    #[serde(default)]
    pub candidate: Option<SlotId>,
    /// Counts writes, for logs and tests.
    pub generation: u64,
    /// The model was removed: this record is its tombstone, kept for its version floor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// What a start-up found.
#[derive(Debug, Clone, PartialEq)]
pub enum BootAction {
    Normal,
    /// The trial is still pending; this is start number `boots`.
    TrialContinues {
        boots: u32,
    },
    /// The trial crashed the agent too often and was rolled back.
    RolledBack {
        version: u64,
        boots: u32,
    },
}

impl SlotState {
    pub fn slot(&self, id: SlotId) -> Option<&SlotInfo> {
        self.slots[id.index()].as_ref()
    }

    pub fn active_info(&self) -> Option<&SlotInfo> {
        self.active.and_then(|s| self.slot(s))
    }

    fn next(&self) -> SlotState {
        let mut s = self.clone();
        s.generation += 1;
        s
    }

    /// Step 1 of an install: choose the inactive slot and mark it empty, so its files may be overwritten.
    pub fn begin_install(&self, version: u64) -> Result<(SlotState, SlotId), SlotError> {
        if let Some(t) = &self.trial {
            return Err(SlotError::TrialPending(
                self.slot(t.slot).map(|i| i.version).unwrap_or(0),
            ));
        }
        if version <= self.highest_version {
            return Err(SlotError::NotNewer {
                offered: version,
                highest: self.highest_version,
            });
        }
        let target = self.active.map(SlotId::other).unwrap_or(SlotId::A);
        let mut s = self.next();
        // A newer release of a removed model brings it back (an older one was refused above).
        s.removed = false;
        s.slots[target.index()] = None;
        // The inactive slot is where a candidate lives: a new install replaces it.
        s.candidate = None;
        Ok((s, target))
    }

    /// The model is removed from the device: nothing serves or is staged, the slots are empty, and the version
    /// floor stays, so no release at or below it is ever accepted again.
    pub fn remove(&self) -> SlotState {
        let mut s = self.next();
        s.active = None;
        s.slots = [None, None];
        s.trial = None;
        s.candidate = None;
        s.removed = true;
        s
    }

    /// Step 2 of a candidate install: the checked slot is kept beside the live one for shadow evaluation, not made
    /// live. Its version counts as accepted, so it can never be replayed.
    pub fn stage(&self, target: SlotId, info: SlotInfo) -> SlotState {
        let mut s = self.next();
        s.highest_version = s.highest_version.max(info.version);
        s.slots[target.index()] = Some(info);
        s.candidate = Some(target);
        s
    }

    /// The staged candidate's info, if any.
    pub fn candidate_info(&self) -> Option<&SlotInfo> {
        self.candidate.and_then(|c| self.slot(c))
    }

    /// The candidate of `version` goes live, on trial (probation then judges it like any install). Activating the
    /// version already live is a no-op, so a resent command does no harm.
    pub fn activate(&self, version: u64) -> Result<SlotState, SlotError> {
        if self.active_info().is_some_and(|i| i.version == version) {
            return Ok(self.clone());
        }
        if let Some(t) = &self.trial {
            return Err(SlotError::TrialPending(
                self.slot(t.slot).map(|i| i.version).unwrap_or(0),
            ));
        }
        match (self.candidate, self.candidate_info()) {
            (Some(c), Some(info)) if info.version == version => {
                let mut s = self.flip(c, info.clone());
                s.candidate = None;
                Ok(s)
            }
            _ => Err(SlotError::NoCandidate(version)),
        }
    }

    /// Gets rid of `version` wherever it is: a staged candidate is dropped, a trial or a committed live model is
    /// rolled back. Idempotent: a version already gone changes nothing (`None`), so a fleet-wide abandon can be
    /// resent safely. The version stays counted as accepted: it cannot come back by replay.
    pub fn abandon(&self, version: u64) -> Result<Option<SlotState>, SlotError> {
        if let Some(c) = self
            .candidate
            .filter(|c| self.slot(*c).is_some_and(|i| i.version == version))
        {
            let mut s = self.next();
            s.slots[c.index()] = None;
            s.candidate = None;
            s.highest_version = s.highest_version.max(version);
            return Ok(Some(s));
        }
        if self.active_info().is_some_and(|i| i.version == version) {
            let mut s = self.rollback()?;
            s.highest_version = s.highest_version.max(version);
            // Not kept as a rollback target either: the other slot would otherwise offer it back.
            if s.active != self.active {
                if let Some(a) = self.active {
                    s.slots[a.index()] = None;
                }
            }
            return Ok(Some(s));
        }
        if version > self.highest_version {
            // Not here yet (a download may be under way): refuse it from now on.
            let mut s = self.next();
            s.highest_version = version;
            return Ok(Some(s));
        }
        Ok(None)
    }

    /// Step 2, once the files are complete and checked: make the slot live, on trial.
    pub fn flip(&self, target: SlotId, info: SlotInfo) -> SlotState {
        let mut s = self.next();
        s.highest_version = s.highest_version.max(info.version);
        s.slots[target.index()] = Some(info);
        s.trial = Some(Trial {
            slot: target,
            previous: self.active,
            boots: 0,
        });
        s.active = Some(target);
        s.candidate = None;
        s
    }

    /// The trial passed (or an operator promoted it).
    pub fn commit(&self) -> Result<SlotState, SlotError> {
        if self.trial.is_none() {
            return Err(SlotError::NoTrial);
        }
        let mut s = self.next();
        s.trial = None;
        Ok(s)
    }

    /// The version on trial, if any.
    pub fn trial_version(&self) -> Option<u64> {
        self.trial
            .as_ref()
            .and_then(|t| self.slot(t.slot))
            .map(|i| i.version)
    }

    /// Back to what served before: the trial's previous model, or (no trial) the other slot, else the built-in.
    pub fn rollback(&self) -> Result<SlotState, SlotError> {
        let mut s = self.next();
        match &self.trial {
            Some(t) => {
                s.active = t.previous;
                s.trial = None;
            }
            None => {
                let cur = self.active.ok_or(SlotError::NothingToRollBack)?;
                let other = cur.other();
                s.active = self.slot(other).map(|_| other);
            }
        }
        // The abandoned version stays counted in highest_version: it can never be replayed.
        Ok(s)
    }

    /// [`SlotState::rollback`], refused when the release it would make live is no longer signed by a threshold of
    /// `keys` (a rotation removed its signers). A record from before trust documents names no signers and is not
    /// judged: refusing it would strand devices that upgraded.
    pub fn rollback_trusted(
        &self,
        keys: &crate::bundle::TrustedKeys,
        threshold: usize,
    ) -> Result<SlotState, SlotError> {
        let next = self.rollback()?;
        if let Some(info) = next.active_info() {
            still_signed(info, keys, threshold)?;
        }
        Ok(next)
    }

    /// [`SlotState::activate`], refused as [`SlotState::rollback_trusted`] is.
    pub fn activate_trusted(
        &self,
        version: u64,
        keys: &crate::bundle::TrustedKeys,
        threshold: usize,
    ) -> Result<SlotState, SlotError> {
        let next = self.activate(version)?;
        if next != *self {
            if let Some(info) = next.active_info() {
                still_signed(info, keys, threshold)?;
            }
        }
        Ok(next)
    }

    /// At start-up: count a start during a trial, and roll back once it exceeds `max_boots`.
    pub fn boot(&self, max_boots: u32) -> (SlotState, BootAction) {
        let Some(t) = &self.trial else {
            return (self.clone(), BootAction::Normal);
        };
        let boots = t.boots + 1;
        if boots > max_boots {
            let version = self.slot(t.slot).map(|i| i.version).unwrap_or(0);
            let rolled = self.rollback().expect("a trial can always be rolled back");
            return (rolled, BootAction::RolledBack { version, boots });
        }
        let mut s = self.next();
        if let Some(t) = s.trial.as_mut() {
            t.boots = boots;
        }
        (s, BootAction::TrialContinues { boots })
    }
}

/// Held while a writer reads, changes and writes the record; released on drop.
#[derive(Debug)]
pub struct SlotLock {
    _file: std::fs::File,
}

/// Where one model's slots live: `<dir>/{a,b}/model.onnx`, `spec.json`, and `state.json` (the repository gives each
/// model its `<state>/models/<name>` as `dir`).
#[derive(Debug, Clone)]
pub struct SlotStore {
    dir: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> SlotError {
    SlotError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl SlotStore {
    pub fn open(dir: &Path) -> Result<SlotStore, SlotError> {
        let dir = dir.to_path_buf();
        for d in [dir.clone(), dir.join("a"), dir.join("b")] {
            std::fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
        }
        Ok(SlotStore { dir })
    }

    /// Where an install writes the bundle's variants until one passes its gate (`install.rs`).
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// The store at `dir` without creating anything (it may not exist: then it reads as empty).
    pub fn view(dir: &Path) -> SlotStore {
        SlotStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn slot_dir(&self, id: SlotId) -> PathBuf {
        self.dir.join(id.name())
    }

    /// The slot's model file: `model.nnef.tar` when the chosen variant was an NNEF form, else `model.onnx` (the
    /// name slots had before NNEF variants).
    pub fn model_path(&self, id: SlotId) -> PathBuf {
        let nnef = self.model_path_for(id, true);
        if nnef.exists() {
            nnef
        } else {
            self.model_path_for(id, false)
        }
    }

    /// Where a chosen variant of this form goes.
    pub fn model_path_for(&self, id: SlotId, nnef: bool) -> PathBuf {
        self.slot_dir(id)
            .join(if nnef { "model.nnef.tar" } else { "model.onnx" })
    }

    /// The spare NNEF form beside a chosen ONNX variant ([`SlotInfo::spare`]).
    pub fn spare_path(&self, id: SlotId) -> PathBuf {
        self.slot_dir(id).join("spare.nnef.tar")
    }

    pub fn spec_path(&self, id: SlotId) -> PathBuf {
        self.slot_dir(id).join("spec.json")
    }

    /// The record, or the empty state on a fresh device.
    pub fn load(&self) -> Result<SlotState, SlotError> {
        let path = self.record_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SlotError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotState::default()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Takes the record's lock (blocking). Every writer holds it from the read to the write, so the daemon's
    /// probation verdicts, `outpost install` and `outpost rollback` never interleave a read-modify-write. The lock
    /// is an OS file lock: a writer killed while holding it releases it with its last descriptor.
    pub fn lock(&self) -> Result<SlotLock, SlotError> {
        let path = self.dir.join("lock");
        let file = crate::fsutil::lock_file(&path).map_err(|e| io_err(&path, e))?;
        Ok(SlotLock { _file: file })
    }

    /// One locked transition: read the record, apply `f`, write the result. `f` returning an error, or the record
    /// unchanged (a repeated activate or abandon), writes nothing.
    pub fn update<T>(
        &self,
        f: impl FnOnce(&SlotState) -> Result<(SlotState, T), SlotError>,
    ) -> Result<(SlotState, T), SlotError> {
        let _lock = self.lock()?;
        let now = self.load()?;
        let (next, out) = f(&now)?;
        if next != now {
            self.save(&next)?;
        }
        Ok((next, out))
    }

    /// The one write: atomic and durable. Callers hold [`SlotStore::lock`].
    pub fn save(&self, state: &SlotState) -> Result<(), SlotError> {
        let path = self.record_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io_err(&path, e))?;
        // A promise: boot counting must be on disk before a trial model loads, so it may take the reserve.
        crate::fsutil::write_promise(&path, &bytes).map_err(|e| io_err(&path, e))
    }
}

/// Whether `info`'s recorded signers still meet the bundles role (`keys` at `threshold`); a record without signers
/// (from before trust documents) passes.
pub fn still_signed(
    info: &SlotInfo,
    keys: &crate::bundle::TrustedKeys,
    threshold: usize,
) -> Result<(), SlotError> {
    if info.signers.is_empty() {
        return Ok(());
    }
    let valid = info.signers.iter().filter(|id| keys.knows(id)).count();
    let needed = threshold.max(1);
    if valid < needed {
        return Err(SlotError::SignerRemoved {
            version: info.version,
            signers: info.signers.clone(),
            valid,
            needed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(v: u64) -> SlotInfo {
        SlotInfo {
            name: "m".into(),
            version: v,
            digest: format!("d{v}"),
            variant: "int8".into(),
            reason: String::new(),
            hardness_threshold: None,
            budget: None,
            baseline: None,
            spec_digest: None,
            spare: None,
            signers: Vec::new(),
            trust_version: None,
        }
    }

    #[test]
    fn a_removed_model_keeps_its_version_floor_and_only_a_newer_release_brings_it_back() {
        let (s, t) = SlotState::default().begin_install(4).unwrap();
        let s = s.flip(t, info(4)).commit().unwrap();
        let gone = s.remove();
        assert!(gone.removed && gone.active.is_none() && gone.slots == [None, None]);
        assert_eq!(gone.highest_version, 4);
        assert_eq!(
            gone.begin_install(3).unwrap_err(),
            SlotError::NotNewer {
                offered: 3,
                highest: 4
            }
        );
        let (back, _) = gone.begin_install(5).unwrap();
        assert!(!back.removed);
    }

    #[test]
    fn install_trial_commit_rollback() {
        let s0 = SlotState::default();
        let (s1, t) = s0.begin_install(2).unwrap();
        assert_eq!(t, SlotId::A);
        let s2 = s1.flip(t, info(2));
        assert_eq!(s2.active, Some(SlotId::A));
        assert_eq!(s2.begin_install(3).unwrap_err(), SlotError::TrialPending(2));
        let s3 = s2.commit().unwrap();
        assert_eq!(s3.commit().unwrap_err(), SlotError::NoTrial);
        assert_eq!(
            s3.begin_install(2).unwrap_err(),
            SlotError::NotNewer {
                offered: 2,
                highest: 2
            }
        );
        let (s4, t) = s3.begin_install(3).unwrap();
        assert_eq!(t, SlotId::B);
        let s5 = s4.flip(t, info(3));
        let s6 = s5.rollback().unwrap();
        assert_eq!(s6.active, Some(SlotId::A));
        assert_eq!(
            s6.highest_version, 3,
            "a rolled-back version can never be replayed"
        );
        assert!(s6.trial.is_none());
    }

    #[test]
    fn candidate_stage_activate_abandon() {
        // v1 committed in A.
        let s = SlotState::default()
            .begin_install(1)
            .unwrap()
            .0
            .flip(SlotId::A, info(1))
            .commit()
            .unwrap();
        // v2 staged in B: A still serves.
        let (s1, t) = s.begin_install(2).unwrap();
        assert_eq!(t, SlotId::B);
        let staged = s1.stage(t, info(2));
        assert_eq!(staged.active, Some(SlotId::A));
        assert_eq!(staged.candidate_info().unwrap().version, 2);
        assert!(staged.trial.is_none());
        assert_eq!(
            staged.begin_install(2).unwrap_err(),
            SlotError::NotNewer {
                offered: 2,
                highest: 2
            }
        );
        assert_eq!(staged.activate(3).unwrap_err(), SlotError::NoCandidate(3));
        // Activate: B live on trial, A is the rollback target; a second activate is a no-op.
        let live = staged.activate(2).unwrap();
        assert_eq!(live.active, Some(SlotId::B));
        assert_eq!(live.trial.as_ref().unwrap().previous, Some(SlotId::A));
        assert!(live.candidate.is_none());
        assert_eq!(live.activate(2).unwrap(), live);
        // Abandon the trial: back to A, and B is emptied so no later rollback brings v2 back.
        let back = live.abandon(2).unwrap().unwrap();
        assert_eq!(back.active, Some(SlotId::A));
        assert!(back.slot(SlotId::B).is_none());
        assert!(back.abandon(2).unwrap().is_none(), "abandon is idempotent");
        // Abandon a staged candidate: dropped, A untouched.
        let dropped = staged.abandon(2).unwrap().unwrap();
        assert_eq!(dropped.active, Some(SlotId::A));
        assert!(dropped.candidate.is_none() && dropped.slot(SlotId::B).is_none());
        // Abandon a committed v2: rolled back to A.
        let gone = staged
            .activate(2)
            .unwrap()
            .commit()
            .unwrap()
            .abandon(2)
            .unwrap()
            .unwrap();
        assert_eq!(gone.active_info().unwrap().version, 1);
        // Abandon before it arrived: the version is refused from then on.
        let early = s.abandon(7).unwrap().unwrap();
        assert_eq!(
            early.begin_install(7).unwrap_err(),
            SlotError::NotNewer {
                offered: 7,
                highest: 7
            }
        );
    }

    #[test]
    fn boot_counting_rolls_back_after_k_starts() {
        let s = SlotState::default()
            .begin_install(5)
            .unwrap()
            .0
            .flip(SlotId::A, info(5));
        let (s, a) = s.boot(2);
        assert_eq!(a, BootAction::TrialContinues { boots: 1 });
        let (s, a) = s.boot(2);
        assert_eq!(a, BootAction::TrialContinues { boots: 2 });
        let (s, a) = s.boot(2);
        assert_eq!(
            a,
            BootAction::RolledBack {
                version: 5,
                boots: 3
            }
        );
        assert_eq!(s.active, None);
        assert_eq!(s.boot(2).1, BootAction::Normal);
    }
}
