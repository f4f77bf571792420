//! Gradual rollouts, the operator's side: a plan (waves over a group, gates between them), its durable progress,
//! and the pure decisions that move it on. The MQTT driver that carries it out is `fleet::rollout`.
//!
//! A wave is a cumulative share of the group chosen by a stable hash of the device id, so the same devices are the
//! canaries of every rollout and a device that joins mid-rollout lands in the wave its hash says. With a shadow
//! phase, a wave's devices first stage the bundle as a candidate that runs in shadow beside the live model; the
//! gate then reads their agreement before anything goes live. In the active phase the candidate goes live on
//! trial, device probation judges it, and the gate counts rollbacks and failures. A gate that fails halts the
//! rollout and abandons the version fleet-wide; pause, resume and abort are the operator's.
//!
//! As for slots, every change of progress is a pure function here and one atomic write in [`ProgressFile::save`],
//! so the operator process can be killed at any instant and resumed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::wire::command::Offer;
use crate::wire::status::{OnlineStatus, TransitionKind};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error("I/O error on {path}: {message}")]
    Io { path: String, message: String },
    #[error("the rollout state at {path} is unreadable: {message} (restore it or start over in a new directory)")]
    Corrupt { path: String, message: String },
    #[error("no rollout in {0} (start one with `outpostctl rollout start`)")]
    NoRollout(String),
    #[error("{0}")]
    Fleet(String),
    #[error(transparent)]
    Panicked(#[from] crate::blocking::Panicked),
}

/// When a wave may move on, and when the rollout halts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Devices that must have reported (shadow figures, or a verdict on trial) before the gate is judged: at
    /// least this many...
    pub min_devices: usize,
    /// ...and at least this share of the wave's devices.
    pub min_reporting: f64,
    /// Seconds each phase is watched at least.
    pub observe_s: u64,
    /// Halt when more than this share of the wave's devices rolled the version back or failed to install it.
    pub max_failure_rate: f64,
    /// Halt when the candidate agreed with the live model on less than this share of shadow runs.
    pub min_agreement: f64,
    /// Shadow runs a device needs before its figures count.
    pub min_shadow_runs: u64,
    /// Halt when, over the wave's shadow runs, the candidate's mean confidence is lower than the live model's by
    /// more than this: a model whose labels agree but whose confidence collapses is stopped before it goes live.
    #[serde(default = "default_confidence_drop")]
    pub max_confidence_drop: f64,
    /// Halt when a phase has waited this long without passing its gate (too few devices report); 0 waits forever.
    #[serde(default)]
    pub phase_timeout_s: u64,
}

fn default_confidence_drop() -> f64 {
    0.1
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_devices: 1,
            min_reporting: 0.9,
            observe_s: 60,
            max_failure_rate: 0.2,
            min_agreement: 0.9,
            min_shadow_runs: 20,
            max_confidence_drop: default_confidence_drop(),
            phase_timeout_s: 0,
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Names the rollout on the broker (`outpost/v1/rollout/<name>/status`).
    pub name: String,
    pub group: String,
    pub bundle: PathBuf,
    pub offer: Offer,
    /// Cumulative percentages of the group, increasing, the last 100.
    pub waves: Vec<f64>,
    pub gates: Gates,
    /// Seconds of shadow evaluation per wave before it goes live; 0 skips the shadow phase.
    pub shadow_s: u64,
    /// Shadow fraction and A/B split sent with the candidate (None keeps each device's setting).
    pub shadow_fraction: Option<f32>,
    pub split: Option<f32>,
}

