//! Judging a newly activated model on live traffic: pure bookkeeping, no I/O, so every verdict is unit-tested.
//!
//! The service feeds every model run (its run time and top-1 confidence) into a [`Window`] for the model that serves
//! normally, or into the [`Probation`] while a trial runs. At the flip the old model's window becomes the trial's
//! baseline. The verdict compares like with like: run time on this device, and the confidence distribution on this
//! device's traffic, which is what "quality" can mean without labels.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::ProbationConfig;
use crate::inference::Release;
pub use crate::telemetry::percentile;
use crate::wire::status::TrialSummary;

/// The most recent runs of one model.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Run time and, for a classifier, top-1 confidence (a raw tensor model has none: its trial is judged on errors
    /// and latency alone).
    runs: VecDeque<(u64, Option<f32>)>,
    /// A task model's count per run (a detector's boxes, a scorer's positive scores; empty for other models), the
    /// second figure its trial compares.
    counts: VecDeque<f32>,
}

/// Runs kept per model: enough for a p99 and a distribution, small enough to copy at a flip.
pub const WINDOW: usize = 1024;

impl Window {
    pub fn push(&mut self, run_us: u64, confidence: f32) {
        self.push_run(run_us, Some(confidence));
    }

    /// A run with or without a confidence.
    pub fn push_run(&mut self, run_us: u64, confidence: Option<f32>) {
        if self.runs.len() == WINDOW {
            self.runs.pop_front();
        }
        self.runs.push_back((run_us, confidence));
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    fn latencies(&self) -> Vec<u64> {
        self.runs.iter().map(|r| r.0).collect()
    }

    fn confidences(&self) -> Vec<f32> {
        self.runs.iter().filter_map(|r| r.1).collect()
    }

    /// A task model's run: its count beside its confidence.
    pub fn push_count(&mut self, count: usize) {
        if self.counts.len() == WINDOW {
            self.counts.pop_front();
        }
        self.counts.push_back(count as f32);
    }

    fn counts(&self) -> Vec<f32> {
        self.counts.iter().copied().collect()
    }
}

/// The KS distance that two samples of sizes `n` and `m` from one distribution exceed with probability 0.001:
/// c(α) · sqrt((n + m) / (n · m)), c(0.001) = 1.949. A fixed threshold alone rolled good models back on small
/// samples (a fleet simulation with 10-run trials lost 6 of 50 devices to noise: KS 0.459 against 0.3).
pub fn ks_critical(n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let (n, m) = (n as f64, m as f64);
    1.949 * ((n + m) / (n * m)).sqrt()
}

/// Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical distribution functions.
pub fn ks_distance(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Continue,
    Commit(String),
    Rollback(String),
}

/// One trial in progress.
#[derive(Debug, Clone)]
pub struct Probation {
    /// The release on trial: runs and errors of any other are not its own.
    pub release: Release,
    /// [`Release::id`], for the comparisons each run makes.
    pub release_id: String,
    config: ProbationConfig,
    started: Instant,
    baseline: Window,
    runs: Window,
    requests: u64,
    errors: u64,
    last_error: Option<String>,
}

impl Probation {
    pub fn new(
        release: Release,
        baseline: Window,
        config: &ProbationConfig,
        now: Instant,
    ) -> Probation {
        Probation {
            release_id: release.id(),
            release,
            config: config.clone(),
            started: now,
            baseline,
            runs: Window::default(),
            requests: 0,
            errors: 0,
            last_error: None,
        }
    }

    pub fn record_run(&mut self, run_us: u64, confidence: Option<f32>) {
        self.requests += 1;
        self.runs.push_run(run_us, confidence);
    }

    /// A task model's count (boxes, positive scores) in the run just recorded.
    pub fn record_count(&mut self, count: usize) {
        self.runs.push_count(count);
    }

    pub fn record_error(&mut self, message: &str) {
        self.requests += 1;
        self.errors += 1;
        self.last_error = Some(message.to_string());
    }

