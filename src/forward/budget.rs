//! The forward budget of one model: how many hard cases may go to the cloud tier, and which.
//!
//! Under drift a fixed hardness threshold forwards whatever share of traffic the new inputs make hard (63 % of the
//! shifted digits against 5 % in distribution): the cloud bill follows the drift. The budget caps it with
//! `max_fraction` (forwarded cases / model runs over a sliding window; cache hits and resends are not runs) and
//! `max_per_s` (forwarded cases per second, averaged over the window). Over budget the hardest cases still go
//! first: the threshold rises to the quantile of the window's live hardness scores that leaves `max_fraction` of them
//! above it (never below the configured threshold), so the cases sent are the hardest of the traffic, not the first
//! ones of each second as a token bucket would pick. A cap on the window's count keeps the share from overshooting
//! while the quantile settles. The others are answered by the edge and counted.
//!
//! Pure bookkeeping over explicit instants: every decision is unit-tested.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Runs remembered per window at most (a busy model's window is sampled down to this many, newest kept).
pub const MAX_WINDOW_RUNS: usize = 65_536;
/// Below this many runs in the window the quantile is not trusted: only the count cap applies.
const MIN_QUANTILE_RUNS: usize = 50;

/// What the budget allows; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetLimits {
    pub max_fraction: Option<f32>,
    pub max_per_s: Option<f32>,
    pub window: Duration,
}

impl BudgetLimits {
    pub fn is_unlimited(&self) -> bool {
        self.max_fraction.is_none() && self.max_per_s.is_none()
    }
}

/// What to do with one model run's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not hard at the configured threshold: the edge answers.
    Easy,
    /// Hard, and within the budget: forward it.
    Forward,
    /// Hard, but over the budget (or not among the hardest of the window): the edge answers, and it is counted.
    Skip,
}

#[derive(Debug, Default)]
pub struct Budget {
    /// The window's runs: when, how hard, whether forwarded.
    runs: VecDeque<(Instant, f32, bool)>,
    forwarded_in_window: usize,
    pub forwarded_total: u64,
    pub skipped_total: u64,
    /// The threshold the last hard run was held to (the configured one, or the budget's quantile above it).
    pub last_threshold: Option<f32>,
}

impl Budget {
    fn evict(&mut self, now: Instant, window: Duration) {
        while let Some(&(t, _, fwd)) = self.runs.front() {
            if now.saturating_duration_since(t) <= window && self.runs.len() < MAX_WINDOW_RUNS {
                break;
            }
            self.runs.pop_front();
            if fwd {
                self.forwarded_in_window -= 1;
            }
        }
    }

    /// Decides for one model run of hardness `hardness`, where `threshold` is the configured hardness threshold (a
    /// run is hard when its hardness is above it), and records the run.
    pub fn decide(
        &mut self,
        limits: &BudgetLimits,
        threshold: f32,
        hardness: f32,
        now: Instant,
    ) -> Decision {
        self.evict(now, limits.window);
        let wants = hardness > threshold;
        let decision = if !wants {
            Decision::Easy
        } else if limits.is_unlimited() {
            self.last_threshold = Some(threshold);
            Decision::Forward
        } else {
            let n = self.runs.len() + 1;
            let window_s = limits.window.as_secs_f64().max(1e-3);
            let by_rate = limits.max_per_s.map(|r| r as f64 * window_s / n as f64);
            let fraction = [limits.max_fraction.map(|f| f as f64), by_rate]
                .into_iter()
                .flatten()
                .fold(1.0f64, f64::min)
                .clamp(0.0, 1.0);
            // The quantile aims at the share still unspent in the window: the cap below cuts every local excess,
            // so without this the share would settle under its budget.
            let spent = self.forwarded_in_window as f64 / n as f64;
            let aim = (2.0 * fraction - spent).clamp(0.0, 1.0);
            let bar = self.quantile(aim).map_or(threshold, |q| q.max(threshold));
            self.last_threshold = Some(bar);
            let room = ((self.forwarded_in_window + 1) as f64) <= fraction * n as f64 + 1e-9;
            if hardness > bar && room {
                Decision::Forward
            } else {
                Decision::Skip
            }
        };
        let fwd = decision == Decision::Forward;
        match decision {
            Decision::Forward => self.forwarded_total += 1,
            Decision::Skip => self.skipped_total += 1,
            Decision::Easy => {}
        }
        if fwd {
            self.forwarded_in_window += 1;
        }
        self.runs.push_back((now, hardness, fwd));
        decision
    }

