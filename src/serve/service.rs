//! A model's serving state on this device: the release that serves, its trial, its staged candidate (shadow and
//! A/B), its forward budget and drift alarm, its settings and its transitions. The request path that reads them is
//! [`pipeline`]; what differs by kind of model is [`kind`].

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::probation::Verdict;
use super::settings::{Setting, SettingKey, Settings};
use crate::config::Config;
use crate::inference::{DecodeLimits, Engine, InferenceError, Release};
use crate::serve::answer::{micros, ModelInfo};
use crate::slots::{SlotId, SlotInfo, SlotState};
use crate::store::ResultCache;
use crate::telemetry::{Counters, Outcome};
use crate::wire::status::{
    ArmName, CacheStatus, Cause, ServiceStatus, Serving, TransferSummary, Transition,
    TransitionKind,
};
use crate::worker::{Background, Pool, PoolError};

mod forwarding;
mod kind;
mod pipeline;
mod staged;
mod trial;

use forwarding::Forwarding;
use staged::Staged;
use trial::Trial;

pub use pipeline::Answered;

/// Why a request was not answered, from the engine up: the API picks the HTTP status by the variant and the
/// input error inside it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is at fault (not an image, too large, corrupt, a tensor of the wrong shape...): the caller
    /// should fix it.
    #[error("{0}")]
    BadInput(InferenceError),
    /// The worker queue is full, or the agent is stopping.
    #[error(transparent)]
    Busy(PoolError),
    /// The release failed to run the input (and no previous release stood behind it).
    #[error("{0}")]
    Failed(InferenceError),
    /// The worker went away before answering.
    #[error("internal error: the worker stopped before answering")]
    WorkerLost,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("internal error: {0}")]
    Panicked(#[from] crate::blocking::Panicked),
}

impl ServiceError {
    /// How the request is counted.
    pub fn outcome(&self) -> Outcome {
        match self {
            ServiceError::BadInput(_) => Outcome::BadInput,
            ServiceError::Busy(_) => Outcome::Busy,
            _ => Outcome::Error,
        }
    }
}

pub struct Service {
    /// The model's name on this device (its folder in the repository, its route in the API).
    name: String,
    model: ArcSwap<Engine>,
    pool: Arc<Pool>,
    cache: Option<Arc<ResultCache>>,
    limits: DecodeLimits,
    pub counters: Counters,
    started: Instant,
    /// Where the served model came from.
    slot: Mutex<Serving>,
    config: Config,
    /// Probation of the serving release, and the release behind it.
    trial: Trial,
    /// The staged candidate, its shadow and A/B figures.
    staged: Staged,
    /// Hard cases to the cloud: the forwarder, the release's threshold, budget and baseline, the drift alarm.
    forwarding: Forwarding,
    /// Settings changed at run time by the fleet (`set`).
    settings: Settings,
    /// The last few transitions, oldest first (a rollback followed by another change stays visible); the last one
    /// is also shown on its own.
    transitions: Mutex<std::collections::VecDeque<Transition>>,
    /// This model's last finished download, and the one in progress.
    last_transfer: Mutex<Option<TransferSummary>>,
    download: Mutex<Option<TransferSummary>>,
    /// Bumped by every change worth telling the fleet about at once (see [`Service::changes`]).
    changes: AtomicU64,
    /// The release an install in this process just wrote, until the model's controller applies it (see
    /// [`Handoff`]); the newest replaces an older one not yet applied.
    handoff: Mutex<Option<Handoff>>,
    handed: tokio::sync::Notify,
}

