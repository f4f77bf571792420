//! The model repository on the device: one folder per model name, as Triton reads its model repository.
//!
//! `<state>/models/<name>/` holds that model's A/B slots and record ([`crate::slots`]): its version floor, trial and
//! candidate are its own. A removed model keeps its record as a tombstone (no slots, `removed`, the version floor
//! intact), so replaying an old bundle of it can never bring it back.
//!
//! Names go into paths, topics and metric labels, so every name is checked ([`check_name`]) and the number of
//! models is capped. A state directory written by the single-model agent (`<state>/slots/`) becomes the default
//! model's folder when the repository opens: one rename, so a SIGKILL leaves either layout, never a mix.

use std::path::{Path, PathBuf};

use crate::slots::{SlotError, SlotId, SlotStore};

/// The slots an install writes to ([`Repository::stage`]): commit on success, drop otherwise.
pub struct Staged {
    pub store: SlotStore,
    /// A new model's staging folder and its place.
    rename: Option<(PathBuf, PathBuf)>,
}

impl Staged {
    /// The install succeeded: a new model's folder takes its place (one rename: it appears whole, record and all).
    /// Returns the store at its final place.
    pub fn commit(mut self) -> Result<SlotStore, RepoError> {
        match self.rename.take() {
            None => Ok(self.store.clone()),
            Some((staging, target)) => {
                std::fs::rename(&staging, &target).map_err(io(&target))?;
                if let Some(root) = target.parent() {
                    crate::fsutil::sync_dir(root).map_err(io(root))?;
                }
                Ok(SlotStore::view(&target))
            }
        }
    }
}

impl Drop for Staged {
    /// Not committed: a new model's folder goes (an existing model's record was left as it was by the install).
    fn drop(&mut self) {
        if let Some((staging, _)) = self.rename.take() {
            let _ = std::fs::remove_dir_all(staging);
        }
    }
}

/// Longest model name.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("model name {0:?} is not allowed: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")]
    BadName(String),
    #[error("this device holds at most {max} models ({names}); remove one first, or raise repository.max_models")]
    TooMany { max: usize, names: String },
    #[error("no model named {name:?} on this device (it has: {names})")]
    Unknown { name: String, names: String },
    #[error("installing {name} would make the engines hold {need} bytes of model files, above repository.max_engine_bytes ({cap}): remove a model, or raise the cap if the device has the memory")]
    EngineBytes { name: String, need: u64, cap: u64 },
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A model name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.` (so never `.`, `..` or a hidden folder). That
/// keeps it out of MQTT wildcards (`+`, `#`), path separators and traversal.
pub fn check_name(name: &str) -> Result<(), RepoError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RepoError::BadName(name.chars().take(80).collect()))
    }
}