    /// The hardness above which `fraction` of the window's runs lie (`None` while the window is too small to say).
    fn quantile(&self, fraction: f64) -> Option<f32> {
        if self.runs.len() < MIN_QUANTILE_RUNS {
            return None;
        }
        let mut h: Vec<f32> = self.runs.iter().map(|r| r.1).collect();
        let above = ((fraction * h.len() as f64).floor() as usize).min(h.len());
        if above == 0 {
            return h.iter().copied().reduce(f32::max);
        }
        let k = h.len() - above;
        let (_, kth, _) = h.select_nth_unstable_by(k.saturating_sub(1), f32::total_cmp);
        Some(*kth)
    }

    /// Runs and forwarded cases in the window now.
    pub fn window(&mut self, now: Instant, window: Duration) -> (usize, usize) {
        self.evict(now, window);
        (self.runs.len(), self.forwarded_in_window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: Option<f32>, r: Option<f32>) -> BudgetLimits {
        BudgetLimits {
            max_fraction: f,
            max_per_s: r,
            window: Duration::from_secs(60),
        }
    }

    /// A uniform stream where 60 % of runs are hard: a 10 % budget forwards 10 % +- 1 point, and the ones it sends
    /// are the hardest (a token bucket would send hard cases of every hardness alike).
    #[test]
    fn the_budget_holds_its_fraction_and_sends_the_hardest() {
        let mut b = Budget::default();
        let l = limits(Some(0.1), None);
        let t0 = Instant::now();
        let mut x: u64 = 12345;
        let (mut sent, mut skipped, mut total) = (Vec::new(), Vec::new(), 0);
        for i in 0..5000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let h = (x >> 40) as f32 / (1u64 << 24) as f32;
            let d = b.decide(&l, 0.4, h, t0 + Duration::from_millis(i * 10));
            if i >= 1000 {
                total += 1;
                match d {
                    Decision::Forward => sent.push(h),
                    Decision::Skip => skipped.push(h),
                    Decision::Easy => assert!(h <= 0.4),
                }
            }
        }
        let share = sent.len() as f64 / total as f64;
        assert!((share - 0.1).abs() <= 0.01, "{share}");
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(
            mean(&sent) > mean(&skipped) + 0.2,
            "{} vs {}",
            mean(&sent),
            mean(&skipped)
        );
        assert!(sent.iter().all(|h| *h > 0.8), "only the hardest tenth goes");
    }

    #[test]
    fn without_limits_every_hard_case_goes_and_a_rate_limits_per_second() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        assert_eq!(
            b.decide(&limits(None, None), 0.5, 0.9, t0),
            Decision::Forward
        );
        assert_eq!(b.decide(&limits(None, None), 0.5, 0.1, t0), Decision::Easy);
        // 0.5 per second over a 60 s window: 30 cases in a minute of all-hard traffic at 10 per second.
        let mut b = Budget::default();
        let l = limits(None, Some(0.5));
        let sent = (0..600u64)
            .filter(|i| {
                b.decide(
                    &l,
                    0.0,
                    0.5 + (*i % 7) as f32 / 100.0,
                    t0 + Duration::from_millis(i * 100),
                ) == Decision::Forward
            })
            .count();
        assert!((25..=31).contains(&sent), "{sent}");
        assert_eq!(b.skipped_total + b.forwarded_total, 600);
    }
}
