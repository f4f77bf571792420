//! A model's staged candidate: the release a rollout staged beside the serving one, the figures of its shadow runs
//! and of its A/B arms, and the shadow thread that runs it. One lock per piece; the figures start over whenever
//! another candidate is staged.

use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::lock;
use crate::inference::Engine;
use crate::serve::answer::ModelInfo;
use crate::serve::shadow::{sampled, Arm, ShadowStats};
use crate::wire::status::{AbSummary, ArmName, ShadowSummary};
use crate::worker::Background;

#[derive(Default)]
pub(super) struct Staged {
    candidate: ArcSwapOption<Engine>,
    /// Shared with the shadow thread's jobs, which add their figures when they finish.
    pub(super) shadow: Arc<Mutex<ShadowStats>>,
    /// A/B arms: [active, candidate].
    arms: Mutex<[Arm; 2]>,
    /// The shadow thread, started on first use (or shared, in a simulation).
    background: OnceLock<Arc<Background>>,
    /// Requests seen while a candidate is staged: what the shadow sample counts.
    seen: AtomicU64,
}

impl Staged {
    /// Stages `engine` (or clears it); false when it is the release staged already (nothing starts over).
    pub(super) fn stage(&self, engine: Option<Arc<Engine>>) -> bool {
        let same = match (&engine, &*self.candidate.load()) {
            (Some(a), Some(b)) => a.release() == b.release(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return false;
        }
        lock(&self.shadow).reset(engine.as_deref().map(ModelInfo::of));
        *lock(&self.arms) = Default::default();
        self.candidate.store(engine);
        true
    }

    pub(super) fn candidate(&self) -> Option<Arc<Engine>> {
        self.candidate.load_full()
    }

    /// Whether this request is in the shadow sample of `fraction`.
    pub(super) fn sample(&self, fraction: f64) -> bool {
        sampled(self.seen.fetch_add(1, Ordering::Relaxed), fraction)
    }

    pub(super) fn cloud_label(&self, case_id: &str, label: &str) {
        lock(&self.shadow).cloud_label(case_id, label);
    }

    pub(super) fn shadow_runs(&self) -> u64 {
        lock(&self.shadow).runs
    }

    pub(super) fn shadow_summary(&self, fraction: f64) -> Option<ShadowSummary> {
        lock(&self.shadow).summary(fraction)
    }

    /// A full shadow queue skipped a sample.
    pub(super) fn dropped_sample(&self) {
        lock(&self.shadow).drop_sample();
    }

    pub(super) fn record_arm(&self, arm: ArmName, confidence: f32, run_us: Option<u64>) {
        let i = usize::from(arm == ArmName::Candidate);
        lock(&self.arms)[i].record(arm.name(), confidence, run_us);
    }

    pub(super) fn ab_summary(&self, split: f64) -> AbSummary {
        let arms = lock(&self.arms);
        AbSummary {
            split,
            active: arms[0].summary(),
            candidate: arms[1].summary(),
        }
    }

    pub(super) fn set_background(&self, bg: Arc<Background>) {
        let _ = self.background.set(bg);
    }

    /// The shadow thread, started on first use with the configuration's CPU share and queue.
    pub(super) fn background(&self, config: &crate::config::ShadowConfig) -> Arc<Background> {
        self.background
            .get_or_init(|| Background::start(config.max_cpu_share, config.queue))
            .clone()
    }
}
