//! A model's forward policy: the forwarder that sends hard cases to the cloud, the serving release's own threshold,
//! budget and hardness baseline (from its bundle), the budget's bookkeeping and the drift alarm. One lock per piece.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::lock;
use crate::bundle::{Baseline, BaselineScore, ForwardBudget};
use crate::forward::budget::{Budget, BudgetLimits, Decision};
use crate::forward::Forwarder;
use crate::serve::drift::{Change, Drift, Reading};
use crate::serve::settings::{SettingKey, Settings};
use crate::wire::status::{BudgetStatus, DriftStatus, ForwardStatus};

#[derive(Default)]
pub(super) struct Forwarding {
    forwarder: OnceLock<Arc<Forwarder>>,
    /// The serving release's hardness threshold, budget and baseline (from its slot record).
    threshold: Mutex<Option<f32>>,
    release_budget: Mutex<Option<ForwardBudget>>,
    baseline: Mutex<Option<Baseline>>,
    budget: Mutex<Budget>,
    drift: Mutex<Drift>,
}

/// What one run's hardness did: the budget's decision, a change of the drift alarm and its fresh comparison, if any.
pub(super) struct Weighed {
    pub decision: Decision,
    pub drift: Option<Change>,
    pub reading: Option<Reading>,
}

impl Forwarding {
    pub(super) fn set_forwarder(&self, f: Arc<Forwarder>) {
        let _ = self.forwarder.set(f);
    }

    pub(super) fn forwarder(&self) -> Option<&Arc<Forwarder>> {
        self.forwarder.get()
    }

    pub(super) fn set_threshold(&self, t: Option<f32>) {
        *lock(&self.threshold) = t;
    }

    /// The serving release's budget and baseline; true when the baseline changed (the drift window starts over).
    pub(super) fn set_release(
        &self,
        budget: Option<ForwardBudget>,
        baseline: Option<Baseline>,
    ) -> bool {
        *lock(&self.release_budget) = budget;
        let mut b = lock(&self.baseline);
        if *b == baseline {
            return false;
        }
        lock(&self.drift).reset();
        *b = baseline;
        true
    }

    /// This model's hardness thresholds: set at run time, and its release's manifest one.
    pub(super) fn thresholds(&self, settings: &Settings) -> (Option<f32>, Option<f32>) {
        let runtime = settings
            .get(SettingKey::HardnessThreshold)
            .map(|v| v as f32);
        (runtime, *lock(&self.threshold))
    }

    /// The budget in force: `set` (forward.max_fraction, forward.max_per_s), then the configuration, then the
    /// release's bundle.
    pub(super) fn limits(
        &self,
        settings: &Settings,
        config: &crate::config::ForwardConfig,
    ) -> BudgetLimits {
        let setting = |k| settings.get(k).map(|v| v as f32);
        let release = *lock(&self.release_budget);
        BudgetLimits {
            max_fraction: setting(SettingKey::ForwardMaxFraction)
                .or(config.max_fraction)
                .or(release.and_then(|b| b.max_fraction)),
            max_per_s: setting(SettingKey::ForwardMaxPerS)
                .or(config.max_per_s)
                .or(release.and_then(|b| b.max_per_s)),
            window: Duration::from_secs(config.budget_window_s),
        }
    }

    /// One run's hardness against `bar`: the drift alarm notes it (when the release's baseline is of the same
    /// score) and, with a forwarder, the budget decides whether it goes to the cloud.
    pub(super) fn weigh(
        &self,
        (hardness, bar, score): (f32, f32, BaselineScore),
        settings: &Settings,
        config: &crate::config::ForwardConfig,
    ) -> Weighed {
        let (mut drift, mut reading) = (None, None);
        if let Some(b) = lock(&self.baseline).as_ref().filter(|b| b.score == score) {
            let mut d = lock(&self.drift);
            drift = d.observe(hardness, hardness > bar, config.drift_window as usize, b);
            reading = d.take_reading();
        }
        let decision = if self.forwarder.get().is_none() {
            if hardness > bar {
                Decision::Skip
            } else {
                Decision::Easy
            }
        } else {
            lock(&self.budget).decide(
                &self.limits(settings, config),
                bar,
                hardness,
                Instant::now(),
            )
        };
        Weighed {
            decision,
            drift,
            reading,
        }
    }

    pub(super) fn drift_raised(&self) -> bool {
        lock(&self.drift).raised()
    }

    pub(super) fn drift_status(&self) -> Option<DriftStatus> {
        lock(&self.drift).status(lock(&self.baseline).as_ref())
    }

    /// The forwarder's status with this model's thresholds and budget (none without a forwarder).
    pub(super) fn status(
        &self,
        settings: &Settings,
        config: &crate::config::ForwardConfig,
    ) -> Option<ForwardStatus> {
        let f = self.forwarder.get()?;
        let (runtime, manifest) = self.thresholds(settings);
        let mut status = f.status(runtime, manifest);
        let limits = self.limits(settings, config);
        let mut b = lock(&self.budget);
        let (runs, fwd) = b.window(Instant::now(), limits.window);
        status.budget = (!limits.is_unlimited()).then(|| BudgetStatus {
            max_fraction: limits.max_fraction,
            max_per_s: limits.max_per_s,
            window_s: limits.window.as_secs(),
            window_runs: runs as u64,
            window_forwarded: fwd as u64,
            forwarded: b.forwarded_total,
            skipped: b.skipped_total,
            bar: b.last_threshold,
        });
        Some(status)
    }
}