    /// What the evidence so far says. Failures are checked before the commit conditions, so a trial that reaches
    /// its request count with a bad last run still rolls back.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let c = &self.config;
        if self.errors > c.max_errors {
            return Verdict::Rollback(format!(
                "{} failed run(s) on trial (tolerated: {}); last: {}",
                self.errors,
                c.max_errors,
                self.last_error.as_deref().unwrap_or("?")
            ));
        }
        let enough = |w: &Window| w.len() as u64 >= c.min_samples;
        if enough(&self.runs) && enough(&self.baseline) {
            let (new, old) = (
                percentile(&self.runs.latencies(), 0.99).unwrap_or(0),
                percentile(&self.baseline.latencies(), 0.99).unwrap_or(0),
            );
            let bound = old as f64 * c.max_latency_ratio + c.latency_slack_ms * 1000.0;
            if new as f64 > bound {
                return Verdict::Rollback(format!(
                    "latency p99 {new} us exceeds the bound {bound:.0} us (previous model p99 {old} us x {} + {} ms)",
                    c.max_latency_ratio, c.latency_slack_ms
                ));
            }
            let (tc, bc) = (self.runs.confidences(), self.baseline.confidences());
            // A raw tensor model gives no confidence: no samples, no drift verdict (ks_distance of nothing is 0).
            let d = ks_distance(&tc, &bc);
            let (tm, bm) = (mean(&tc), mean(&bc));
            let limit = c.max_confidence_drift.max(ks_critical(tc.len(), bc.len()));
            if d > limit && bm - tm > c.min_confidence_drop {
                return Verdict::Rollback(format!(
                    "confidence drifted: KS distance {d:.3} > {limit:.3} with mean confidence {tm:.3} against {bm:.3} before",
                ));
            }
            // A task model: what it counts per input (a detector's boxes, a scorer's positive scores), on the same
            // test. A detector that finds half the objects (or twice as many) on the same traffic, or a scorer that
            // calls everything an anomaly, has drifted even when its confidence does not fall.
            let (tn, bn) = (self.runs.counts(), self.baseline.counts());
            let d = ks_distance(&tn, &bn);
            let (tm, bm) = (mean(&tn), mean(&bn));
            let limit = c.max_confidence_drift.max(ks_critical(tn.len(), bn.len()));
            if d > limit && (tm - bm).abs() > 0.5 * bm.max(0.5) {
                return Verdict::Rollback(format!(
                    "answers per input drifted (boxes, or positive scores): KS distance {d:.3} > {limit:.3} with \
                     {tm:.2} per input against {bm:.2} before",
                ));
            }
        }
        if c.requests > 0 && self.requests >= c.requests {
            return Verdict::Commit(format!("passed {} requests on trial", self.requests));
        }
        let elapsed = now.saturating_duration_since(self.started);
        if c.seconds > 0 && elapsed >= Duration::from_secs(c.seconds) {
            return Verdict::Commit(format!(
                "passed {} s on trial ({} requests)",
                elapsed.as_secs(),
                self.requests
            ));
        }
        Verdict::Continue
    }

