//! The drift alarm of one model: live traffic against the release's baseline on its calibration data.
//!
//! Under drift a device looks healthy (it answers, fast) while its inputs no longer look like what the model was
//! made for: accuracy falls and the cloud bill rises. The bundle carries the release's baseline (its hardness scores
//! on calibration data and the forward rate they imply); the device keeps the hardness of its last `window` model
//! runs and compares: the two-sample Kolmogorov-Smirnov test at the p-value probation uses (α = 0.001), or the forward
//! rate the policy wants above twice the baseline's. Either raises the alarm; it clears only when both come back well
//! inside (KS under 3/4 of the critical distance and the rate under 1.5x), so it does not flap at the edge.
//!
//! Pure bookkeeping; no I/O.

use std::collections::VecDeque;

use super::probation::{ks_critical, ks_distance};
use crate::bundle::Baseline;
use crate::wire::status::DriftStatus;

/// Runs between two checks once the window is full (a check sorts the window).
const CHECK_EVERY: usize = 25;

#[derive(Debug, Default)]
pub struct Drift {
    /// The last runs: hardness, and whether the policy wanted to forward it.
    runs: VecDeque<(f32, bool)>,
    since_check: usize,
    raised: bool,
    /// Times raised and cleared, for status.
    raised_total: u64,
    cleared_total: u64,
    last: Option<Reading>,
    /// A comparison made since [`Drift::take_reading`] last looked.
    fresh: bool,
}

/// One comparison with the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub ks: f64,
    pub critical: f64,
    pub forward_rate: f64,
    pub baseline_rate: f64,
    pub runs: usize,
}

/// A change of the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raised,
    Cleared,
}

impl Drift {
    /// Forgets the runs (a new release serves: its traffic is compared with its own baseline).
    pub fn reset(&mut self) {
        let (raised_total, cleared_total) = (self.raised_total, self.cleared_total);
        *self = Drift {
            raised_total,
            cleared_total,
            ..Default::default()
        };
    }

    /// One model run. Returns a change of the alarm, if this run made one.
    pub fn observe(
        &mut self,
        hardness: f32,
        wanted: bool,
        window: usize,
        baseline: &Baseline,
    ) -> Option<Change> {
        if !hardness.is_finite() || baseline.hardness.is_empty() {
            return None;
        }
        self.runs.push_back((hardness, wanted));
        while self.runs.len() > window {
            self.runs.pop_front();
        }
        self.since_check += 1;
        if self.runs.len() < window || self.since_check < CHECK_EVERY {
            return None;
        }
        self.since_check = 0;
        let live: Vec<f32> = self.runs.iter().map(|r| r.0).collect();
        let ks = ks_distance(&live, &baseline.hardness);
        let critical = ks_critical(live.len(), baseline.hardness.len());
        let forward_rate = self.runs.iter().filter(|r| r.1).count() as f64 / live.len() as f64;
        let baseline_rate = baseline.forward_rate as f64;
        let reading = Reading {
            ks,
            critical,
            forward_rate,
            baseline_rate,
            runs: live.len(),
        };
        self.last = Some(reading);
        self.fresh = true;
        // The rate test needs a rate to double: a baseline that forwards nothing is held to one percent.
        let rate_bar = baseline_rate.max(0.01);
        if !self.raised && (ks > critical || forward_rate > 2.0 * rate_bar) {
            self.raised = true;
            self.raised_total += 1;
            return Some(Change::Raised);
        }
        if self.raised && ks < 0.75 * critical && forward_rate < 1.5 * rate_bar {
            self.raised = false;
            self.cleared_total += 1;
            return Some(Change::Cleared);
        }
        None
    }

    /// The comparison made since the last call, if one was (what the gauges show; most runs make none).
    pub fn take_reading(&mut self) -> Option<Reading> {
        std::mem::take(&mut self.fresh)
            .then_some(self.last)
            .flatten()
    }

    pub fn raised(&self) -> bool {
        self.raised
    }

    /// What status shows (`None` until a comparison was made).
    pub fn status(&self, baseline: Option<&Baseline>) -> Option<DriftStatus> {
        let b = baseline?;
        let r = self.last;
        Some(DriftStatus {
            drift: self.raised,
            ks: r.map(|r| round(r.ks)),
            critical: r.map(|r| round(r.critical)),
            forward_rate: r.map(|r| round(r.forward_rate)),
            baseline_forward_rate: round(b.forward_rate as f64),
            runs: r.map_or(self.runs.len() as u64, |r| r.runs as u64),
            raised_total: self.raised_total,
            cleared_total: self.cleared_total,
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> Baseline {
        Baseline {
            hardness: (0..500).map(|i| (i as f32 / 500.0).powi(4)).collect(),
            forward_rate: 0.05,
            score: crate::bundle::BaselineScore::Task,
        }
    }

    /// In-distribution traffic never raises; shifted traffic raises once (no flapping) and clears once it is back.
    #[test]
    fn raised_on_shift_cleared_after_without_flapping() {
        let b = baseline();
        let mut d = Drift::default();
        let same = |i: usize| ((i * 7919 % 500) as f32 / 500.0).powi(4);
        let shifted = |i: usize| ((i * 7919 % 500) as f32 / 500.0).powf(0.7);
        let mut changes = Vec::new();
        for i in 0..2000 {
            let h = same(i);
            changes.extend(d.observe(h, h > 0.8, 200, &b));
        }
        assert!(changes.is_empty(), "{changes:?}");
        for i in 0..2000 {
            let h = shifted(i);
            changes.extend(d.observe(h, h > 0.8, 200, &b));
        }
        assert_eq!(changes, vec![Change::Raised]);
        assert!(d.status(Some(&b)).unwrap().drift);
        for i in 0..2000 {
            let h = same(i);
            changes.extend(d.observe(h, h > 0.8, 200, &b));
        }
        assert_eq!(changes, vec![Change::Raised, Change::Cleared]);
        let s = d.status(Some(&b)).unwrap();
        assert!(
            !s.drift && s.raised_total == 1 && s.cleared_total == 1,
            "{s:?}"
        );
        assert!(d.status(None).is_none(), "no baseline, no alarm");
    }
}