impl Plan {
    pub fn check(&self) -> Result<(), RolloutError> {
        let bad = |m: &str| Err(RolloutError::Plan(m.to_string()));
        if self.waves.is_empty() {
            return bad("at least one wave is needed (e.g. --waves 1,10,50,100)");
        }
        if self.waves.windows(2).any(|w| w[0] >= w[1])
            || self.waves.iter().any(|w| !(*w > 0.0 && *w <= 100.0))
        {
            return bad("waves are increasing percentages in (0, 100]");
        }
        if self.waves.last() != Some(&100.0) {
            return bad("the last wave must be 100 (the whole group)");
        }
        let g = &self.gates;
        if !(0.0..=1.0).contains(&g.min_reporting)
            || !(0.0..=1.0).contains(&g.max_failure_rate)
            || !(0.0..=1.0).contains(&g.min_agreement)
        {
            return bad(
                "min-reporting, max-failure-rate and min-agreement are fractions from 0 to 1",
            );
        }
        if g.min_devices == 0 {
            return bad("min-devices must be at least 1");
        }
        if g.phase_timeout_s > 0 && g.phase_timeout_s <= g.observe_s.max(self.shadow_s) {
            return bad(
                "phase-timeout-s must be longer than observe-s and shadow-s (or 0 for none)",
            );
        }
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.offer.version
    }
}

/// A device's place in the group's order: the first 8 bytes of SHA-256 of its id, as a number below 10,000.
pub fn bucket(device: &str) -> u64 {
    let h = Sha256::digest([b"outpost-wave\0".as_slice(), device.as_bytes()].concat());
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) % 10_000
}

/// Devices in waves up to `wave` (cumulative): those whose bucket falls below the wave's percentage, and always
/// the `min_devices` lowest buckets, so a small group still has a canary.
pub fn members<'a>(
    plan: &Plan,
    wave: usize,
    devices: impl Iterator<Item = &'a String>,
) -> BTreeSet<String> {
    let pct = plan.waves.get(wave).copied().unwrap_or(100.0);
    let mut all: Vec<(u64, &String)> = devices.map(|d| (bucket(d), d)).collect();
    all.sort();
    all.iter()
        .enumerate()
        .filter(|(i, (b, _))| *i < plan.gates.min_devices || (*b as f64) < pct * 100.0)
        .map(|(_, (_, d))| (*d).clone())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// The wave's devices stage the candidate and run it in shadow.
    Shadow,
    /// The wave's devices run it live, on trial.
    Active,
    Done,
    Halted(String),
    Aborted(String),
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Shadow => "shadow",
            Phase::Active => "active",
            Phase::Done => "done",
            Phase::Halted(_) => "halted",
            Phase::Aborted(_) => "aborted",
        }
    }

    /// Its kind, without the reason.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Shadow => PhaseKind::Shadow,
            Phase::Active => PhaseKind::Active,
            Phase::Done => PhaseKind::Done,
            Phase::Halted(_) => PhaseKind::Halted,
            Phase::Aborted(_) => PhaseKind::Aborted,
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self, Phase::Done | Phase::Halted(_) | Phase::Aborted(_))
    }
}

/// What was sent to one device, with the sequence numbers (to match acknowledgements).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub wave: usize,
    pub candidate: Option<u64>,
    pub activate: Option<u64>,
    pub update: Option<u64>,
}

/// The durable progress of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub plan: Plan,
    pub wave: usize,
    pub phase: Phase,
    /// When the current phase began (Unix ms).
    pub phase_started_ms: u64,
    pub paused: bool,
    /// Highest command sequence number reserved: numbers are reserved (written) before they are used, so a
    /// restarted operator never reuses one.
    pub last_seq: u64,
    pub sent: BTreeMap<String, Sent>,
    /// Devices that rolled the version back or failed it, and why; kept, since their status may move on.
    pub failed: BTreeMap<String, String>,
    /// Sequence number of the fleet-wide abandon, once sent.
    pub abandon_seq: Option<u64>,
    /// (Unix ms, what happened), newest last.
    pub history: Vec<(u64, String)>,
}

/// What the driver knows of a device from its retained status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceView {
    pub online: bool,
    pub live_version: Option<u64>,
    pub on_trial: bool,
    pub candidate_version: Option<u64>,
    pub shadow_runs: u64,
    pub shadow_agreements: u64,
    /// Mean confidence of the live model and of the candidate over the device's recent shadow runs.
    pub shadow_confidence: Option<(f64, f64)>,
    /// Versions the device reported rolling back (from its recent transitions), with the device's reason.
    pub rolled_back: Vec<(u64, String)>,
    /// The rollout's model is the device's default one (or the device has no model repository): its commands
    /// need not name the model, and agents of every version take them.
    pub default_model: bool,
}

