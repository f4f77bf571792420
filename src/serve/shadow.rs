//! What the device learns about a staged candidate model before it goes live: shadow runs (the candidate runs on a
//! sample of requests after the live model answered) and an optional A/B split (the candidate answers a sticky
//! fraction of inputs). The figures feed the status a rollout's gates read.

use std::collections::{HashMap, VecDeque};

use super::probation::{ks_distance, percentile};
use super::ModelInfo;
use crate::wire::status::{
    ArmSummary, ConfidenceQuantiles, Percentiles, ShadowCloud, ShadowSummary,
};

/// Samples kept per distribution: enough for percentiles and a KS distance, bounded whatever the traffic.
const KEEP: usize = 1024;
/// Forwarded cases waiting for the cloud's label, at most.
const PENDING: usize = 4096;

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(v);
}

fn mean(v: &VecDeque<f32>) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64)
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Two raw tensor models' outputs agree when every value is within this absolute tolerance plus as much again
/// relative to the live model's value: the same bytes on other kernels differ by far less (tract against
/// onnxruntime on the VAD model: 3e-7 in probability, 2e-5 in state), a retrained model by far more.
pub const RAW_AGREEMENT: f64 = 1e-3;

/// Whether two raw answers agree (same names, shapes and every value within [`RAW_AGREEMENT`]).
pub fn raw_outputs_agree(
    a: &[crate::inference::TensorValue],
    b: &[crate::inference::TensorValue],
) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.shape == y.shape
                && x.data.len() == y.data.len()
                && x.data
                    .as_f64()
                    .iter()
                    .zip(y.data.as_f64())
                    .all(|(p, q)| (p - q).abs() <= RAW_AGREEMENT * (1.0 + p.abs()))
        })
}

/// A forwarded hard case: the two models' labels, and the cloud's once it answers.
#[derive(Debug, Default)]
struct Pending {
    active: String,
    candidate: Option<String>,
    cloud: Option<String>,
}

/// Shadow figures for the current candidate.
#[derive(Debug, Default)]
pub struct ShadowStats {
    pub model: Option<ModelInfo>,
    pub runs: u64,
    pub agreements: u64,
    pub failures: u64,
    /// Samples skipped because the shadow queue was full (the CPU share was used up).
    pub dropped: u64,
    /// The sum of each run's agreement (1 or 0 for a label or raw outputs, a task's F1 or share of scores on the
    /// same side): [`ShadowStats::agreement`] is its mean.
    agreement_sum: f64,
    active_conf: VecDeque<f32>,
    candidate_conf: VecDeque<f32>,
    active_us: VecDeque<u64>,
    candidate_us: VecDeque<u64>,
    cloud_cases: u64,
    cloud_active_agreed: u64,
    cloud_candidate_agreed: u64,
    pending: HashMap<String, Pending>,
}

/// One shadow run: the live model's answer and the candidate's.
pub struct ShadowRun<'a> {
    pub active_label: &'a str,
    pub active_confidence: f32,
    pub active_us: u64,
    pub candidate_label: &'a str,
    pub candidate_confidence: f32,
    pub candidate_us: u64,
    /// Set when the input was forwarded to the cloud as a hard case.
    pub case_id: Option<&'a str>,
}

impl ShadowStats {
    /// Starts over for a new candidate (or none).
    pub fn reset(&mut self, model: Option<ModelInfo>) {
        *self = ShadowStats {
            model,
            ..Default::default()
        };
    }

    pub fn record(&mut self, r: ShadowRun) {
        self.runs += 1;
        let agreed = r.active_label == r.candidate_label;
        if agreed {
            self.agreements += 1;
            self.agreement_sum += 1.0;
        }
        metrics::counter!(crate::telemetry::SHADOW_RUNS, "agreed" => agreed.to_string())
            .increment(1);
        metrics::histogram!(crate::telemetry::SHADOW_CONFIDENCE, "model" => "active")
            .record(r.active_confidence as f64);
        metrics::histogram!(crate::telemetry::SHADOW_CONFIDENCE, "model" => "candidate")
            .record(r.candidate_confidence as f64);
        metrics::histogram!(crate::telemetry::SHADOW_RUN_SECONDS)
            .record(r.candidate_us as f64 / 1e6);
        push(&mut self.active_conf, r.active_confidence);
        push(&mut self.candidate_conf, r.candidate_confidence);
        push(&mut self.active_us, r.active_us);
        push(&mut self.candidate_us, r.candidate_us);
        if let Some(id) = r.case_id {
            let p = self.pending_entry(id);
            p.active = r.active_label.to_string();
            p.candidate = Some(r.candidate_label.to_string());
            self.settle(id);
        }
    }