/// What an install in this process hands to its model's serving side: the record it wrote and the engine it built
/// and passed through its quality gate for that record's slot. The controller applies it at once, in order with
/// probation's verdicts, without waiting for its poll of the record or parsing the model again from the slot's
/// files. The record stays the durable truth: a restart reads it, and a hand-run `outpost install`, `rollback` or
/// `promote` (another process) still reaches the daemon through the poll.
pub struct Handoff {
    pub state: SlotState,
    pub slot: SlotId,
    pub engine: Arc<Engine>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    pub fn new(
        name: &str,
        engine: Engine,
        pool: Arc<Pool>,
        cache: Option<Arc<ResultCache>>,
        config: &Config,
    ) -> Service {
        let limits = DecodeLimits {
            max_bytes: config.api.max_body_bytes,
            max_width: config.api.max_image_side,
            max_height: config.api.max_image_side,
            ..DecodeLimits::default()
        };
        let service = Service {
            trial: Trial::new(engine.release_id()),
            model: ArcSwap::from_pointee(engine),
            staged: Staged::default(),
            forwarding: Forwarding::default(),
            settings: Settings::default(),
            transitions: Mutex::new(Default::default()),
            last_transfer: Mutex::new(None),
            download: Mutex::new(None),
            changes: AtomicU64::new(0),
            handoff: Mutex::new(None),
            handed: tokio::sync::Notify::new(),
            pool,
            cache,
            name: name.to_string(),
            limits,
            counters: Counters::for_model(name),
            started: Instant::now(),
            slot: Mutex::new(Serving::Builtin),
            config: config.clone(),
        };
        service.publish_model_info();
        service
    }

    fn publish_model_info(&self) {
        let m = ModelInfo::of(&self.model.load());
        metrics::gauge!(crate::telemetry::MODEL_INFO, "model" => self.name.clone(), "name" => m.name, "version" => m.version.to_string(), "digest" => m.digest).set(1.0);
    }

    pub fn set_slot(&self, slot: Serving) {
        *lock(&self.slot) = slot;
    }

    /// Where the serving model came from.
    pub fn slot(&self) -> Serving {
        *lock(&self.slot)
    }

    /// The model's name on this device.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Makes `engine` serve new requests; requests already admitted finish on the engine they started with. Ends
    /// any trial.
    pub fn swap(&self, engine: Arc<Engine>, slot: Serving) {
        self.trial.clear();
        self.serve(engine, slot);
    }

    /// Hands an installed release to this model's controller, which applies it at once (see [`Handoff`]).
    pub fn hand_over(&self, handoff: Handoff) {
        *lock(&self.handoff) = Some(handoff);
        self.handed.notify_one();
    }

    /// Woken when an install hands a release over.
    pub(crate) fn handed(&self) -> &tokio::sync::Notify {
        &self.handed
    }

    /// The release handed over and not yet applied.
    pub(crate) fn take_handoff(&self) -> Option<Handoff> {
        lock(&self.handoff).take()
    }