impl DeviceView {
    /// Reads the parts of a device's status that rollouts use, about the rollout's `model` only (a device's other
    /// models never feed this rollout's gates); None for a status from another group.
    pub fn from_status(s: &OnlineStatus, group: &str, model: &str) -> Option<DeviceView> {
        if s.group.as_deref() != Some(group) {
            return None;
        }
        let default_model = s.default_model.as_deref().is_none_or(|d| d == model);
        let svc = if default_model {
            &s.service
        } else {
            match s.models.get(model) {
                Some(svc) => svc,
                // The device does not serve that model (yet): online, nothing live, nothing staged.
                None => {
                    return Some(DeviceView {
                        online: true,
                        default_model,
                        ..DeviceView::default()
                    })
                }
            }
        };
        let mut rolled_back: Vec<(u64, String)> = svc
            .transitions
            .iter()
            .chain(svc.last_transition.iter())
            .filter(|t| t.transition == TransitionKind::Rollback)
            .map(|t| (t.version, format!("{}: {}", t.cause.name(), t.detail)))
            .collect();
        rolled_back.dedup_by_key(|r| r.0);
        let candidate_version = svc.candidate.as_ref().map(|c| c.version);
        // Shadow figures count only when they are about the candidate the device stages now.
        let shadow = svc
            .shadow
            .as_ref()
            .filter(|sh| Some(sh.model.version) == candidate_version && sh.runs > 0);
        Some(DeviceView {
            online: true,
            live_version: Some(svc.model.version),
            on_trial: svc.trial.is_some(),
            candidate_version,
            shadow_runs: shadow.map_or(0, |sh| sh.runs),
            shadow_agreements: svc.shadow.as_ref().map_or(0, |sh| sh.agreements),
            shadow_confidence: svc
                .shadow
                .as_ref()
                .and_then(|sh| sh.active_mean_confidence.zip(sh.candidate_mean_confidence)),
            rolled_back,
            default_model,
        })
    }
}

/// What a rollout says of itself: published retained on `outpost/v1/rollout/<name>/status` for `outpostctl watch`,
/// printed by `outpostctl rollout status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub rollout: String,
    pub group: String,
    pub bundle: SummaryBundle,
    /// Cumulative percentages of the group.
    pub waves: Vec<f64>,
    /// The wave in progress, from 1.
    pub wave: usize,
    pub phase: PhaseKind,
    /// Why it halted or was aborted.
    pub reason: Option<String>,
    pub paused: bool,
    pub gate: Reading,
    /// What the gate decides now: `passing`, or what it waits for, or why it halts.
    pub decision: String,
    pub devices: usize,
    pub sent: usize,
    pub live_on_version: usize,
    pub staged: usize,
    pub failed: usize,
    /// The last ten events: (unix ms, what happened).
    pub history: Vec<(u64, String)>,
}

/// The release a rollout delivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryBundle {
    pub name: String,
    pub version: u64,
}

/// A phase without its reason: the closed set the summary names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    Shadow,
    Active,
    Done,
    Halted,
    Aborted,
}

impl std::fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PhaseKind::Shadow => "shadow",
            PhaseKind::Active => "active",
            PhaseKind::Done => "done",
            PhaseKind::Halted => "halted",
            PhaseKind::Aborted => "aborted",
        })
    }
}

/// The gate's reading of a wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub targeted: usize,
    pub reporting: usize,
    pub needed: usize,
    pub failures: usize,
    /// Devices whose shadow figures are in the agreement (the others reported by being live already).
    pub shadowed: usize,
    pub agreement: Option<f64>,
    /// Live model's mean confidence minus the candidate's, weighted by shadow runs.
    pub confidence_drop: Option<f64>,
    pub observed_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Wait(String),
    /// To the next phase or wave (or done).
    Advance,
    Halt(String),
}