/// Bytes of the model files the configuration holds in engines whatever the repository does: the configured
/// models, or the built-in one when none is configured.
pub fn base_bytes(config: &crate::config::Config) -> u64 {
    let configured = config.model.entries();
    if configured.is_empty() {
        return crate::inference::builtin_model().len() as u64;
    }
    configured
        .iter()
        .filter_map(|m| m.path.as_ref())
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// The models folder of a state directory.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    /// Opens `<state>/models`, first moving a single-model agent's `<state>/slots` there as `default`'s folder.
    pub fn open(state_dir: &Path, default: &str) -> Result<Repository, RepoError> {
        check_name(default)?;
        let root = state_dir.join("models");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let legacy = state_dir.join("slots");
        let target = root.join(default);
        if legacy.join("state.json").exists() && !target.exists() {
            // The record, both slots and the lock move together; the model keeps its live release, trial and
            // version floor, and nothing is fetched again.
            std::fs::rename(&legacy, &target).map_err(io(&legacy))?;
            crate::fsutil::sync_dir(&root).map_err(io(&root))?;
            crate::fsutil::sync_dir(state_dir).map_err(io(state_dir))?;
            tracing::info!(model = default, from = %legacy.display(), "moved the single-model slots into the model repository");
        }
        // Folders of new models whose install was killed before it succeeded.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".new-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Repository { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The slot store of model `name` (its folder is made if new).
    pub fn slots(&self, name: &str) -> Result<SlotStore, RepoError> {
        check_name(name)?;
        Ok(SlotStore::open(&self.root.join(name))?)
    }

    /// The slot store of model `name` without making its folder: what a check reads (a version floor) before
    /// anything is installed. A model the device does not hold reads as empty.
    pub fn view(&self, name: &str) -> Result<SlotStore, RepoError> {
        check_name(name)?;
        Ok(SlotStore::view(&self.root.join(name)))
    }

    /// Where an install of `name` writes. A model the device holds (or has a tombstone of) is installed in its own
    /// folder; a new one in `<models>/.new-<name>`, which [`Staged::commit`] renames into place once the install
    /// succeeds. So a refused or killed install of a new model leaves no model behind (the hidden folder is not a
    /// model name, and is cleared by the next install of that name and when the repository opens).
    pub fn stage(&self, name: &str) -> Result<Staged, RepoError> {
        check_name(name)?;
        let target = self.root.join(name);
        if target.is_dir() {
            return Ok(Staged {
                store: SlotStore::open(&target)?,
                rename: None,
            });
        }
        let staging = self.root.join(format!(".new-{name}"));
        let _ = std::fs::remove_dir_all(&staging);
        Ok(Staged {
            store: SlotStore::open(&staging)?,
            rename: Some((staging, target)),
        })
    }

    /// Every model with a folder here, removed ones included, sorted.
    pub fn all_names(&self) -> Result<Vec<String>, RepoError> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let e = e.map_err(io(&self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && check_name(&name).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The models this device holds (tombstones left out), sorted.
    pub fn names(&self) -> Result<Vec<String>, RepoError> {
        let mut live = Vec::new();
        for name in self.all_names()? {
            if !self.slots(&name)?.load()?.removed {
                live.push(name);
            }
        }
        Ok(live)
    }

    /// Refuses a model that would be one too many: `name` may be installed when it is already here (or a
    /// tombstone) or when fewer than `max` models are.
    pub fn check_room(&self, name: &str, max: usize) -> Result<(), RepoError> {
        check_name(name)?;
        let names = self.names()?;
        if names.iter().any(|n| n == name) || names.len() < max {
            Ok(())
        } else {
            Err(RepoError::TooMany {
                max,
                names: names.join(", "),
            })
        }
    }

    /// Refuses an install of `incoming` bytes of model into `name` when the engines would then hold more than `cap`
    /// bytes of model files: every model's two slots (the one the install fills is replaced, so not counted), plus
    /// `base` (the configured and built-in models).
    pub fn check_engine_bytes(
        &self,
        name: &str,
        incoming: u64,
        base: u64,
        cap: u64,
    ) -> Result<(), RepoError> {
        let mut held = base;
        for model in self.names()? {
            let slots = self.slots(&model)?;
            let state = slots.load()?;
            let replaced =
                (model == name).then(|| state.active.map(SlotId::other).unwrap_or(SlotId::A));
            for id in [SlotId::A, SlotId::B] {
                if state.slot(id).is_some() && Some(id) != replaced {
                    held += std::fs::metadata(slots.model_path(id)).map_or(0, |m| m.len());
                }
            }
        }
        let need = held.saturating_add(incoming);
        if need > cap {
            return Err(RepoError::EngineBytes {
                name: name.to_string(),
                need,
                cap,
            });
        }
        Ok(())
    }

    /// The store of a model this device holds; a clear error naming the models it has otherwise.
    pub fn existing(&self, name: &str) -> Result<SlotStore, RepoError> {
        check_name(name)?;
        let names = self.names()?;
        if names.iter().any(|n| n == name) {
            self.slots(name)
        } else {
            Err(RepoError::Unknown {
                name: name.to_string(),
                names: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_path_or_widen_a_topic_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", "a+b", "a#", ".hidden", "a b", "é", "a\0b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"x".repeat(65)).is_err());
        for good in [
            "edge-int8",
            "mobilenet_v2",
            "vad.16k",
            "A9",
            &"x".repeat(64),
        ] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }
}
