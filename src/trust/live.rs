//! The trust a running agent checks against: the stored document, loaded once, swapped when a new version is taken
//! over the fleet link or applied by hand beside the daemon (the file's identity is compared on every refresh).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::document::{Role, Trust, TrustDocument};
use super::stored::{Applied, ResetRecord, TrustDir};
use super::TrustError;
use crate::bundle::TrustedKeys;
use crate::config::Config;
use crate::wire::status::{TrustReset, TrustStatus, TrustWarning};

/// One loaded state of the trust file.
struct Snapshot {
    trust: Result<Arc<Trust>, TrustError>,
    reset: Option<ResetRecord>,
}

/// What identifies a version of the file on disk: an atomic rename gives a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// A role's keys as a check needs them.
#[derive(Debug, Clone)]
pub struct RoleKeysNow {
    pub keys: TrustedKeys,
    pub threshold: usize,
    /// The trust version they come from (named in refusals).
    pub version: u64,
}

pub struct LiveTrust {
    dir: TrustDir,
    snapshot: ArcSwap<Snapshot>,
    stamp: Mutex<Option<Stamp>>,
    /// Models whose live release's signers the trust no longer lists enough of (set by the fleet link).
    unsigned_live: Mutex<Vec<String>>,
}

/// Version 1 from the key files in `config`, or `None` when there are none (`slots.trusted_keys` unset): such a
/// device refuses every signed thing, as it did before trust documents.
pub fn from_config(config: &Config) -> Result<Option<TrustDocument>, TrustError> {
    let read = |what: &str, p: &Option<std::path::PathBuf>| match p {
        Some(p) => TrustedKeys::from_file(p)
            .map(Some)
            .map_err(|e| TrustError::Io {
                path: p.display().to_string(),
                message: format!("{what}: {e}"),
            }),
        None => Ok(None),
    };
    let bundles = read("slots.trusted_keys", &config.slots.trusted_keys)?;
    let commands = read("fleet.command_keys", &config.fleet.command_keys)?;
    let cloud = read("forward.cloud_keys", &config.forward.cloud_keys)?;
    if bundles.is_none() && commands.is_none() && cloud.is_none() {
        return Ok(None);
    }
    Ok(Some(TrustDocument::from_files(
        bundles.as_ref(),
        config.slots.threshold,
        commands.as_ref(),
        cloud.as_ref(),
    )))
}

/// The stored trust; else version 1 derived from `derived`, stored when `store` and it has a root (a trust without
/// one could never rotate, so it is derived again at each start until the files name a root).
pub fn stored_or_derived(
    dir: &TrustDir,
    derived: Result<Option<TrustDocument>, TrustError>,
    store: bool,
) -> Result<Trust, TrustError> {
    if let Some((_, t)) = dir.read()? {
        return Ok(t);
    }
    let Some(v1) = derived? else {
        return Err(TrustError::NoTrust);
    };
    let has_root = v1.roles.iter().any(|(n, _)| n == Role::Root.name());
    if store && has_root {
        dir.adopt(&v1)
    } else {
        v1.check_derived()
    }
}

impl LiveTrust {
    /// Loads the stored trust (blocking); stores version 1 from the key files first on a device that has none. A
    /// failure is kept and shown, never fatal: the agent serves without trust and refuses what needs it. A derived
    /// trust that is not stored (no root) is kept as derived: a reload finding no file keeps it.
    pub fn open(state_dir: &Path, derived: Result<Option<TrustDocument>, TrustError>) -> LiveTrust {
        Self::open_with(state_dir, derived, true)
    }

    /// [`LiveTrust::open`], storing a derived version 1 only when `store` (`outpost trust show` looks, never
    /// stores).
    pub fn open_with(
        state_dir: &Path,
        derived: Result<Option<TrustDocument>, TrustError>,
        store: bool,
    ) -> LiveTrust {
        let dir = TrustDir::new(state_dir);
        let trust = stored_or_derived(&dir, derived, store);
        if let Err(e) = &trust {
            tracing::error!(error = %e, "no trust: signed bundles, commands and cloud answers are refused");
        }
        let live = LiveTrust {
            stamp: Mutex::new(stamp(&dir.path())),
            snapshot: ArcSwap::from_pointee(Snapshot {
                trust: trust.map(Arc::new),
                reset: dir.last_reset(),
            }),
            dir,
            unsigned_live: Mutex::new(Vec::new()),
        };
        if let Ok(t) = live.current() {
            tracing::info!(version = t.version(), root = ?t.root_ids(), "trust loaded");
        }
        live.metrics();
        live
    }