impl Progress {
    pub fn new(plan: Plan, now_ms: u64) -> Progress {
        let phase = if plan.shadow_s > 0 {
            Phase::Shadow
        } else {
            Phase::Active
        };
        let mut p = Progress {
            plan,
            wave: 0,
            phase,
            phase_started_ms: now_ms,
            paused: false,
            last_seq: 0,
            sent: BTreeMap::new(),
            failed: BTreeMap::new(),
            abandon_seq: None,
            history: Vec::new(),
        };
        p.note(now_ms, "started: wave 1, ".to_string() + p.phase.name());
        p
    }

    pub fn note(&mut self, now_ms: u64, what: String) {
        self.history.push((now_ms, what));
        if self.history.len() > 200 {
            self.history.remove(0);
        }
    }

    /// Reserves `n` sequence numbers above both the last reserved and the clock (Unix ms, as `outpostctl cmd` uses);
    /// returns the first. Save before using them.
    pub fn reserve(&mut self, n: u64, now_ms: u64) -> u64 {
        let first = self.last_seq.max(now_ms) + 1;
        self.last_seq = first + n.saturating_sub(1);
        first
    }

    /// Reads the current wave: who is in it, who reported, who failed.
    pub fn read(&self, devices: &BTreeMap<String, DeviceView>, now_ms: u64) -> Reading {
        let version = self.plan.version();
        // A device offline before it was sent anything does not hold the wave up: it gets the bundle when it
        // comes back. One that went quiet after being sent counts, as not reporting.
        let targets: BTreeSet<String> = members(&self.plan, self.wave, devices.keys())
            .into_iter()
            .filter(|d| self.sent.contains_key(d) || devices.get(d).is_some_and(|v| v.online))
            .collect();
        let g = &self.plan.gates;
        let (mut reporting, mut shadowed) = (0, 0);
        let (mut runs, mut agreements) = (0u64, 0u64);
        let (mut conf_runs, mut drop_sum) = (0f64, 0f64);
        let mut failures = 0;
        for d in &targets {
            if self.failed.contains_key(d) {
                failures += 1;
                reporting += 1;
                continue;
            }
            let Some(v) = devices.get(d) else { continue };
            match self.phase {
                Phase::Shadow => {
                    if v.live_version == Some(version) && !v.on_trial {
                        // From an earlier wave: already live and committed, nothing to shadow.
                        reporting += 1;
                    } else if v.candidate_version == Some(version)
                        && v.shadow_runs >= g.min_shadow_runs
                    {
                        reporting += 1;
                        shadowed += 1;
                        runs += v.shadow_runs;
                        agreements += v.shadow_agreements;
                        if let Some((a, c)) = v.shadow_confidence {
                            conf_runs += v.shadow_runs as f64;
                            drop_sum += (a - c) * v.shadow_runs as f64;
                        }
                    }
                }
                _ => {
                    // A verdict: committed (live, no trial).
                    if v.live_version == Some(version) && !v.on_trial {
                        reporting += 1;
                    }
                }
            }
        }
        let needed = g
            .min_devices
            .max((g.min_reporting * targets.len() as f64).ceil() as usize)
            .min(targets.len().max(1));
        Reading {
            targeted: targets.len(),
            reporting,
            needed,
            failures,
            shadowed,
            agreement: (runs > 0).then(|| (agreements as f64 / runs as f64 * 1e4).round() / 1e4),
            confidence_drop: (conf_runs > 0.0).then(|| (drop_sum / conf_runs * 1e4).round() / 1e4),
            observed_s: now_ms.saturating_sub(self.phase_started_ms) / 1000,
        }
    }

    /// The gate, applied to a reading; a phase that waits past `phase_timeout_s` halts.
    pub fn decide(&self, r: &Reading) -> Decision {
        let g = &self.plan.gates;
        match self.judge(r) {
            Decision::Wait(why) if g.phase_timeout_s > 0 && r.observed_s >= g.phase_timeout_s => {
                Decision::Halt(format!(
                    "wave {} {} did not pass within {} s: {why}",
                    self.wave + 1,
                    self.phase.name(),
                    g.phase_timeout_s
                ))
            }
            d => d,
        }
    }

