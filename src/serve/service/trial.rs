//! A model's trial: probation of the release that serves, the release that served before it (which answers again a
//! run that fails on the new one), and the window of recent runs that becomes the next trial's baseline. One lock
//! per piece; none is held across another's.

use arc_swap::ArcSwapOption;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::lock;
use crate::inference::{Engine, Release};
use crate::serve::probation::{Probation, Verdict, Window};
use crate::wire::status::TrialSummary;

pub(super) struct Trial {
    /// Recent runs of the serving release (its id, its runs): the baseline of the next trial.
    window: Mutex<(String, Window)>,
    /// The trial in progress, if the serving release is on probation.
    probation: Mutex<Option<Probation>>,
    /// During a trial, the release that served before: a failed run is answered again on it, so a bad release costs
    /// the client nothing while probation rolls it back.
    fallback: ArcSwapOption<Engine>,
    /// Woken when a run makes the trial decisive, so the controller acts at once rather than at its next tick.
    pub(super) decided: tokio::sync::Notify,
}

impl Trial {
    pub(super) fn new(serving: &str) -> Trial {
        Trial {
            window: Mutex::new((serving.to_string(), Window::default())),
            probation: Mutex::new(None),
            fallback: ArcSwapOption::empty(),
            decided: tokio::sync::Notify::new(),
        }
    }

    /// A new release serves: its own window starts.
    pub(super) fn serving(&self, release_id: &str) {
        *lock(&self.window) = (release_id.to_string(), Window::default());
    }

    /// Ends any trial without a verdict (a swap).
    pub(super) fn clear(&self) {
        *lock(&self.probation) = None;
        self.fallback.store(None);
    }

    /// Puts `release` on trial against the window of `serving` (the release it replaces), with `fallback` behind it.
    pub(super) fn begin(
        &self,
        release: &Release,
        serving: &str,
        config: &crate::config::ProbationConfig,
        fallback: Option<Arc<Engine>>,
    ) {
        let baseline = {
            let w = lock(&self.window);
            if w.0 == serving {
                w.1.clone()
            } else {
                Window::default()
            }
        };
        *lock(&self.probation) = Some(Probation::new(
            release.clone(),
            baseline,
            config,
            Instant::now(),
        ));
        self.fallback.store(fallback);
    }

    /// Ends the trial of `release` (committed); false when another release (or none) is on trial.
    pub(super) fn end(&self, release: &Release) -> bool {
        let mut t = lock(&self.probation);
        if t.as_ref().is_some_and(|p| p.release == *release) {
            *t = None;
            self.fallback.store(None);
            true
        } else {
            false
        }
    }

    pub(super) fn on_trial(&self) -> bool {
        lock(&self.probation).is_some()
    }

    pub(super) fn fallback(&self) -> Option<Arc<Engine>> {
        self.fallback.load_full()
    }

    pub(super) fn verdict(&self, now: Instant) -> Option<(Release, Verdict)> {
        lock(&self.probation)
            .as_ref()
            .map(|p| (p.release.clone(), p.verdict(now)))
    }

    pub(super) fn summary(&self, now: Instant) -> Option<TrialSummary> {
        lock(&self.probation).as_ref().map(|p| p.summary(now))
    }

    /// One run of `release` (microseconds, its confidence and, for a task model, its count): to the trial if it is
    /// the release on trial, else to the serving release's window.
    pub(super) fn record_run(
        &self,
        release: &str,
        us: u64,
        confidence: Option<f32>,
        count: Option<usize>,
    ) {
        {
            let mut t = lock(&self.probation);
            if let Some(p) = t.as_mut().filter(|p| p.release_id == release) {
                p.record_run(us, confidence);
                if let Some(n) = count {
                    p.record_count(n);
                }
                if p.verdict(Instant::now()) != Verdict::Continue {
                    self.decided.notify_one();
                }
                return;
            }
        }
        let mut w = lock(&self.window);
        if w.0 == release {
            w.1.push_run(us, confidence);
            if let Some(n) = count {
                w.1.push_count(n);
            }
        }
    }

    /// A failed run of `release`: counted against it if it is on trial.
    pub(super) fn record_error(&self, release: &str, message: &str) {
        let mut t = lock(&self.probation);
        if let Some(p) = t.as_mut().filter(|p| p.release_id == release) {
            p.record_error(message);
            self.decided.notify_one();
        }
    }
}