    /// What status and telemetry show about the trial.
    pub fn summary(&self, now: Instant) -> TrialSummary {
        TrialSummary {
            version: self.release.version,
            digest: self.release.digest.clone(),
            requests: self.requests,
            errors: self.errors,
            elapsed_s: now.saturating_duration_since(self.started).as_secs(),
            baseline_runs: self.baseline.len() as u64,
            p99_us: percentile(&self.runs.latencies(), 0.99),
            baseline_p99_us: percentile(&self.baseline.latencies(), 0.99),
            mean_confidence: mean(&self.runs.confidences()),
            baseline_mean_confidence: mean(&self.baseline.confidences()),
            requests_to_commit: self.config.requests,
            seconds_to_commit: self.config.seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release {
            name: "m".into(),
            version: 2,
            digest: "d".into(),
            spec_digest: "s".into(),
        }
    }

    fn config() -> ProbationConfig {
        ProbationConfig {
            requests: 100,
            seconds: 60,
            max_errors: 0,
            max_latency_ratio: 2.0,
            latency_slack_ms: 1.0,
            max_confidence_drift: 0.3,
            min_confidence_drop: 0.05,
            min_samples: 20,
        }
    }

    fn baseline(us: u64, conf: f32) -> Window {
        let mut w = Window::default();
        for i in 0..50 {
            w.push(us + i % 5, conf - (i % 7) as f32 * 0.01);
        }
        w
    }

    /// A task model whose count per input parts from the baseline's (a scorer that calls everything an anomaly,
    /// at the same confidence) is rolled back; one that counts alike commits.
    #[test]
    fn a_task_models_count_per_input_is_watched_beside_its_confidence() {
        let now = Instant::now();
        let mut base = baseline(100, 0.9);
        for i in 0..50 {
            base.push_count(usize::from(i % 25 == 0));
        }
        for (count, rolled_back) in [(1usize, true), (0, false)] {
            let mut p = Probation::new(release(), base.clone(), &config(), now);
            for i in 0..100u64 {
                p.record_run(100 + i % 5, Some(0.9 - (i % 7) as f32 * 0.01));
                p.record_count(count);
            }
            let v = p.verdict(now);
            assert_eq!(matches!(v, Verdict::Rollback(_)), rolled_back, "{v:?}");
            if let Verdict::Rollback(why) = v {
                assert!(why.contains("per input"), "{why}");
            }
        }
    }

    #[test]
    fn percentile_and_ks() {
        assert_eq!(percentile(&[], 0.5), None);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(ks_distance(&[0.1, 0.2], &[0.1, 0.2]), 0.0);
        assert!((ks_critical(30, 1024) - 0.36).abs() < 0.01);
        assert!(ks_critical(10, 1024) > 0.6 && ks_critical(1000, 1000) < 0.1);
        assert_eq!(ks_distance(&[0.1, 0.2], &[0.8, 0.9]), 1.0);
        let d = ks_distance(&[0.1, 0.5, 0.9], &[0.5, 0.9, 0.95]);
        assert!((d - 1.0 / 3.0).abs() < 1e-9, "{d}");
    }

    #[test]
    fn a_healthy_model_commits_after_its_requests_or_its_seconds() {
        let t0 = Instant::now();
        let mut p = Probation::new(release(), baseline(100, 0.95), &config(), t0);
        for _ in 0..99 {
            p.record_run(110, Some(0.95));
        }
        assert_eq!(p.verdict(t0), Verdict::Continue);
        p.record_run(110, Some(0.95));
        assert!(matches!(p.verdict(t0), Verdict::Commit(_)));

        let p = Probation::new(release(), Window::default(), &config(), t0);
        assert_eq!(p.verdict(t0 + Duration::from_secs(59)), Verdict::Continue);
        assert!(matches!(
            p.verdict(t0 + Duration::from_secs(60)),
            Verdict::Commit(_)
        ));
    }

    #[test]
    fn errors_latency_and_drift_roll_back() {
        let t0 = Instant::now();
        let mut p = Probation::new(release(), baseline(100, 0.95), &config(), t0);
        p.record_error("boom");
        assert!(matches!(p.verdict(t0), Verdict::Rollback(r) if r.contains("boom")));

        let mut p = Probation::new(release(), baseline(1000, 0.95), &config(), t0);
        for _ in 0..19 {
            p.record_run(5000, Some(0.95));
        }
        assert_eq!(p.verdict(t0), Verdict::Continue, "too few runs to judge");
        p.record_run(5000, Some(0.95));
        assert!(matches!(p.verdict(t0), Verdict::Rollback(r) if r.contains("latency")));

        let mut p = Probation::new(release(), baseline(100, 0.95), &config(), t0);
        for _ in 0..20 {
            p.record_run(100, Some(0.4));
        }
        assert!(matches!(p.verdict(t0), Verdict::Rollback(r) if r.contains("drift")));

        // A systematic but harmless shift (KS 1.0, mean 0.03 lower: an fp32 build of an int8 model) is not one.
        let mut p = Probation::new(release(), baseline(100, 0.95), &config(), t0);
        for _ in 0..20 {
            p.record_run(100, Some(0.88));
        }
        assert!(ks_distance(&[0.88; 20], &baseline(100, 0.95).confidences()) > 0.9);
        assert_eq!(p.verdict(t0), Verdict::Continue);

        // A more confident model is not a degradation.
        let mut p = Probation::new(release(), baseline(100, 0.6), &config(), t0);
        for _ in 0..20 {
            p.record_run(100, Some(0.99));
        }
        assert_eq!(p.verdict(t0), Verdict::Continue);
    }

    #[test]
    fn without_a_baseline_only_errors_and_time_judge() {
        let t0 = Instant::now();
        let mut p = Probation::new(release(), Window::default(), &config(), t0);
        for _ in 0..50 {
            p.record_run(1_000_000, Some(0.1));
        }
        assert_eq!(p.verdict(t0), Verdict::Continue);
    }
}