    fn judge(&self, r: &Reading) -> Decision {
        let g = &self.plan.gates;
        if r.targeted > 0 && r.failures as f64 / r.targeted as f64 > g.max_failure_rate {
            return Decision::Halt(format!(
                "{} of {} devices in wave {} rolled version {} back or failed it (at most {:.0} % allowed)",
                r.failures,
                r.targeted,
                self.wave + 1,
                self.plan.version(),
                g.max_failure_rate * 100.0
            ));
        }
        if r.reporting < r.needed {
            return Decision::Wait(format!(
                "{} of {} devices reported ({} needed)",
                r.reporting, r.targeted, r.needed
            ));
        }
        let need_s = if self.phase == Phase::Shadow {
            self.plan.shadow_s.max(g.observe_s)
        } else {
            g.observe_s
        };
        if r.observed_s < need_s {
            return Decision::Wait(format!("observed {} s of {need_s} s", r.observed_s));
        }
        if self.phase == Phase::Shadow {
            match r.agreement {
                Some(a) if a < g.min_agreement => {
                    return Decision::Halt(format!(
                        "shadow agreement {:.3} in wave {} is below {:.3}",
                        a,
                        self.wave + 1,
                        g.min_agreement
                    ))
                }
                None if r.shadowed > 0 => return Decision::Wait("no shadow runs yet".into()),
                _ => {}
            }
            if let Some(d) = r.confidence_drop.filter(|d| *d > g.max_confidence_drop) {
                return Decision::Halt(format!(
                    "in wave {}'s shadow runs the candidate's mean confidence is {d:.3} below the live model's (at most {:.3} allowed)",
                    self.wave + 1,
                    g.max_confidence_drop
                ));
            }
        }
        Decision::Advance
    }

    /// The next phase after a passed gate.
    pub fn advance(&self, now_ms: u64) -> Progress {
        let mut p = self.clone();
        match self.phase {
            Phase::Shadow => p.phase = Phase::Active,
            Phase::Active if self.wave + 1 >= self.plan.waves.len() => p.phase = Phase::Done,
            Phase::Active => {
                p.wave += 1;
                p.phase = if self.plan.shadow_s > 0 {
                    Phase::Shadow
                } else {
                    Phase::Active
                };
            }
            _ => return p,
        }
        p.phase_started_ms = now_ms;
        let what = match &p.phase {
            Phase::Done => "done: every wave passed".to_string(),
            ph => format!(
                "wave {} ({} %): {}",
                p.wave + 1,
                p.plan.waves[p.wave],
                ph.name()
            ),
        };
        p.note(now_ms, what);
        p
    }

    pub fn halt(&self, reason: String, now_ms: u64) -> Progress {
        let mut p = self.clone();
        p.note(now_ms, format!("halted: {reason}"));
        p.phase = Phase::Halted(reason);
        p
    }

    pub fn abort(&self, reason: String, now_ms: u64) -> Progress {
        let mut p = self.clone();
        p.note(now_ms, format!("aborted: {reason}"));
        p.phase = Phase::Aborted(reason);
        p
    }

    /// The commands the current phase owes each device, given what it reports. Paused or finished: none.
    pub fn owed(&self, devices: &BTreeMap<String, DeviceView>) -> Vec<(String, Owed)> {
        if self.paused || self.phase.finished() {
            return Vec::new();
        }
        let version = self.plan.version();
        let mut out = Vec::new();
        for d in members(&self.plan, self.wave, devices.keys()) {
            if self.failed.contains_key(&d) {
                continue;
            }
            let sent = self.sent.get(&d).cloned().unwrap_or_default();
            let view = devices.get(&d).cloned().unwrap_or_default();
            if !view.online {
                continue;
            }
            let has = view.live_version == Some(version) || view.candidate_version == Some(version);
            let owed = if self.plan.shadow_s == 0 {
                (sent.update.is_none() && !has).then_some(Owed::Update)
            } else if sent.candidate.is_none() && sent.update.is_none() && !has {
                Some(Owed::Candidate)
            } else if self.phase == Phase::Active
                && sent.activate.is_none()
                && view.candidate_version == Some(version)
            {
                Some(Owed::Activate)
            } else {
                None
            };
            if let Some(o) = owed {
                out.push((d, o));
            }
        }
        out
    }

