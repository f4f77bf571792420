//! What a request does, independent of how it arrived: decode, look up the cache, queue for a worker, cache the
//! answer. The HTTP API is a thin mapping over this.

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::probation::{Probation, Verdict, Window};
use super::shadow::{in_candidate_arm, sampled, Arm, ShadowRun, ShadowStats};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;
use crate::inference::{DecodeLimits, Engine, InferenceError, Release, TensorValue};
use crate::slots::SlotInfo;
use crate::store::{CacheKey, CachedResult, ResultCache};
use crate::telemetry::{Counters, Outcome};
use crate::worker::{Background, Pool, PoolError};

pub use crate::wire::status::ModelInfo;
pub use task::{TaskRequestInput, TaskResponse};

mod task;
use crate::wire::status::{
    AbSummary, ArmName, CacheStatus, Cause, Forwarded, ServiceStatus, Serving, Source,
    TransferSummary, Transition, TransitionKind,
};

impl ModelInfo {
    pub fn of(engine: &Engine) -> ModelInfo {
        ModelInfo {
            name: engine.spec().name.clone(),
            version: engine.spec().version,
            digest: engine.digest().to_string(),
        }
    }
}

/// The answer of a raw tensor model.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorsResponse {
    /// In the spec's order.
    pub outputs: Vec<TensorValue>,
    /// `edge`, `cache`, or `cloud` for a scorer's hard case the cloud answered.
    pub source: Source,
    pub model: ModelInfo,
    pub latency_us: u64,
    /// A scorer of tensors' decoded answer (the cloud's, for a hard case it answered), as `/v1` shows task answers.
    pub task: Option<TaskResponse>,
}