    /// One shadow run of a raw tensor model: they agree when every output is within [`RAW_AGREEMENT`]. No
    /// confidences (the model gives none), so the confidence figures stay those of no samples.
    pub fn record_raw(&mut self, agreed: bool, active_us: u64, candidate_us: u64) {
        self.runs += 1;
        if agreed {
            self.agreements += 1;
            self.agreement_sum += 1.0;
        }
        metrics::counter!(crate::telemetry::SHADOW_RUNS, "agreed" => agreed.to_string())
            .increment(1);
        metrics::histogram!(crate::telemetry::SHADOW_RUN_SECONDS).record(candidate_us as f64 / 1e6);
        push(&mut self.active_us, active_us);
        push(&mut self.candidate_us, candidate_us);
    }

    /// One shadow run of a task model (detector, scorer): `agreement` is [`crate::inference::task::agreement`] of
    /// the two answers (detections: F1 of boxes matched at IoU >= 0.5 with the same label; scores: the share on the
    /// same side of their thresholds); a run agrees fully at 1. The confidences are the task's.
    pub fn record_task(
        &mut self,
        agreement: f32,
        (active_confidence, candidate_confidence): (f32, f32),
        active_us: u64,
        candidate_us: u64,
    ) {
        self.runs += 1;
        let agreed = agreement >= 1.0;
        if agreed {
            self.agreements += 1;
        }
        self.agreement_sum += agreement.clamp(0.0, 1.0) as f64;
        metrics::counter!(crate::telemetry::SHADOW_RUNS, "agreed" => agreed.to_string())
            .increment(1);
        metrics::histogram!(crate::telemetry::SHADOW_RUN_SECONDS).record(candidate_us as f64 / 1e6);
        push(&mut self.active_conf, active_confidence);
        push(&mut self.candidate_conf, candidate_confidence);
        push(&mut self.active_us, active_us);
        push(&mut self.candidate_us, candidate_us);
    }

    pub fn failed(&mut self) {
        self.failures += 1;
    }

    pub fn drop_sample(&mut self) {
        self.dropped += 1;
        metrics::counter!(crate::telemetry::SHADOW_DROPPED).increment(1);
    }

    /// The cloud's label for a forwarded case; counted once the candidate's run for it is in too.
    pub fn cloud_label(&mut self, case_id: &str, label: &str) {
        if self.model.is_none() {
            return;
        }
        self.pending_entry(case_id).cloud = Some(label.to_string());
        self.settle(case_id);
    }

    fn pending_entry(&mut self, id: &str) -> &mut Pending {
        if self.pending.len() >= PENDING && !self.pending.contains_key(id) {
            // Bounded: an answer that never comes must not grow memory. Losing the oldest few costs a sample.
            self.pending.clear();
        }
        self.pending.entry(id.to_string()).or_default()
    }

    fn settle(&mut self, id: &str) {
        let done = matches!(
            self.pending.get(id),
            Some(Pending {
                candidate: Some(_),
                cloud: Some(_),
                ..
            })
        );
        if !done {
            return;
        }
        let Some(p) = self.pending.remove(id) else {
            return;
        };
        let (cand, cloud) = (p.candidate.unwrap_or_default(), p.cloud.unwrap_or_default());
        self.cloud_cases += 1;
        if p.active == cloud {
            self.cloud_active_agreed += 1;
            metrics::counter!(crate::telemetry::SHADOW_CLOUD_AGREED, "model" => "active")
                .increment(1);
        }
        if cand == cloud {
            self.cloud_candidate_agreed += 1;
            metrics::counter!(crate::telemetry::SHADOW_CLOUD_AGREED, "model" => "candidate")
                .increment(1);
        }
    }

    /// Mean agreement of the shadow runs: the share where both models gave the same label (or raw outputs), a task's
    /// mean F1 (detections) or share of scores on the same side.
    pub fn agreement(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.agreement_sum / self.runs as f64)
    }

    /// The figures so far (`fraction` is the caller's: the setting in force).
    pub fn summary(&self, fraction: f64) -> Option<ShadowSummary> {
        let model = self.model.as_ref()?;
        let cand: Vec<f32> = self.candidate_conf.iter().copied().collect();
        let act: Vec<f32> = self.active_conf.iter().copied().collect();
        let cand_us: Vec<u64> = self.candidate_us.iter().copied().collect();
        let act_us: Vec<u64> = self.active_us.iter().copied().collect();
        let mut sorted = cand.clone();
        sorted.sort_by(f32::total_cmp);
        let q = |p: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        Some(ShadowSummary {
            model: model.clone(),
            runs: self.runs,
            agreements: self.agreements,
            agreement: self.agreement().map(round),
            failures: self.failures,
            dropped: self.dropped,
            active_mean_confidence: mean(&self.active_conf).map(round),
            candidate_mean_confidence: mean(&self.candidate_conf).map(round),
            candidate_confidence: ConfidenceQuantiles {
                p10: q(0.1),
                p50: q(0.5),
                p90: q(0.9),
            },
            confidence_ks: round(ks_distance(&cand, &act)),
            candidate_run_us: Percentiles {
                p50: percentile(&cand_us, 0.5),
                p99: percentile(&cand_us, 0.99),
            },
            active_run_us: Percentiles {
                p50: percentile(&act_us, 0.5),
                p99: percentile(&act_us, 0.99),
            },
            cloud: ShadowCloud {
                cases: self.cloud_cases,
                active_agreed: self.cloud_active_agreed,
                candidate_agreed: self.cloud_candidate_agreed,
            },
            fraction,
        })
    }
}