    /// Records what a device's status says about the version: a rollback of it is a failure.
    pub fn observe(&mut self, device: &str, view: &DeviceView, now_ms: u64) -> bool {
        let version = self.plan.version();
        let why = view
            .rolled_back
            .iter()
            .find(|r| r.0 == version)
            .map(|r| r.1.clone());
        if let Some(why) =
            why.filter(|_| self.sent.contains_key(device) && !self.failed.contains_key(device))
        {
            self.failed.insert(
                device.to_string(),
                format!("rolled back version {version} ({why})"),
            );
            self.note(now_ms, format!("{device} rolled version {version} back"));
            return true;
        }
        false
    }

    /// Records a refused or failed command of ours.
    pub fn command_failed(&mut self, device: &str, seq: u64, error: &str, now_ms: u64) -> bool {
        let ours = self
            .sent
            .get(device)
            .is_some_and(|s| [s.candidate, s.activate, s.update].contains(&Some(seq)));
        if !ours || self.failed.contains_key(device) {
            return false;
        }
        self.failed.insert(device.to_string(), error.to_string());
        self.note(now_ms, format!("{device}: {error}"));
        true
    }

    /// The summary published for `outpostctl watch` and printed by `outpostctl rollout status`.
    pub fn summary(&self, devices: &BTreeMap<String, DeviceView>, now_ms: u64) -> RolloutSummary {
        let r = self.read(devices, now_ms);
        let version = self.plan.version();
        let on_version = devices
            .values()
            .filter(|v| v.live_version == Some(version))
            .count();
        let staged = devices
            .values()
            .filter(|v| v.candidate_version == Some(version))
            .count();
        let decision = match self.decide(&r) {
            Decision::Wait(w) => w,
            Decision::Advance => "passing".into(),
            Decision::Halt(h) => h,
        };
        RolloutSummary {
            rollout: self.plan.name.clone(),
            group: self.plan.group.clone(),
            bundle: SummaryBundle {
                name: self.plan.offer.name.clone(),
                version,
            },
            waves: self.plan.waves.clone(),
            wave: self.wave + 1,
            phase: self.phase.kind(),
            reason: match &self.phase {
                Phase::Halted(r) | Phase::Aborted(r) => Some(r.clone()),
                _ => None,
            },
            paused: self.paused,
            gate: r,
            decision,
            devices: devices.len(),
            sent: self.sent.len(),
            live_on_version: on_version,
            staged,
            failed: self.failed.len(),
            history: self.history.iter().rev().take(10).rev().cloned().collect(),
        }
    }
}

/// A command the current phase owes a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    Candidate,
    Activate,
    Update,
}

/// Operator requests to a running rollout (`outpostctl rollout pause|resume|abort`), by file so they work whether
/// or not the driver runs: it applies them at its next tick, or when it starts again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub paused: bool,
    pub abort: Option<String>,
}