    /// Counts changes of substance (model, slot, trial, candidate, transitions, transfers): the fleet link
    /// publishes status when it moves, without building the status to compare.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn serve(&self, engine: Arc<Engine>, slot: Serving) {
        self.changed();
        self.trial.serving(engine.release_id());
        self.model.store(engine);
        self.set_slot(slot);
        self.publish_model_info();
        metrics::gauge!(crate::telemetry::TRIAL_ACTIVE, "model" => self.name.clone())
            .set(if self.on_trial() { 1.0 } else { 0.0 });
    }

    /// Puts `engine` on trial: the serving model's recent runs become the baseline, and `fallback` (the model that
    /// served before) answers any run that fails on the new one.
    pub fn begin_trial(&self, engine: Arc<Engine>, slot: Serving, fallback: Option<Arc<Engine>>) {
        let serving = self.engine();
        self.trial.begin(
            engine.release(),
            serving.release_id(),
            &self.config.probation,
            fallback,
        );
        self.serve(engine, slot);
    }

    /// Ends the trial of `release` (committed) and keeps serving it.
    pub fn end_trial(&self, release: &Release) -> bool {
        let ended = self.trial.end(release);
        if ended {
            metrics::gauge!(crate::telemetry::TRIAL_ACTIVE, "model" => self.name.clone()).set(0.0);
            self.changed();
        }
        ended
    }

    pub fn on_trial(&self) -> bool {
        self.trial.on_trial()
    }

    /// Woken when a run makes the trial decisive, so the controller acts at once rather than at its next tick.
    pub(crate) fn decided(&self) -> &tokio::sync::Notify {
        &self.trial.decided
    }

    /// The model that served before the trial, kept for a rollback.
    pub fn fallback(&self) -> Option<Arc<Engine>> {
        self.trial.fallback()
    }

    /// The release on trial and the verdict now, if a trial runs.
    pub fn trial_verdict(&self, now: Instant) -> Option<(Release, Verdict)> {
        self.trial.verdict(now)
    }

    /// Shares one shadow thread among many services (a fleet simulation); call before the first request.
    pub fn set_background(&self, bg: Arc<Background>) {
        self.staged.set_background(bg);
    }

    /// Stages `engine` as the candidate (or clears it): shadow and A/B figures start over.
    pub fn set_candidate(&self, engine: Option<Arc<Engine>>) {
        let active = engine.is_some();
        if self.staged.stage(engine) {
            metrics::gauge!(crate::telemetry::CANDIDATE_ACTIVE, "model" => self.name.clone())
                .set(if active { 1.0 } else { 0.0 });
            self.changed();
        }
    }

    pub fn candidate(&self) -> Option<Arc<Engine>> {
        self.staged.candidate()
    }

    /// The cloud's label for a forwarded case (answered late, from the outbox), for the shadow comparison.
    pub fn note_cloud_label(&self, case_id: &str, label: &str) {
        self.staged.cloud_label(case_id, label);
    }

    /// The share of requests shadowed: `set`, else the configuration.
    fn shadow_fraction(&self) -> f64 {
        self.settings
            .get(SettingKey::ShadowFraction)
            .unwrap_or(self.config.shadow.fraction)
    }

    /// The share of inputs the candidate answers (A/B): `set`, else the configuration.
    fn split(&self) -> f64 {
        self.settings
            .get(SettingKey::ShadowSplit)
            .unwrap_or(self.config.shadow.split)
    }

    /// Shadow runs so far on the current candidate (cheap; for change detection).
    pub fn shadow_runs(&self) -> u64 {
        self.staged.shadow_runs()
    }

    /// A runtime setting changed by the fleet (checked when it was parsed).
    pub fn set(&self, setting: Setting) {
        self.settings.set(setting);
    }

    /// Turns on forwarding of hard cases (one forwarder for every model of the device).
    pub fn set_forwarder(&self, f: Arc<crate::forward::Forwarder>) {
        self.forwarding.set_forwarder(f);
    }

    /// The serving model's manifest hardness threshold (from its slot record).
    pub fn set_model_threshold(&self, t: Option<f32>) {
        self.forwarding.set_threshold(t);
    }

    /// What the serving release's slot record says for forwarding: its hardness threshold, budget and baseline
    /// (`None`: a model from a file or the built-in one, which carry none).
    pub fn set_release_info(&self, info: Option<&SlotInfo>) {
        self.set_model_threshold(info.and_then(|i| i.hardness_threshold));
        self.set_model_budget(
            info.and_then(|i| i.budget),
            info.and_then(|i| i.baseline.clone()),
        );
    }

    /// The serving release's forward budget and drift baseline (from its bundle; `None` for a model from a file).
    /// A new baseline starts the drift window over.
    pub fn set_model_budget(
        &self,
        budget: Option<crate::bundle::ForwardBudget>,
        baseline: Option<crate::bundle::Baseline>,
    ) {
        if self.forwarding.set_release(budget, baseline) {
            metrics::gauge!(crate::telemetry::DRIFT, "model" => self.name.clone()).set(0.0);
        }
    }

    /// One model run's hardness, against `bar` (the configured hardness threshold): the drift alarm notes it and,
    /// with a forwarder, the budget decides whether it goes to the cloud. `score` names the hardness: a baseline of
    /// another score is not compared.
    fn weigh(
        &self,
        hardness: f32,
        bar: f32,
        score: crate::bundle::BaselineScore,
    ) -> crate::forward::budget::Decision {
        let w = self
            .forwarding
            .weigh((hardness, bar, score), &self.settings, &self.config.forward);
        if let Some(change) = w.drift {
            let raised = change == super::drift::Change::Raised;
            tracing::warn!(model = %self.name, raised, "drift alarm {}", if raised { "raised" } else { "cleared" });
            metrics::gauge!(crate::telemetry::DRIFT, "model" => self.name.clone()).set(if raised {
                1.0
            } else {
                0.0
            });
            self.changed();
        }
        if let Some(r) = w.reading {
            metrics::gauge!(crate::telemetry::DRIFT_KS, "model" => self.name.clone()).set(r.ks);
            metrics::gauge!(crate::telemetry::DRIFT_FORWARD_RATE, "model" => self.name.clone())
                .set(r.forward_rate);
        }
        if w.decision == crate::forward::budget::Decision::Skip
            && self.forwarding.forwarder().is_some()
        {
            metrics::counter!(crate::telemetry::FORWARD_SKIPPED, "model" => self.name.clone())
                .increment(1);
        }
        w.decision
    }

    /// Whether the drift alarm is raised now.
    pub fn drift_raised(&self) -> bool {
        self.forwarding.drift_raised()
    }

    /// This model's hardness thresholds: set at run time, and its release's manifest one.
    fn thresholds(&self) -> (Option<f32>, Option<f32>) {
        self.forwarding.thresholds(&self.settings)
    }

    pub fn cache(&self) -> Option<Arc<ResultCache>> {
        self.cache.clone()
    }

    /// Empties the result cache; returns the entries removed (blocking).
    pub fn purge_cache(&self) -> Result<u64, crate::store::StoreError> {
        match &self.cache {
            Some(c) => {
                let n = c.len();
                c.clear()?;
                Ok(n)
            }
            None => Ok(0),
        }
    }

    /// The summary of the last finished download, for status.
    pub fn set_last_transfer(&self, summary: TransferSummary) {
        *lock(&self.last_transfer) = Some(summary);
        self.changed();
    }

    /// The fleet download in progress, for status.
    pub fn set_download(&self, summary: Option<TransferSummary>) {
        *lock(&self.download) = summary;
    }

    /// Remembered for status and telemetry.
    /// `version` is the model's the transition is about: the one committed, put on trial or rolled back from.
    pub fn note_transition(
        &self,
        transition: TransitionKind,
        cause: Cause,
        detail: &str,
        version: u64,
    ) {
        metrics::counter!(crate::telemetry::SLOT_TRANSITIONS, "model" => self.name.clone(), "transition" => transition.name(), "cause" => cause.name()).increment(1);
        self.changed();
        let t = Transition {
            transition,
            cause,
            detail: detail.to_string(),
            version,
            unix: crate::bundle::now_unix(),
        };
        let mut all = lock(&self.transitions);
        if all.len() == 8 {
            all.pop_front();
        }
        all.push_back(t);
    }

    fn record_run_counted(
        &self,
        release: &str,
        run: Duration,
        confidence: Option<f32>,
        count: Option<usize>,
    ) {
        self.trial
            .record_run(release, micros(run), confidence, count);
    }

    fn record_error(&self, release: &str, message: &str) {
        self.trial.record_error(release, message);
    }

    /// Largest request body accepted (`api.max_body_bytes`).
    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_bytes
    }

    /// The model serving new requests.
    pub fn engine(&self) -> Arc<Engine> {
        self.model.load_full()
    }

    /// The shadow thread, started on first use (or the one a simulation shares).
    fn background(&self) -> Arc<Background> {
        self.staged.background(&self.config.shadow)
    }

    fn record_arm(&self, arm: ArmName, confidence: f32, run_us: Option<u64>) {
        self.staged.record_arm(arm, confidence, run_us);
    }

    /// What `GET /v1/status` shows.
    pub fn status(&self) -> ServiceStatus {
        let engine = self.engine();
        let cache = self.cache.as_ref().map(|c| CacheStatus {
            entries: c.len(),
            bytes: c.bytes(),
            evictions: c.evictions(),
        });
        let transitions = lock(&self.transitions).clone();
        let forward = self.forwarding.status(&self.settings, &self.config.forward);
        let drift = self.forwarding.drift_status();
        ServiceStatus {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            model: ModelInfo::of(&engine),
            slot: self.slot(),
            uptime_s: self.started.elapsed().as_secs(),
            workers: self.pool.workers() as u64,
            queue_depth: self.pool.depth() as u64,
            counters: self.counters.snapshot(),
            cache,
            trial: self.trial.summary(Instant::now()),
            last_transition: transitions.back().cloned(),
            transitions: transitions.into(),
            last_transfer: lock(&self.last_transfer).clone(),
            download: lock(&self.download).clone(),
            settings: self.settings.shown(),
            latency_us: self.counters.latency_percentiles(),
            cache_hit_rate: self.counters.cache_hit_rate(),
            forward,
            candidate: self.candidate().map(|c| ModelInfo::of(&c)),
            shadow: self.staged.shadow_summary(self.shadow_fraction()),
            ab: (self.split() > 0.0 && self.candidate().is_some())
                .then(|| self.staged.ab_summary(self.split())),
            drift,
            int8: engine.int8_choice(),
        }
    }
}