/// One arm of an A/B split.
#[derive(Debug, Default)]
pub struct Arm {
    pub requests: u64,
    confidence: VecDeque<f32>,
    run_us: VecDeque<u64>,
}

impl Arm {
    pub fn record(&mut self, name: &'static str, confidence: f32, run_us: Option<u64>) {
        self.requests += 1;
        metrics::counter!(crate::telemetry::AB_REQUESTS, "arm" => name).increment(1);
        metrics::histogram!(crate::telemetry::AB_CONFIDENCE, "arm" => name)
            .record(confidence as f64);
        push(&mut self.confidence, confidence);
        if let Some(us) = run_us {
            metrics::histogram!(crate::telemetry::AB_RUN_SECONDS, "arm" => name)
                .record(us as f64 / 1e6);
            push(&mut self.run_us, us);
        }
    }

    pub fn summary(&self) -> ArmSummary {
        let us: Vec<u64> = self.run_us.iter().copied().collect();
        ArmSummary {
            requests: self.requests,
            mean_confidence: mean(&self.confidence).map(round),
            run_us: Percentiles {
                p50: percentile(&us, 0.5),
                p99: percentile(&us, 0.99),
            },
        }
    }
}

/// Is this input in the candidate's arm? Sticky: decided by the input's digest, so the same input always gets
/// the same model (and a cached answer stays consistent).
pub fn in_candidate_arm(input_digest: &[u8], split: f64) -> bool {
    if split <= 0.0 {
        return false;
    }
    let mut b = [0u8; 8];
    let n = input_digest.len().min(8);
    b[..n].copy_from_slice(&input_digest[..n]);
    let bucket = u64::from_le_bytes(b) % 1_000_000;
    (bucket as f64) < split * 1_000_000.0
}

/// Every-k-th sampling without randomness: with fraction f, request n is sampled when floor((n+1)f) > floor(nf),
/// so exactly the fraction runs, evenly spread.
pub fn sampled(n: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    if fraction >= 1.0 {
        return true;
    }
    ((n + 1) as f64 * fraction).floor() > (n as f64 * fraction).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_the_fraction() {
        let n = (0..10_000).filter(|n| sampled(*n, 0.1)).count();
        assert_eq!(n, 1000);
        assert_eq!((0..100).filter(|n| sampled(*n, 0.0)).count(), 0);
        assert_eq!((0..100).filter(|n| sampled(*n, 1.0)).count(), 100);
    }

    #[test]
    fn the_split_is_sticky_and_near_its_fraction() {
        use sha2::Digest;
        let digests: Vec<_> = (0..20_000u32)
            .map(|i| sha2::Sha256::digest(i.to_le_bytes()).to_vec())
            .collect();
        let n = digests.iter().filter(|d| in_candidate_arm(d, 0.2)).count();
        assert!((3_600..4_400).contains(&n), "{n} of 20000 at 0.2");
        for d in &digests[..100] {
            assert_eq!(in_candidate_arm(d, 0.2), in_candidate_arm(d, 0.2));
        }
        assert!(!digests.iter().any(|d| in_candidate_arm(d, 0.0)));
    }

    #[test]
    fn cloud_agreement_joins_in_either_order() {
        let mut s = ShadowStats::default();
        s.reset(Some(ModelInfo {
            name: "m".into(),
            version: 2,
            digest: "d".into(),
        }));
        let run = |id| ShadowRun {
            active_label: "3",
            active_confidence: 0.5,
            active_us: 10,
            candidate_label: "8",
            candidate_confidence: 0.6,
            candidate_us: 12,
            case_id: Some(id),
        };
        s.record(run("a"));
        s.cloud_label("a", "8"); // shadow first, then the cloud
        s.cloud_label("b", "3"); // the cloud first, then the shadow
        s.record(run("b"));
        let v = s.summary(1.0).unwrap();
        assert_eq!(v.cloud.cases, 2);
        assert_eq!(v.cloud.candidate_agreed, 1);
        assert_eq!(v.cloud.active_agreed, 1);
        assert_eq!(v.agreement, Some(0.0));
        assert_eq!(v.runs, 2);
    }
}