/// Where a rollout keeps its progress and control files.
#[derive(Debug, Clone)]
pub struct ProgressFile {
    dir: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RolloutError {
    RolloutError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl ProgressFile {
    pub fn new(dir: &Path) -> Result<ProgressFile, RolloutError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(ProgressFile {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("rollout.json")
    }

    fn control_path(&self) -> PathBuf {
        self.dir.join("control.json")
    }

    pub fn load(&self) -> Result<Option<Progress>, RolloutError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RolloutError::Corrupt {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// The one write: temp file, fsync, rename, fsync dir.
    pub fn save(&self, p: &Progress) -> Result<(), RolloutError> {
        let path = self.path();
        let bytes = serde_json::to_vec_pretty(p).map_err(|e| io_err(&path, e))?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(|e| io_err(&path, e))
    }

    pub fn control(&self) -> Result<Control, RolloutError> {
        let path = self.control_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RolloutError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Control::default()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    pub fn set_control(&self, c: &Control) -> Result<(), RolloutError> {
        let path = self.control_path();
        let bytes = serde_json::to_vec_pretty(c).map_err(|e| io_err(&path, e))?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(|e| io_err(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shadow_s: u64) -> Plan {
        Plan {
            name: "r".into(),
            group: "g".into(),
            bundle: "b".into(),
            offer: Offer {
                bundle: [0; 32],
                size: 1,
                chunk_size: 1024,
                header_len: 1,
                chunks: vec![[0; 32]],
                name: "m".into(),
                version: 2,
            },
            waves: vec![1.0, 10.0, 50.0, 100.0],
            gates: Gates {
                min_devices: 2,
                observe_s: 0,
                min_shadow_runs: 5,
                ..Gates::default()
            },
            shadow_s,
            shadow_fraction: Some(1.0),
            split: None,
        }
    }

    fn fleet(n: usize) -> BTreeMap<String, DeviceView> {
        (0..n)
            .map(|i| {
                (
                    format!("sim-{i:04}"),
                    DeviceView {
                        online: true,
                        live_version: Some(1),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn waves_are_cumulative_stable_and_never_empty() {
        let p = plan(0);
        let f = fleet(1000);
        let sizes: Vec<usize> = (0..4).map(|w| members(&p, w, f.keys()).len()).collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
        assert!((5..=25).contains(&sizes[0]), "1 % of 1000: {sizes:?}");
        assert!((420..=580).contains(&sizes[2]), "50 % of 1000: {sizes:?}");
        assert_eq!(sizes[3], 1000);
        assert!(members(&p, 0, f.keys()).is_subset(&members(&p, 1, f.keys())));
        // A small group still gets min_devices canaries; adding devices never drops one from a wave by hash.
        let small = fleet(3);
        assert_eq!(members(&p, 0, small.keys()).len(), 2);
        let big = fleet(2000);
        let by_hash: Vec<_> = members(&p, 1, f.keys())
            .into_iter()
            .filter(|d| bucket(d) < 1000)
            .collect();
        assert!(by_hash
            .iter()
            .all(|d| members(&p, 1, big.keys()).contains(d)));
    }

    #[test]
    fn shadow_gate_halts_on_disagreement_and_passes_on_agreement() {
        let p = Progress::new(plan(1), 0);
        let mut f = fleet(200);
        let wave: Vec<String> = members(&p.plan, 0, f.keys()).into_iter().collect();
        assert!(matches!(p.decide(&p.read(&f, 0)), Decision::Wait(_)));
        for d in &wave {
            let v = f.get_mut(d).unwrap();
            v.candidate_version = Some(2);
            v.shadow_runs = 50;
            v.shadow_agreements = 40;
        }
        // 0.8 agreement < 0.9: halt, once the shadow time has passed.
        assert!(matches!(p.decide(&p.read(&f, 0)), Decision::Wait(_)));
        assert!(matches!(p.decide(&p.read(&f, 1500)), Decision::Halt(_)));
        for d in &wave {
            f.get_mut(d).unwrap().shadow_agreements = 49;
        }
        assert_eq!(p.decide(&p.read(&f, 1500)), Decision::Advance);
        // Labels agree but the candidate's confidence collapsed (edge-flat): halted in shadow, before it goes live.
        let mut flat = f.clone();
        for d in &wave {
            flat.get_mut(d).unwrap().shadow_confidence = Some((0.97, 0.34));
        }
        assert!(
            matches!(p.decide(&p.read(&flat, 1500)), Decision::Halt(h) if h.contains("confidence"))
        );
        for d in &wave {
            flat.get_mut(d).unwrap().shadow_confidence = Some((0.97, 0.95));
        }
        assert_eq!(p.decide(&p.read(&flat, 1500)), Decision::Advance);
        // Too few devices report: wait, or halt once the phase timeout has passed.
        let mut silent = fleet(200);
        silent.get_mut(&wave[0]).unwrap().candidate_version = Some(2);
        assert!(matches!(
            p.decide(&p.read(&silent, 60_000)),
            Decision::Wait(_)
        ));
        let mut timed = p.clone();
        timed.plan.gates.phase_timeout_s = 30;
        assert!(
            matches!(timed.decide(&timed.read(&silent, 60_000)), Decision::Halt(h) if h.contains("within 30 s"))
        );
        let a = p.advance(1500);
        assert_eq!(a.phase, Phase::Active);
        assert_eq!(a.wave, 0);
    }

    #[test]
    fn active_gate_counts_rollbacks_and_advances_to_done() {
        let mut p = Progress::new(plan(0), 0);
        let mut f = fleet(200);
        let owed = p.owed(&f);
        assert!(owed.iter().all(|(_, o)| *o == Owed::Update));
        for (d, _) in &owed {
            p.sent.insert(
                d.clone(),
                Sent {
                    update: Some(7),
                    ..Default::default()
                },
            );
        }
        let d0 = owed[0].0.clone();
        let view = DeviceView {
            online: true,
            live_version: Some(1),
            rolled_back: vec![(2, "probation: drift".into())],
            ..Default::default()
        };
        assert!(p.observe(&d0, &view, 10));
        assert!(!p.observe(&d0, &view, 10), "counted once");
        assert!(
            matches!(p.decide(&p.read(&f, 10)), Decision::Halt(_)),
            "1 of {} failed",
            owed.len()
        );
        // Offline and never sent: not targeted; offline after being sent: targeted, not reporting.
        let mut gone = fleet(200);
        let mut q = Progress::new(plan(0), 0);
        let canaries: Vec<String> = members(&q.plan, 0, gone.keys()).into_iter().collect();
        gone.get_mut(&canaries[0]).unwrap().online = false;
        assert_eq!(q.read(&gone, 0).targeted, canaries.len() - 1);
        q.sent.insert(
            canaries[0].clone(),
            Sent {
                update: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(q.read(&gone, 0).targeted, canaries.len());
        // A healthy wave: every device committed.
        let mut q = Progress::new(plan(0), 0);
        for w in 0..4 {
            for d in members(&q.plan, q.wave, f.keys()) {
                f.get_mut(&d).unwrap().live_version = Some(2);
            }
            assert_eq!(q.decide(&q.read(&f, 0)), Decision::Advance, "wave {w}");
            q = q.advance(0);
        }
        assert_eq!(q.phase, Phase::Done);
        assert!(q.owed(&f).is_empty());
    }

    #[test]
    fn sequence_numbers_are_reserved_above_the_clock_and_the_last() {
        let mut p = Progress::new(plan(0), 0);
        assert_eq!(p.reserve(3, 1000), 1001);
        assert_eq!(p.last_seq, 1003);
        assert_eq!(p.reserve(1, 500), 1004);
    }

    #[test]
    fn progress_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = ProgressFile::new(dir.path()).unwrap();
        assert!(f.load().unwrap().is_none());
        let p = Progress::new(plan(5), 42);
        f.save(&p).unwrap();
        assert_eq!(f.load().unwrap().unwrap(), p);
        assert_eq!(f.control().unwrap(), Control::default());
    }

    /// The summary is published as JSON and read back by `outpostctl watch`: its fields keep their names, and a
    /// halted rollout says why.
    #[test]
    fn the_summary_reads_back_with_the_names_watchers_read() {
        let f = fleet(4);
        let p = Progress::new(plan(5), 0).halt("too many rollbacks".into(), 10);
        let s = p.summary(&f, 20);
        let text = serde_json::to_string(&s).unwrap();
        let back: RolloutSummary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in [
            "rollout",
            "group",
            "bundle",
            "waves",
            "wave",
            "phase",
            "reason",
            "paused",
            "gate",
            "decision",
            "devices",
            "sent",
            "live_on_version",
            "staged",
            "failed",
            "history",
        ] {
            assert!(v.get(key).is_some(), "{key} in {text}");
        }
        assert_eq!(v["phase"], "halted", "{text}");
        assert_eq!(s.reason.as_deref(), Some("too many rollbacks"));
        assert_eq!((s.bundle.version, s.devices, s.wave), (2, 4, 1));
    }
}