/// The answer to one inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub label: String,
    pub confidence: f32,
    pub margin: f32,
    pub entropy: f32,
    /// Which tier answered, and whether from the cache.
    pub source: Source,
    pub model: ModelInfo,
    pub latency_us: u64,
    /// For a hard case: the edge model's label, beside the cloud's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_label: Option<String>,
    /// For a hard case: `answered` (the cloud answered in time) or `queued` (it will, from the outbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<Forwarded>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// During an A/B split: the arm that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<ArmName>,
    /// How hard the edge model found the input on the forward score (1 - top probability for max-prob), when the
    /// model ran for this request: what the forward budget ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardness: Option<f32>,
    /// The model's raw output (logits or probabilities, as the spec says), for protocols that return tensors. An
    /// answer from the cloud keeps the edge model's output.
    #[serde(skip)]
    pub output: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is at fault (not an image, too large, corrupt...): the caller should fix it.
    #[error("{0}")]
    BadInput(InferenceError),
    #[error(transparent)]
    Busy(PoolError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("internal error: {0}")]
    Panicked(#[from] crate::blocking::Panicked),
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
    /// Recent runs of the serving model (digest, runs): the baseline of the next trial.
    window: Mutex<(String, Window)>,
    /// The trial in progress, if the serving model is on probation.
    trial: Mutex<Option<Probation>>,
    /// During a trial, the model that served before: a failed run is answered again on it, so a bad model costs
    /// the client nothing while probation rolls it back.
    fallback: ArcSwapOption<Engine>,
    /// Woken when a run makes the trial decisive, so the controller acts at once rather than at its next tick.
    pub(crate) decided: tokio::sync::Notify,
    /// The last few transitions, oldest first (a rollback followed by another change stays visible); the last one
    /// is also shown on its own.
    transitions: Mutex<std::collections::VecDeque<Transition>>,
    /// Settings changed at run time by the fleet (`set`), by key.
    settings: Mutex<std::collections::BTreeMap<String, String>>,
    last_transfer: Mutex<Option<TransferSummary>>,
    download: Mutex<Option<TransferSummary>>,
    forwarder: std::sync::OnceLock<Arc<crate::forward::Forwarder>>,
    model_threshold: Mutex<Option<f32>>,
    /// The staged candidate (shadow and A/B), if a rollout staged one.
    candidate: ArcSwapOption<Engine>,
    shadow: Arc<Mutex<ShadowStats>>,
    /// A/B arms: [active, candidate].
    arms: Mutex<[Arm; 2]>,
    /// The shadow thread, started on first use (or shared, in a simulation).
    background: std::sync::OnceLock<Arc<Background>>,
    shadow_seen: AtomicU64,
    /// f64 bits of `shadow.fraction` and `shadow.split` (config, overridden by the fleet).
    shadow_fraction: AtomicU64,
    split: AtomicU64,
    /// Bumped by every change worth telling the fleet about at once (see [`Service::changes`]).
    changes: AtomicU64,
    /// Engines that an install in this process built and passed through its quality gate, by slot, until the
    /// controller puts them to use: the model is parsed and optimised once, not again from the slot's files.
    installed: Mutex<Vec<(Serving, Arc<Engine>)>>,
    /// The forward budget's bookkeeping, and the serving release's own budget (from its bundle).
    budget: Mutex<crate::forward::budget::Budget>,
    model_budget: Mutex<Option<crate::bundle::ForwardBudget>>,
    /// The drift alarm, and the serving release's baseline (from its bundle).
    drift: Mutex<super::drift::Drift>,
    model_baseline: Mutex<Option<crate::bundle::Baseline>>,
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
        let release = engine.release_id().to_string();
        let service = Service {
            model: ArcSwap::from_pointee(engine),
            window: Mutex::new((release, Window::default())),
            trial: Mutex::new(None),
            fallback: ArcSwapOption::empty(),
            decided: tokio::sync::Notify::new(),
            transitions: Mutex::new(Default::default()),
            settings: Mutex::new(Default::default()),
            last_transfer: Mutex::new(None),
            download: Mutex::new(None),
            forwarder: std::sync::OnceLock::new(),
            model_threshold: Mutex::new(None),
            candidate: ArcSwapOption::empty(),
            shadow: Arc::new(Mutex::new(ShadowStats::default())),
            arms: Mutex::new(Default::default()),
            background: std::sync::OnceLock::new(),
            shadow_seen: AtomicU64::new(0),
            shadow_fraction: AtomicU64::new(config.shadow.fraction.to_bits()),
            split: AtomicU64::new(config.shadow.split.to_bits()),
            changes: AtomicU64::new(0),
            installed: Mutex::new(Vec::new()),
            budget: Mutex::new(Default::default()),
            model_budget: Mutex::new(None),
            drift: Mutex::new(Default::default()),
            model_baseline: Mutex::new(None),
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
        *lock(&self.trial) = None;
        self.fallback.store(None);
        self.serve(engine, slot);
    }

    /// Hands over the engine an install built and gated for `slot` (it replaces any earlier one for that slot).
    pub fn hand_over(&self, slot: Serving, engine: Engine) {
        let mut all = lock(&self.installed);
        all.retain(|(s, _)| *s != slot);
        all.push((slot, Arc::new(engine)));
    }

    /// The engine handed over for `slot`, if it is the release `info` records; taken (or dropped, when it is not:
    /// the record moved on, and the slot's files decide).
    pub fn take_installed(&self, slot: Serving, info: &SlotInfo) -> Option<Arc<Engine>> {
        let mut all = lock(&self.installed);
        let i = all.iter().position(|(s, _)| *s == slot)?;
        let (_, engine) = all.swap_remove(i);
        info.matches(engine.release()).then_some(engine)
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
        *lock(&self.window) = (engine.release_id().to_string(), Window::default());
        self.model.store(engine);
        self.set_slot(slot);
        self.publish_model_info();
        metrics::gauge!(crate::telemetry::TRIAL_ACTIVE, "model" => self.name.clone())
            .set(if self.on_trial() { 1.0 } else { 0.0 });
    }

    /// Puts `engine` on trial: the serving model's recent runs become the baseline, and `fallback` (the model that
    /// served before) answers any run that fails on the new one.
    pub fn begin_trial(&self, engine: Arc<Engine>, slot: Serving, fallback: Option<Arc<Engine>>) {
        let current = self.engine();
        let baseline = {
            let w = lock(&self.window);
            if w.0 == current.release_id() {
                w.1.clone()
            } else {
                Window::default()
            }
        };
        let probation = Probation::new(
            engine.release().clone(),
            baseline,
            &self.config.probation,
            Instant::now(),
        );
        *lock(&self.trial) = Some(probation);
        self.fallback.store(fallback);
        self.serve(engine, slot);
    }

    /// Ends the trial of `release` (committed) and keeps serving it.
    pub fn end_trial(&self, release: &Release) -> bool {
        let mut t = lock(&self.trial);
        if t.as_ref().is_some_and(|p| p.release == *release) {
            *t = None;
            self.fallback.store(None);
            metrics::gauge!(crate::telemetry::TRIAL_ACTIVE, "model" => self.name.clone()).set(0.0);
            self.changed();
            true
        } else {
            false
        }
    }

    pub fn on_trial(&self) -> bool {
        lock(&self.trial).is_some()
    }

    /// The model that served before the trial, kept for a rollback.
    pub fn fallback(&self) -> Option<Arc<Engine>> {
        self.fallback.load_full()
    }

    /// The release on trial and the verdict now, if a trial runs.
    pub fn trial_verdict(&self, now: Instant) -> Option<(Release, Verdict)> {
        lock(&self.trial)
            .as_ref()
            .map(|p| (p.release.clone(), p.verdict(now)))
    }

    /// Shares one shadow thread among many services (a fleet simulation); call before the first request.
    pub fn set_background(&self, bg: Arc<Background>) {
        let _ = self.background.set(bg);
    }

    /// Stages `engine` as the candidate (or clears it): shadow and A/B figures start over.
    pub fn set_candidate(&self, engine: Option<Arc<Engine>>) {
        let same = match (&engine, &*self.candidate.load()) {
            (Some(a), Some(b)) => a.release() == b.release(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        lock(&self.shadow).reset(engine.as_deref().map(ModelInfo::of));
        *lock(&self.arms) = Default::default();
        metrics::gauge!(crate::telemetry::CANDIDATE_ACTIVE, "model" => self.name.clone())
            .set(if engine.is_some() { 1.0 } else { 0.0 });
        self.candidate.store(engine);
        self.changed();
    }

    pub fn candidate(&self) -> Option<Arc<Engine>> {
        self.candidate.load_full()
    }

    /// The cloud's label for a forwarded case (answered late, from the outbox), for the shadow comparison.
    pub fn note_cloud_label(&self, case_id: &str, label: &str) {
        lock(&self.shadow).cloud_label(case_id, label);
    }

    fn shadow_fraction(&self) -> f64 {
        f64::from_bits(self.shadow_fraction.load(Ordering::Relaxed))
    }

    fn split(&self) -> f64 {
        f64::from_bits(self.split.load(Ordering::Relaxed))
    }

    /// Shadow runs so far on the current candidate (cheap; for change detection).
    pub fn shadow_runs(&self) -> u64 {
        lock(&self.shadow).runs
    }

    /// A runtime setting changed by the fleet.
    pub fn set_setting(&self, key: &str, value: &str) {
        match (key, value.parse::<f64>()) {
            ("shadow.fraction", Ok(v)) => self
                .shadow_fraction
                .store(v.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed),
            ("shadow.split", Ok(v)) => self
                .split
                .store(v.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed),
            _ => {}
        }
        lock(&self.settings).insert(key.to_string(), value.to_string());
    }

    /// Turns on forwarding of hard cases (one forwarder for every model of the device).
    pub fn set_forwarder(&self, f: Arc<crate::forward::Forwarder>) {
        let _ = self.forwarder.set(f);
    }

    /// The serving model's manifest hardness threshold (from its slot record).
    pub fn set_model_threshold(&self, t: Option<f32>) {
        *lock(&self.model_threshold) = t;
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
        *lock(&self.model_budget) = budget;
        let mut b = lock(&self.model_baseline);
        if *b != baseline {
            lock(&self.drift).reset();
            metrics::gauge!(crate::telemetry::DRIFT, "model" => self.name.clone()).set(0.0);
            *b = baseline;
        }
    }

    /// The budget in force: `set` (forward.max_fraction, forward.max_per_s), then the configuration, then the
    /// release's bundle.
    fn budget_limits(&self) -> crate::forward::budget::BudgetLimits {
        let setting = |k: &str| self.setting(k).and_then(|v| v.parse::<f32>().ok());
        let release = *lock(&self.model_budget);
        let f = &self.config.forward;
        crate::forward::budget::BudgetLimits {
            max_fraction: setting("forward.max_fraction")
                .or(f.max_fraction)
                .or(release.and_then(|b| b.max_fraction)),
            max_per_s: setting("forward.max_per_s")
                .or(f.max_per_s)
                .or(release.and_then(|b| b.max_per_s)),
            window: Duration::from_secs(f.budget_window_s),
        }
    }

    /// One model run's hardness, against `bar` (the configured hardness threshold): the drift alarm notes it and,
    /// with a forwarder, the budget decides whether it goes to the cloud. `score` names the hardness (a classifier's
    /// score, or `task`): a baseline of another score is not compared.
    fn weigh(&self, hardness: f32, bar: f32, score: &str) -> crate::forward::budget::Decision {
        use crate::forward::budget::Decision;
        if let Some(b) = lock(&self.model_baseline)
            .as_ref()
            .filter(|b| b.score == score)
        {
            let window = self.config.forward.drift_window as usize;
            let mut d = lock(&self.drift);
            if let Some(change) = d.observe(hardness, hardness > bar, window, b) {
                let raised = change == super::drift::Change::Raised;
                tracing::warn!(model = %self.name, raised, "drift alarm {}", if raised { "raised" } else { "cleared" });
                metrics::gauge!(crate::telemetry::DRIFT, "model" => self.name.clone())
                    .set(if raised { 1.0 } else { 0.0 });
                self.changed();
            }
            if let Some(r) = d.take_reading() {
                metrics::gauge!(crate::telemetry::DRIFT_KS, "model" => self.name.clone()).set(r.ks);
                metrics::gauge!(crate::telemetry::DRIFT_FORWARD_RATE, "model" => self.name.clone())
                    .set(r.forward_rate);
            }
        }
        if self.forwarder.get().is_none() {
            return if hardness > bar {
                Decision::Skip
            } else {
                Decision::Easy
            };
        }
        let d = lock(&self.budget).decide(&self.budget_limits(), bar, hardness, Instant::now());
        if d == Decision::Skip {
            metrics::counter!(crate::telemetry::FORWARD_SKIPPED, "model" => self.name.clone())
                .increment(1);
        }
        d
    }

    /// Whether the drift alarm is raised now.
    pub fn drift_raised(&self) -> bool {
        lock(&self.drift).raised()
    }

    /// This model's hardness thresholds: set at run time, and its release's manifest one.
    fn thresholds(&self) -> (Option<f32>, Option<f32>) {
        let runtime = self
            .setting("hardness.threshold")
            .and_then(|v| v.parse::<f32>().ok());
        (runtime, *lock(&self.model_threshold))
    }

    pub fn cache(&self) -> Option<Arc<ResultCache>> {
        self.cache.clone()
    }

    pub fn setting(&self, key: &str) -> Option<String> {
        lock(&self.settings).get(key).cloned()
    }

    /// Empties the result cache; returns the entries removed (blocking).
    pub fn purge_cache(&self) -> Result<u64, String> {
        match &self.cache {
            Some(c) => {
                let n = c.len();
                c.clear().map_err(|e| e.to_string())?;
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

    fn record_run(&self, release: &str, run: Duration, confidence: Option<f32>) {
        self.record_run_counted(release, run, confidence, None);
    }

    /// A run with, for a task model, its count (boxes, positive scores; probation compares both).
    fn record_run_counted(
        &self,
        release: &str,
        run: Duration,
        confidence: Option<f32>,
        count: Option<usize>,
    ) {
        let us = micros(run);
        {
            let mut t = lock(&self.trial);
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

    fn record_error(&self, release: &str, message: &str) {
        let mut t = lock(&self.trial);
        if let Some(p) = t.as_mut().filter(|p| p.release_id == release) {
            p.record_error(message);
            self.decided.notify_one();
        }
    }

    /// Largest request body accepted (`api.max_body_bytes`).
    pub fn max_body_bytes(&self) -> usize {
        self.limits.max_bytes
    }

    /// The model serving new requests.
    pub fn engine(&self) -> Arc<Engine> {
        self.model.load_full()
    }

    /// Answers one encoded image (PNG or JPEG).
    pub async fn infer(&self, body: bytes_like::Bytes) -> Result<InferResponse, ServiceError> {
        self.answer(Input::Image(body), Tier::Cascade).await
    }

    /// Answers for a protocol that returns the model's output tensor (the Open Inference Protocol): an encoded
    /// image, or a tensor already preprocessed, which must have the element count of the model's input. The cache,
    /// probation and shadow apply as on `/v1`; the answer is the edge model's, with its output (hard cases are not
    /// forwarded from here yet: a cloud answer carries no output tensor).
    pub async fn infer_output(
        &self,
        image: Option<bytes_like::Bytes>,
        tensor: Option<Vec<f32>>,
    ) -> Result<InferResponse, ServiceError> {
        let input = match (image, tensor) {
            (Some(b), _) => Input::Image(b),
            (None, Some(t)) => Input::Tensor(t),
            (None, None) => {
                return Err(ServiceError::Internal(
                    "no input given to the service".into(),
                ))
            }
        };
        self.answer(input, Tier::EdgeWithOutput).await
    }

    /// Answers a raw tensor model's request (its inputs in the spec's order): the cache (unless the model is
    /// stateful), probation (errors and latency: the model gives no confidence), a failed run on trial answered again
    /// by the previous release, and shadow runs of a staged candidate that takes the same tensors.
    pub async fn infer_tensors(
        &self,
        inputs: Vec<TensorValue>,
    ) -> Result<TensorsResponse, ServiceError> {
        let start = Instant::now();
        let result = self.tensors_inner(inputs, start).await;
        self.count(result.as_ref().map(|r| r.source), start);
        result
    }

    /// Counts a request's outcome (from the answer's source or the error) and the queue depth.
    fn count(&self, result: Result<Source, &ServiceError>, start: Instant) {
        let outcome = match result {
            Ok(s) if s.from_cache() => Outcome::Cache,
            Ok(_) => Outcome::Edge,
            Err(ServiceError::BadInput(_)) => Outcome::BadInput,
            Err(ServiceError::Busy(_)) => Outcome::Busy,
            Err(ServiceError::Internal(_) | ServiceError::Panicked(_)) => Outcome::Error,
        };
        self.counters.record(outcome, start.elapsed());
        metrics::gauge!(crate::telemetry::QUEUE_DEPTH).set(self.pool.depth() as f64);
    }

    /// The shadow thread, started on first use (or the one a simulation shares).
    fn background(&self) -> Arc<Background> {
        self.background
            .get_or_init(|| {
                Background::start(self.config.shadow.max_cpu_share, self.config.shadow.queue)
            })
            .clone()
    }

    async fn tensors_inner(
        &self,
        inputs: Vec<TensorValue>,
        start: Instant,
    ) -> Result<TensorsResponse, ServiceError> {
        let active = self.engine();
        let fallback_at_admission = self.fallback();
        let Some(io) = active.spec().raw().cloned() else {
            return Err(ServiceError::BadInput(InferenceError::Tensors(format!(
                "model {} is an image classifier: send one FP32 tensor of its input shape, or an image",
                self.name
            ))));
        };
        if inputs.len() != io.inputs.len() {
            return Err(ServiceError::BadInput(InferenceError::Tensors(format!(
                "model {} takes {} inputs, the request has {}",
                self.name,
                io.inputs.len(),
                inputs.len()
            ))));
        }
        for (v, t) in inputs.iter().zip(&io.inputs) {
            v.check(t)
                .map_err(|e| ServiceError::BadInput(InferenceError::Tensors(e)))?;
        }
        // A stateful model's same inputs are not the same question (its state lives in the stream). Without a
        // cache the inputs are not hashed at all.
        let cache = self.cache.clone().filter(|_| !io.stateful);
        let digest = cache
            .as_ref()
            .map(|_| crate::inference::tensor::tensors_digest(&inputs));
        if let (Some(c), Some(d)) = (cache.clone(), digest) {
            let key = CacheKey::with_input_digest(active.release_id(), &d);
            let hit = crate::blocking::run(move || c.get(&key))
                .await
                .unwrap_or_else(|err| {
                    tracing::debug!(error = %err, "cache lookup failed; running the model");
                    None
                });
            if let Some(hit) = hit.filter(|h| !h.tensors.is_empty()) {
                let task = self.cached_tensor_task(&active, &hit, start);
                return Ok(TensorsResponse {
                    outputs: hit.tensors,
                    source: task.as_ref().map_or(Source::Cache, |t| t.source),
                    model: ModelInfo::of(&active),
                    latency_us: micros(start.elapsed()),
                    task,
                });
            }
        }
        let candidate = self
            .candidate()
            .filter(|c| c.release() != active.release() && c.spec().raw() == Some(&io));
        let shadow_inputs = candidate.as_ref().and_then(|c| {
            let n = self.shadow_seen.fetch_add(1, Ordering::Relaxed);
            sampled(n, self.shadow_fraction()).then(|| (c.clone(), inputs.clone()))
        });
        // The inputs are kept for a second run only while a previous release stands behind a trial.
        let retry = fallback_at_admission
            .filter(|f| f.release() != active.release() && f.spec().raw() == Some(&io))
            .map(|f| (f, inputs.clone()));
        // A scorer of tensors' hard case carries the inputs to the cloud.
        let case_inputs =
            (active.task().is_some() && self.forwarder.get().is_some()).then(|| inputs.clone());
        let (engine, ran) = match self.run_tensors(&active, inputs).await {
            Ok(ran) => (active, ran),
            Err(ServiceError::Internal(message)) => {
                self.record_error(active.release_id(), &message);
                let Some((previous, inputs)) = retry else {
                    return Err(ServiceError::Internal(message));
                };
                tracing::warn!(error = %message, "the model on trial failed; answering with the previous model");
                let ran = self.run_tensors(&previous, inputs).await?;
                (previous, ran)
            }
            Err(e) => return Err(e),
        };
        // A scorer of tensors: its scores decoded and judged (probation, drift, a hard case forwarded); a raw model
        // is judged on errors and latency alone.
        let task = match engine.task() {
            Some(_) => Some(
                self.tensor_task(&engine, &ran.outputs, ran.run, case_inputs, start)
                    .await?,
            ),
            None => {
                self.record_run(engine.release_id(), ran.run, None);
                None
            }
        };
        if let (Some(c), Some(d)) = (cache, digest) {
            let key = CacheKey::with_input_digest(engine.release_id(), &d);
            let entry = CachedResult {
                label: String::new(),
                index: 0,
                confidence: 0.0,
                margin: 0.0,
                entropy: 0.0,
                tier: "edge".into(),
                output: Vec::new(),
                tensors: ran.outputs.clone(),
                answer: None,
            };
            if let Err(e) = crate::blocking::run(move || c.insert(&key, &entry)).await {
                tracing::debug!(error = %e, "cannot cache the result");
            }
        }
        if let Some((c, inputs)) = shadow_inputs {
            self.shadow_tensors(c, inputs, ran.outputs.clone(), micros(ran.run));
        }
        Ok(TensorsResponse {
            outputs: ran.outputs,
            source: task.as_ref().map_or(Source::Edge, |t| t.source),
            model: ModelInfo::of(&engine),
            latency_us: micros(start.elapsed()),
            task,
        })
    }

    /// A shadow run of a raw candidate on the shadow thread, compared output by output with the live answer.
    fn shadow_tensors(
        &self,
        candidate: Arc<Engine>,
        inputs: Vec<TensorValue>,
        active: Vec<TensorValue>,
        active_us: u64,
    ) {
        // A scorer of tensors agrees by its scores' sides of the threshold; a raw model by its outputs' values.
        let task = candidate.task().cloned();
        self.shadow_job(
            candidate,
            move |c| c.run_tensors(&inputs),
            move |s, out, us| {
                let decode = |t: &crate::inference::task::Task, o: &[TensorValue]| {
                    let fit = crate::inference::task::Fit::new(Default::default(), 0, 0, 0, 0);
                    t.decode(o, &[], (0, 0), &fit, &Default::default()).ok()
                };
                if let Some(t) = &task {
                    if let (Some(a), Some(b)) = (decode(t, &active), decode(t, &out)) {
                        let agreement = crate::inference::task::agreement(&a.answer, &b.answer);
                        let conf = (a.answer.confidence(t), b.answer.confidence(t));
                        return s.record_task(agreement, conf, active_us, us);
                    }
                }
                s.record_raw(
                    super::shadow::raw_outputs_agree(&active, &out),
                    active_us,
                    us,
                )
            },
        );
    }

    /// Runs `run` on the candidate on the shadow thread and hands its result to `record` with the run's time. A
    /// candidate replaced meanwhile has no current figures to add to; a failed run is counted; a full queue (the
    /// CPU share used up) skips the sample and counts it.
    fn shadow_job<T>(
        &self,
        candidate: Arc<Engine>,
        run: impl FnOnce(&Engine) -> Result<T, InferenceError> + Send + 'static,
        record: impl FnOnce(&mut ShadowStats, T, u64) + Send + 'static,
    ) {
        let stats = self.shadow.clone();
        let accepted = self.background().try_run(move || {
            let t = Instant::now();
            let result = run(&candidate);
            let us = micros(t.elapsed());
            let mut s = lock(&stats);
            if s.model.as_ref() != Some(&ModelInfo::of(&candidate)) {
                return;
            }
            match result {
                Ok(v) => record(&mut s, v, us),
                Err(e) => {
                    tracing::debug!(error = %e, "a shadow run failed");
                    s.failed();
                }
            }
        });
        if !accepted {
            lock(&self.shadow).drop_sample();
        }
    }

    async fn run_tensors(
        &self,
        engine: &Arc<Engine>,
        inputs: Vec<TensorValue>,
    ) -> Result<crate::worker::RanTensors, ServiceError> {
        let rx = self
            .pool
            .submit_tensors((**engine).clone(), inputs)
            .map_err(ServiceError::Busy)?;
        worker_reply(rx).await
    }

    async fn answer(&self, input: Input, tier: Tier) -> Result<InferResponse, ServiceError> {
        let start = Instant::now();
        let result = self.infer_inner(input, tier, start).await;
        self.count(result.as_ref().map(|r| r.source), start);
        result
    }

    async fn infer_inner(
        &self,
        input: Input,
        tier: Tier,
        start: Instant,
    ) -> Result<InferResponse, ServiceError> {
        let body = match &input {
            Input::Image(b) => Some(b.clone()),
            Input::Tensor(_) => None,
        };
        // The engine is chosen once, at admission: the whole request runs against it even if a swap happens.
        let active = self.engine();
        if active.is_raw() {
            return Err(ServiceError::BadInput(InferenceError::Tensors(format!(
                "model {} takes tensors, not an image: send its inputs through the Open Inference Protocol \
                 (POST /v2/models/{}/infer)",
                self.name, self.name
            ))));
        }
        // Taken with the engine: a rollback that lands while this request runs must not take its fallback away.
        let fallback_at_admission = self.fallback().filter(|f| !f.is_raw());
        // A raw candidate cannot answer an image or a classifier's tensor: it is not shadowed by these requests.
        let candidate = self
            .candidate()
            .filter(|c| c.release() != active.release() && !c.is_raw());
        let split = if candidate.is_some() {
            self.split()
        } else {
            0.0
        };
        let limits = self.limits;
        let cache = self.cache.clone();
        let (a, c) = (active.clone(), candidate.clone());
        let raw = body.clone();
        // Decoding, the A/B arm and the cache lookup are blocking work too.
        let (engine, arm, tensor, key, hit) = crate::blocking::run(move || {
            let tensor = match input {
                Input::Image(body) => a
                    .tensor_from_image(&body, &limits)
                    .map_err(ServiceError::BadInput)?,
                Input::Tensor(t) => {
                    let shape = a.spec().input.shape.clone();
                    let expected = shape.iter().product::<usize>();
                    if t.len() != expected {
                        return Err(ServiceError::BadInput(InferenceError::InputShape {
                            expected,
                            got: t.len(),
                            shape,
                        }));
                    }
                    t
                }
            };
            // One hash of the input: the cache key, and (its input half) the sticky A/B arm.
            let key = CacheKey::new(a.release_id(), &tensor);
            // A tensor fits a candidate only when both models take the same input; an image always can be decoded.
            let (engine, arm, tensor, key) = match (c, &body) {
                (Some(c), body)
                    if in_candidate_arm(key.input_digest(), split)
                        && (same_input(&a, &c) || body.is_some()) =>
                {
                    let (tensor, key) = if same_input(&a, &c) {
                        (tensor, key.for_model(c.release_id()))
                    } else {
                        let body = body.as_deref().unwrap_or_default();
                        let t = c
                            .tensor_from_image(body, &limits)
                            .map_err(ServiceError::BadInput)?;
                        let k = CacheKey::new(c.release_id(), &t);
                        (t, k)
                    };
                    (c, Some(ArmName::Candidate), tensor, key)
                }
                _ => (a, (split > 0.0).then_some(ArmName::Active), tensor, key),
            };
            let hit = match &cache {
                Some(c) => c.get(&key).unwrap_or_else(|err| {
                    tracing::debug!(error = %err, "cache lookup failed; running the model");
                    None
                }),
                None => None,
            };
            Ok::<_, ServiceError>((engine, arm, tensor, key, hit))
        })
        .await?;

        // An answer without the model's output (the cloud's) does not serve a request that returns the output: the
        // model runs for the output, and the cloud's cached label stands (the case is not forwarded again).
        let (hit, cloud_hit) = match hit {
            Some(h) if tier == Tier::EdgeWithOutput && h.output.is_empty() => (None, Some(h)),
            h => (h, None),
        };
        if let Some(hit) = hit {
            let model = ModelInfo::of(&engine);
            if let Some(name) = arm {
                self.record_arm(name, hit.confidence, None);
            }
            return Ok(InferResponse {
                label: hit.label,
                confidence: hit.confidence,
                margin: hit.margin,
                entropy: hit.entropy,
                // A cached cloud answer says so: the client learns which tier decided.
                source: if hit.tier == "cloud" {
                    Source::CloudCache
                } else {
                    Source::Cache
                },
                model,
                latency_us: micros(start.elapsed()),
                edge_label: None,
                forwarded: None,
                case_id: None,
                arm,
                hardness: None,
                output: hit.output,
            });
        }

        // Kept for a shadow run of the candidate, which happens after this request is answered: when sampled, or
        // when a forwarder may find it a hard case (those always run).
        let shadow_input = match (&candidate, arm) {
            (Some(c), None | Some(ArmName::Active)) => {
                let n = self.shadow_seen.fetch_add(1, Ordering::Relaxed);
                let sample = sampled(n, self.shadow_fraction());
                (sample || self.forwarder.get().is_some())
                    .then(|| (c.clone(), tensor.clone(), sample))
            }
            _ => None,
        };
        let (engine, key, ran) = match self.run(&engine, tensor.clone()).await {
            Ok(ran) => (engine, key, ran),
            Err(ServiceError::Internal(message)) => {
                self.record_error(engine.release_id(), &message);
                // The previous model kept for the trial or, if the trial already ended in a rollback, whatever
                // serves now (for the candidate's arm: the live model).
                let previous = fallback_at_admission
                    .or_else(|| Some(self.engine()))
                    .filter(|f| f.release() != engine.release());
                match previous {
                    Some(previous) => {
                        tracing::warn!(error = %message, "the model on trial (or the candidate) failed; answering with the previous model");
                        let tensor = match (&raw, same_input(&previous, &engine)) {
                            (_, true) => tensor.clone(),
                            (Some(raw), false) => {
                                let (p, raw) = (previous.clone(), raw.clone());
                                crate::blocking::run(move || {
                                    p.tensor_from_image(&raw, &limits)
                                        .map_err(ServiceError::BadInput)
                                })
                                .await?
                            }
                            // A tensor made for the failed model does not fit the previous one.
                            (None, false) => return Err(ServiceError::Internal(message)),
                        };
                        let key = CacheKey::new(previous.release_id(), &tensor);
                        let ran = self.run(&previous, tensor).await?;
                        (previous, key, ran)
                    }
                    None => return Err(ServiceError::Internal(message)),
                }
            }
            Err(e) => return Err(e),
        };
        let cache_key = key;
        // A tensor request's hard case carries the tensor (there is no image to send); it is the request's own,
        // the run had a copy.
        let case_tensor = (raw.is_none() && cloud_hit.is_none() && self.forwarder.get().is_some())
            .then_some(tensor);
        self.record_run(
            engine.release_id(),
            ran.run,
            Some(ran.prediction.confidence),
        );
        if let Some(name) = arm {
            self.record_arm(name, ran.prediction.confidence, Some(micros(ran.run)));
        }
        let prediction = ran.prediction;
        let prediction_index = prediction.index as u32;
        let model = ModelInfo::of(&engine);
        let mut response = InferResponse {
            label: prediction.label,
            confidence: prediction.confidence,
            margin: prediction.margin,
            entropy: prediction.entropy,
            source: Source::Edge,
            model,
            latency_us: micros(start.elapsed()),
            edge_label: None,
            forwarded: None,
            case_id: None,
            arm,
            hardness: None,
            output: prediction.output,
        };
        if let Some(cloud) = cloud_hit {
            response.edge_label = Some(response.label.clone());
            response.label = cloud.label;
            response.confidence = cloud.confidence;
            response.margin = cloud.margin;
            response.entropy = cloud.entropy;
            response.source = Source::CloudCache;
            response.latency_us = micros(start.elapsed());
            return Ok(response);
        }
        // Hard cases go to the cloud whichever way they came in: an image (/v1, or v2 BYTES) or a tensor (v2), within
        // the model's forward budget (the hardest first). Every run's hardness also feeds the drift alarm.
        let (runtime, manifest) = self.thresholds();
        let (score, t) = match self.forwarder.get() {
            Some(f) => f.policy(runtime, manifest),
            None => {
                let score = self.config.forward.score;
                let t = runtime
                    .or(self.config.forward.threshold)
                    .or(manifest)
                    .unwrap_or_else(|| crate::config::ForwardConfig::default_threshold(score));
                (score, t)
            }
        };
        let hardness = score.hardness(response.confidence, response.margin, response.entropy);
        response.hardness = Some(hardness);
        let decision = self.weigh(hardness, score.hardness_bar(t), score.name());
        let hard_case = self
            .forwarder
            .get()
            .filter(|_| raw.is_some() || case_tensor.is_some())
            .filter(|_| decision == crate::forward::budget::Decision::Forward);
        let case_id = hard_case
            .map(|_| crate::forward::case_id(&self.config.fleet.device_id, cache_key.as_bytes()));
        let edge_entry = CachedResult {
            label: response.label.clone(),
            index: prediction_index,
            confidence: response.confidence,
            margin: response.margin,
            entropy: response.entropy,
            tier: "edge".into(),
            output: response.output.clone(),
            tensors: Vec::new(),
            answer: None,
        };
        if hard_case.is_none() {
            self.cache_edge(cache_key, edge_entry.clone()).await;
        }
        if let Some((c, tensor, sample)) = shadow_input {
            // Forwarded hard cases always run, so the cloud's label can say which model was right.
            if case_id.is_some() || sample {
                // A candidate that preprocesses differently decodes the image itself, on the shadow thread.
                let input = match (&raw, same_input(&c, &engine)) {
                    (_, true) => Some(ShadowInput::Tensor(tensor)),
                    (Some(raw), false) => Some(ShadowInput::Image(raw.clone(), limits)),
                    (None, false) => None,
                };
                if let Some(input) = input {
                    self.shadow(c, input, &response, micros(ran.run), case_id.clone());
                }
            }
        }
        if let (Some(f), Some(id)) = (hard_case, case_id) {
            let case = crate::forward::Case {
                id: id.clone(),
                device: self.config.fleet.device_id.clone(),
                image: raw.as_ref().map(|r| r.to_vec()).unwrap_or_default(),
                edge_label: response.label.clone(),
                edge_confidence: response.confidence,
                edge_model: response.model.digest.clone(),
                cache_key: cache_key.as_bytes().to_vec(),
                created_unix: f.now_unix(),
                model: self.name.clone(),
                tensor: case_tensor.unwrap_or_default(),
                task: None,
            };
            response.case_id = Some(id.clone());
            response.edge_label = Some(response.label.clone());
            match f.forward(case).await {
                Ok(Some(answer)) => {
                    self.note_cloud_label(&id, &answer.label);
                    response.source = Source::Cloud;
                    response.label = answer.label;
                    response.confidence = answer.confidence;
                    response.margin = answer.margin;
                    response.entropy = answer.entropy;
                    response.forwarded = Some(Forwarded::Answered);
                }
                Ok(None) => response.forwarded = Some(Forwarded::Queued),
                Err(e) => response.forwarded = Some(e.forwarded()),
            }
            // Cached only once the case is durably queued (so a crash in between cannot leave a cached answer whose
            // case never reached the cloud), and never over the cloud's answer, which may have come meanwhile.
            if response.forwarded != Some(Forwarded::Answered) {
                self.cache_edge(cache_key, edge_entry).await;
            }
            response.latency_us = micros(start.elapsed());
        }
        Ok(response)
    }

    /// Caches the edge model's answer, unless the cloud's answer for this input is there already (blocking work off
    /// the async threads).
    async fn cache_edge(&self, key: CacheKey, entry: CachedResult) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let stored = crate::blocking::run(move || cache.insert_unless_cloud(&key, &entry)).await;
        match stored {
            Ok(evicted) if evicted > 0 => {
                metrics::counter!(crate::telemetry::CACHE_EVICTIONS).increment(evicted)
            }
            Err(e) => tracing::debug!(error = %e, "cannot cache the result"),
            _ => {}
        }
    }

    fn record_arm(&self, arm: ArmName, confidence: f32, run_us: Option<u64>) {
        let i = usize::from(arm == ArmName::Candidate);
        lock(&self.arms)[i].record(arm.name(), confidence, run_us);
    }

    /// Queues a shadow run of the candidate on the shadow thread; the answer has been decided already and is never
    /// delayed. A full queue (the CPU share used up) skips the sample and counts it.
    fn shadow(
        &self,
        candidate: Arc<Engine>,
        input: ShadowInput,
        active: &InferResponse,
        active_us: u64,
        case_id: Option<String>,
    ) {
        let (label, confidence) = (active.label.clone(), active.confidence);
        self.shadow_job(
            candidate,
            move |c| match input {
                ShadowInput::Tensor(t) => c.classify(&t),
                ShadowInput::Image(raw, limits) => c
                    .tensor_from_image(&raw, &limits)
                    .and_then(|t| c.classify(&t)),
            },
            move |s, p, us| {
                s.record(ShadowRun {
                    active_label: &label,
                    active_confidence: confidence,
                    active_us,
                    candidate_label: &p.label,
                    candidate_confidence: p.confidence,
                    candidate_us: us,
                    case_id: case_id.as_deref(),
                })
            },
        );
    }

    async fn run(
        &self,
        engine: &Arc<Engine>,
        tensor: Vec<f32>,
    ) -> Result<crate::worker::Ran, ServiceError> {
        let rx = self
            .pool
            .submit((**engine).clone(), tensor)
            .map_err(ServiceError::Busy)?;
        worker_reply(rx).await
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
        // Read before the literal below: its lock guards live to the end of the statement.
        let forward = self.forwarder.get().map(|f| {
            let (runtime, manifest) = self.thresholds();
            let mut status = f.status(runtime, manifest);
            let limits = self.budget_limits();
            let mut b = lock(&self.budget);
            let (runs, fwd) = b.window(Instant::now(), limits.window);
            status.budget = (!limits.is_unlimited()).then(|| crate::wire::status::BudgetStatus {
                max_fraction: limits.max_fraction,
                max_per_s: limits.max_per_s,
                window_s: limits.window.as_secs(),
                window_runs: runs as u64,
                window_forwarded: fwd as u64,
                forwarded: b.forwarded_total,
                skipped: b.skipped_total,
                bar: b.last_threshold,
            });
            status
        });
        let drift = lock(&self.drift).status(lock(&self.model_baseline).as_ref());
        ServiceStatus {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            model: ModelInfo::of(&engine),
            slot: self.slot(),
            uptime_s: self.started.elapsed().as_secs(),
            workers: self.pool.workers() as u64,
            queue_depth: self.pool.depth() as u64,
            counters: self.counters.snapshot(),
            cache,
            trial: lock(&self.trial)
                .as_ref()
                .map(|p| p.summary(Instant::now())),
            last_transition: transitions.back().cloned(),
            transitions: transitions.into(),
            last_transfer: lock(&self.last_transfer).clone(),
            download: lock(&self.download).clone(),
            settings: lock(&self.settings).clone(),
            latency_us: self.counters.latency_percentiles(),
            cache_hit_rate: self.counters.cache_hit_rate(),
            forward,
            candidate: self.candidate().map(|c| ModelInfo::of(&c)),
            shadow: lock(&self.shadow).summary(self.shadow_fraction()),
            ab: (self.split() > 0.0 && self.candidate().is_some()).then(|| {
                let arms = lock(&self.arms);
                AbSummary {
                    split: self.split(),
                    active: arms[0].summary(),
                    candidate: arms[1].summary(),
                }
            }),
            drift,
            int8: engine.int8_choice(),
        }
    }
}

/// Which tiers may answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// The edge model, and the cloud for a hard case (`/v1`).
    Cascade,
    /// The edge model alone, whose output tensor the answer carries.
    EdgeWithOutput,
}

/// What a request brings: an encoded image, or a tensor already preprocessed for the model.
enum Input {
    Image(bytes_like::Bytes),
    Tensor(Vec<f32>),
}

/// What a shadow run starts from: the live model's tensor, or the image when the candidate preprocesses differently.
enum ShadowInput {
    Tensor(Vec<f32>),
    Image(bytes_like::Bytes, DecodeLimits),
}

/// A worker's answer: an input that does not fit the model is the caller's fault, anything else the agent's.
async fn worker_reply<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, InferenceError>>,
) -> Result<T, ServiceError> {
    rx.await
        .map_err(|_| ServiceError::Internal("the worker stopped before answering".into()))?
        .map_err(|e| match e {
            InferenceError::InputShape { .. } | InferenceError::Tensors(_) => {
                ServiceError::BadInput(e)
            }
            other => ServiceError::Internal(other.to_string()),
        })
}

/// Both models take the same tensor from an image.
fn same_input(a: &Engine, b: &Engine) -> bool {
    a.spec().input == b.spec().input && a.spec().preprocess == b.spec().preprocess
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// The body type the service takes (re-exported so the API layer and tests need not name axum's).
pub mod bytes_like {
    pub use axum::body::Bytes;
}