    /// The trust in force, or why there is none.
    pub fn current(&self) -> Result<Arc<Trust>, TrustError> {
        self.snapshot.load().trust.clone()
    }

    /// A role's keys now. A role the document lacks (only `cloud` may) has no keys: nothing verifies.
    pub fn role(&self, role: Role) -> Result<RoleKeysNow, TrustError> {
        let t = self.current()?;
        Ok(match t.role(role) {
            Some((keys, threshold)) => RoleKeysNow {
                keys: keys.clone(),
                threshold,
                version: t.version(),
            },
            None => RoleKeysNow {
                keys: TrustedKeys::default(),
                threshold: 1,
                version: t.version(),
            },
        })
    }

    /// Reloads the file when it changed on disk (blocking: a stat, and a read when it changed). Returns whether
    /// the trust changed.
    pub fn refresh(&self) -> bool {
        let now = stamp(&self.dir.path());
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return false;
        }
        *last = now;
        self.reload();
        true
    }

    fn reload(&self) {
        let before = self.current().ok().map(|t| t.version());
        let trust = match self.dir.read() {
            Ok(Some((_, t))) => Ok(Arc::new(t)),
            // Nothing stored: what was derived at start stands.
            Ok(None) => return,
            Err(e) => Err(e),
        };
        match &trust {
            Ok(t) if Some(t.version()) != before => {
                tracing::info!(from = ?before, to = t.version(), root = ?t.root_ids(), "trust changed")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "the stored trust no longer reads"),
        }
        self.snapshot.store(Arc::new(Snapshot {
            trust,
            reset: self.dir.last_reset(),
        }));
        self.metrics();
    }

    /// `/metrics`: the version in force and its root key ids.
    fn metrics(&self) {
        let (version, root) = match self.current() {
            Ok(t) => (t.version(), t.root_ids().join(",")),
            Err(_) => (0, String::new()),
        };
        metrics::gauge!(crate::telemetry::TRUST_VERSION).set(version as f64);
        metrics::gauge!(crate::telemetry::TRUST_ROOT, "keys" => root).set(1.0);
    }

    /// Takes newer versions (blocking; see [`TrustDir::apply`]) and loads the result, also when a version part-way
    /// was refused after others were taken.
    pub fn apply(&self, documents: &[Vec<u8>]) -> Result<Applied, TrustError> {
        let r = self.dir.apply(documents);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&self.dir.path());
        self.reload();
        r
    }

    /// Records the models whose live release is no longer signed by a threshold of the bundles role (logged once
    /// per change).
    pub fn set_unsigned_live(&self, models: Vec<String>) {
        let mut now = self.unsigned_live.lock().unwrap_or_else(|p| p.into_inner());
        if *now != models {
            if !models.is_empty() {
                tracing::warn!(?models, "live releases no longer signed by the trust's bundles role: they keep serving, but cannot be made live again once replaced");
            }
            *now = models;
        }
    }

    /// What the status shows.
    pub fn status(&self) -> TrustStatus {
        let unsigned_live = self
            .unsigned_live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let snap = self.snapshot.load();
        let reset = snap.reset.as_ref().map(|r| TrustReset {
            unix: r.unix,
            from_version: r.from_version,
            to_version: r.to_version,
        });
        match &snap.trust {
            Ok(t) => TrustStatus {
                version: Some(t.version()),
                root_keys: t.root_ids(),
                root_threshold: t.role(Role::Root).map_or(0, |(_, n)| n as u32),
                warnings: warnings(t),
                error: None,
                reset,
                unsigned_live,
            },
            Err(e) => TrustStatus {
                version: None,
                root_keys: Vec::new(),
                root_threshold: 0,
                warnings: Vec::new(),
                error: Some(e.to_string()),
                reset,
                unsigned_live,
            },
        }
    }
}

/// A root that one stolen key could rotate, or whose keys also sign day to day (so they sit on an online machine).
fn warnings(t: &Trust) -> Vec<TrustWarning> {
    let mut w = Vec::new();
    let Some((root, threshold)) = t.role(Role::Root) else {
        return w;
    };
    if threshold < 2 {
        w.push(TrustWarning::SingleRootKey);
    }
    let online = [Role::Bundles, Role::Commands, Role::Cloud]
        .into_iter()
        .filter_map(|r| t.role(r))
        .any(|(keys, _)| root.entries().iter().any(|(id, _)| keys.knows(id)));
    if online {
        w.push(TrustWarning::OnlineRootKey);
    }
    w
}
