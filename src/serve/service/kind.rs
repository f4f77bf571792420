//! What differs by the kind of model on the one request path ([`super::pipeline`]): how a request's input is
//! prepared for a release and keyed in the cache, which worker job runs it, how a cached entry or a run becomes an
//! answer, what a hard case carries, and how a shadow run is compared. The path itself (admission, cache, worker,
//! fallback, hard case, shadow, answer) is written once, in the pipeline.
//!
//! The cache key covers what makes the answer: the release, the input tensor and, for a task model, the image's
//! size (boxes are in its pixels, and two sizes of one photo can give the same tensor) and the call's thresholds.

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

use super::{Service, ServiceError};
use crate::bundle::BaselineScore;
use crate::inference::task::{agreement, Fit, Overrides, Resize, Task};
use crate::inference::{DecodeLimits, Engine, InferenceError, TensorValue};
use crate::serve::answer::{
    micros, Answer, InferResponse, ModelInfo, TaskResponse, TensorsResponse,
};
use crate::serve::request::Input;
use crate::serve::shadow::{ShadowRun, ShadowStats};
use crate::store::{CacheKey, CachedAnswer, CachedResult};
use crate::wire::status::{ArmName, Forwarded, Source};
use crate::worker::TaskInput;

/// Outputs larger than this (elements, all outputs together) are not kept in a task model's cache entry: a YOLO
/// head of 8,400 anchors is 700 k values. A request that asks for them then runs the model; the decoded answer is
/// always cached.
const MAX_CACHED_OUTPUT_ELEMENTS: usize = 16 * 1024;

/// The kinds of model, by the requests they take and the answers they give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// An image (or its tensor) in, a label out.
    Classifier,
    /// A detector or a scorer of images: an image (or its tensor) in, a task answer out.
    ImageTask,
    /// A raw tensor model (or a scorer of tensors): named tensors in and out.
    Tensors,
}

impl Kind {
    pub(super) fn of(engine: &Engine) -> Kind {
        if engine.is_raw() {
            Kind::Tensors
        } else if engine.task().is_some() {
            Kind::ImageTask
        } else {
            Kind::Classifier
        }
    }

    /// Whether `other` (a fallback, a candidate) answers the requests `engine` takes: another kind, task or set of
    /// tensors cannot stand in for it.
    pub(super) fn serves_like(self, engine: &Engine, other: &Engine) -> bool {
        Kind::of(other) == self
            && match self {
                Kind::Classifier => true,
                Kind::ImageTask => other.task().map(Task::kind) == engine.task().map(Task::kind),
                Kind::Tensors => other.spec().raw() == engine.spec().raw(),
            }
    }

    /// Whether `b` takes the input prepared for `a` as it is; else an image is prepared again for `b` (and a
    /// tensor request cannot reach it).
    pub(super) fn same_input(self, a: &Engine, b: &Engine) -> bool {
        match self {
            Kind::Tensors => a.spec().raw() == b.spec().raw(),
            _ => a.spec().input == b.spec().input && a.spec().preprocess == b.spec().preprocess,
        }
    }

    /// A staged candidate answers a share of an image model's requests (A/B); a raw candidate is only shadowed.
    pub(super) fn splits(self) -> bool {
        self != Kind::Tensors
    }

    /// A classifier's forwarded hard cases always run on a shadowed candidate: the cloud's label says which model
    /// was right.
    pub(super) fn shadows_hard_cases(self) -> bool {
        self == Kind::Classifier
    }

    /// Refuses a request this kind of model cannot take, in a sentence that says what it takes.
    pub(super) fn check(
        self,
        name: &str,
        engine: &Engine,
        input: &Input,
        overrides: &Overrides,
    ) -> Result<(), ServiceError> {
        let refuse = |m: String| Err(ServiceError::BadInput(InferenceError::Tensors(m)));
        match (self, input) {
            (Kind::Tensors, Input::Image(_) | Input::Tensor(_)) => {
                return refuse(format!(
                    "model {name} takes tensors, not an image: send its inputs through the Open Inference \
                     Protocol (POST /v2/models/{name}/infer)"
                ))
            }
            (Kind::Classifier | Kind::ImageTask, Input::Tensors(_)) => {
                return refuse(format!(
                    "model {name} is {}: send one FP32 tensor of its input shape, or an image",
                    match self {
                        Kind::Classifier => "an image classifier".to_string(),
                        _ => format!("a {} of images", engine.spec().kind().name()),
                    }
                ))
            }
            _ => {}
        }
        if self == Kind::ImageTask {
            overrides
                .validate()
                .map_err(|e| ServiceError::BadInput(InferenceError::Task(e)))
        } else if !overrides.is_empty() {
            refuse(format!(
                "model {name} is not a detector: score_threshold, iou_threshold and max_detections do not apply \
                 to it"
            ))
        } else {
            Ok(())
        }
    }

    /// The input made ready for `engine`'s worker (blocking: an image is decoded here), checked against its spec.
    pub(super) fn prepare(
        self,
        engine: &Engine,
        input: Input,
        overrides: &Overrides,
        limits: &DecodeLimits,
    ) -> Result<Prepared, ServiceError> {
        let fits = |t: &[f32]| {
            let spec = engine.spec();
            if t.len() == spec.input_len() {
                Ok(())
            } else {
                Err(ServiceError::BadInput(InferenceError::InputShape {
                    expected: spec.input_len(),
                    got: t.len(),
                    shape: spec.input.shape.clone(),
                }))
            }
        };
        match (self, input) {
            (Kind::Classifier, Input::Image(b)) => engine
                .tensor_from_image(&b, limits)
                .map(Prepared::Tensor)
                .map_err(ServiceError::BadInput),
            (Kind::Classifier, Input::Tensor(t)) => fits(&t).map(|_| Prepared::Tensor(t)),
            (Kind::ImageTask, Input::Image(b)) => {
                let (tensor, fit) = engine
                    .task_input_from_image(&b, limits)
                    .map_err(ServiceError::BadInput)?;
                Ok(Prepared::Task(TaskInput {
                    tensor,
                    fit,
                    overrides: *overrides,
                }))
            }
            (Kind::ImageTask, Input::Tensor(t)) => {
                fits(&t)?;
                let (w, h) = (
                    engine.spec().preprocess.width,
                    engine.spec().preprocess.height,
                );
                Ok(Prepared::Task(TaskInput {
                    tensor: t,
                    fit: Fit::new(Resize::Stretch, w, h, w, h),
                    overrides: *overrides,
                }))
            }
            (Kind::Tensors, Input::Tensors(inputs)) => {
                let io = engine.spec().raw().ok_or_else(|| {
                    ServiceError::Internal("a raw model without its tensors".into())
                })?;
                if inputs.len() != io.inputs.len() {
                    return Err(ServiceError::BadInput(InferenceError::Tensors(format!(
                        "model {} takes {} inputs, the request has {}",
                        engine.spec().name,
                        io.inputs.len(),
                        inputs.len()
                    ))));
                }
                for (v, t) in inputs.iter().zip(&io.inputs) {
                    v.check(t)
                        .map_err(|e| ServiceError::BadInput(InferenceError::Tensors(e)))?;
                }
                Ok(Prepared::Tensors(inputs))
            }
            (kind, _) => Err(ServiceError::Internal(format!(
                "a {kind:?} model was handed an input it does not take"
            ))),
        }
    }

    /// A cache entry as the answer to a request (`want_outputs`: the request needs the model's outputs).
    pub(super) fn cached(
        self,
        engine: &Engine,
        hit: CachedResult,
        want_outputs: bool,
        arm: Option<ArmName>,
        start: Instant,
    ) -> Cached {
        let source = if hit.tier == crate::store::Tier::Cloud {
            Source::CloudCache
        } else {
            Source::Cache
        };
        let model = ModelInfo::of(engine);
        match self {
            // The cloud's answer carries no output tensor: the model runs for it, and the cloud's label stands (the
            // case is not forwarded again).
            Kind::Classifier if want_outputs && hit.output.is_empty() => Cached::CloudLabel(hit),
            Kind::Classifier => {
                let confidence = hit.confidence;
                Cached::Answer(
                    Answer::Class(InferResponse {
                        label: hit.label,
                        confidence: hit.confidence,
                        margin: hit.margin,
                        entropy: hit.entropy,
                        source,
                        model,
                        latency_us: micros(start.elapsed()),
                        edge_label: None,
                        forwarded: None,
                        case_id: None,
                        arm,
                        hardness: None,
                        output: hit.output,
                    }),
                    Some(confidence),
                )
            }
            Kind::ImageTask => {
                let (Some(task), Some(cached)) = (engine.task(), hit.answer.clone()) else {
                    return Cached::Miss;
                };
                if want_outputs && hit.tensors.is_empty() {
                    return Cached::Miss;
                }
                let confidence = cached.answer.confidence(task);
                Cached::Answer(
                    Answer::Task(TaskResponse {
                        arm,
                        outputs: hit.tensors,
                        ..TaskResponse::new(cached.answer, cached.hardness, source, model, start)
                    }),
                    Some(confidence),
                )
            }
            Kind::Tensors if hit.tensors.is_empty() => Cached::Miss,
            Kind::Tensors => {
                let task = cached_tensor_task(engine, &hit, start);
                Cached::Answer(
                    Answer::Tensors(TensorsResponse {
                        source: task.as_ref().map_or(Source::Cache, |t| t.source),
                        outputs: hit.tensors,
                        model,
                        latency_us: micros(start.elapsed()),
                        task,
                    }),
                    None,
                )
            }
        }
    }
}

/// What a cache entry is worth to a request.
pub(super) enum Cached {
    /// The answer, and its confidence for the A/B arm's figures.
    Answer(Answer, Option<f32>),
    /// The cloud's label for a request that needs the model's output: the model runs, and this label stands.
    CloudLabel(CachedResult),
    /// Not usable: the model runs.
    Miss,
}

/// A request's input made ready for one release's worker.
#[derive(Debug, Clone)]
pub(super) enum Prepared {
    Tensor(Vec<f32>),
    Task(TaskInput),
    Tensors(Vec<TensorValue>),
}

impl Prepared {
    /// The cache key of this input on `release_id`: the release, then a digest of what makes the answer.
    pub(super) fn key(&self, release_id: &str) -> CacheKey {
        match self {
            Prepared::Tensor(t) => CacheKey::new(release_id, t),
            Prepared::Task(i) => task_key(release_id, &i.tensor, &i.fit, &i.overrides),
            Prepared::Tensors(v) => CacheKey::with_input_digest(
                release_id,
                &crate::inference::tensor::tensors_digest(v),
            ),
        }
    }

    /// Runs on this thread (the shadow thread), timed.
    pub(super) fn run_here(self, engine: &Engine) -> Result<Ran, InferenceError> {
        let t = Instant::now();
        Ok(match self {
            Prepared::Tensor(x) => Ran::Class(crate::worker::Ran {
                prediction: engine.classify(&x)?,
                run: t.elapsed(),
            }),
            Prepared::Task(i) => Ran::Task(crate::worker::RanTask {
                decoded: engine.run_task(&i.tensor, &i.fit, &i.overrides)?,
                outputs: Vec::new(),
                run: t.elapsed(),
            }),
            Prepared::Tensors(v) => Ran::Tensors(crate::worker::RanTensors {
                outputs: engine.run_tensors(&v)?,
                run: t.elapsed(),
            }),
        })
    }
}

/// The cache key of a task request: the release, then a digest of the tensor, the image's size and the thresholds.
fn task_key(release_id: &str, tensor: &[f32], fit: &Fit, overrides: &Overrides) -> CacheKey {
    let mut h = Sha256::new();
    h.update(b"outpost-task-input-v1\0");
    for x in tensor {
        h.update(x.to_le_bytes());
    }
    h.update(fit.image_width.to_le_bytes());
    h.update(fit.image_height.to_le_bytes());
    h.update(postcard::to_stdvec(overrides).unwrap_or_default());
    CacheKey::with_input_digest(release_id, &h.finalize().into())
}

/// The name a drift baseline gives a classifier's score.
fn baseline_score(s: crate::config::HardnessScore) -> BaselineScore {
    use crate::config::HardnessScore;
    match s {
        HardnessScore::MaxProb => BaselineScore::MaxProb,
        HardnessScore::Margin => BaselineScore::Margin,
        HardnessScore::Entropy => BaselineScore::Entropy,
    }
}

/// A worker's run, by kind.
pub(super) enum Ran {
    Class(crate::worker::Ran),
    Task(crate::worker::RanTask),
    Tensors(crate::worker::RanTensors),
}

impl Ran {
    /// The time the model itself took (queueing excluded): what probation compares.
    pub(super) fn run(&self) -> Duration {
        match self {
            Ran::Class(r) => r.run,
            Ran::Task(r) => r.run,
            Ran::Tensors(r) => r.run,
        }
    }
}

/// A run made an answer: what probation, the A/B arm, the drift alarm and the cache take from it.
pub(super) struct Judged {
    pub answer: Answer,
    /// The task's or the classifier's confidence (none for a raw model).
    pub confidence: Option<f32>,
    /// A task model's count (boxes, positive scores): probation compares it too.
    pub count: Option<usize>,
    /// How hard the input was on the forward score, the bar a hard case passes and the score's name (a drift
    /// baseline of another score is not compared); none for a raw model.
    pub hardness: Option<(f32, f32, BaselineScore)>,
    /// What the cache keeps of the edge's answer (none when nothing is cached).
    pub entry: Option<CachedResult>,
}

impl Service {
    /// Makes the answer of a run (`cacheable`: build the cache entry too).
    pub(super) fn judge(
        &self,
        engine: &Engine,
        ran: Ran,
        (want_outputs, cacheable): (bool, bool),
        arm: Option<ArmName>,
        start: Instant,
    ) -> Result<Judged, ServiceError> {
        let model = ModelInfo::of(engine);
        match ran {
            Ran::Class(ran) => {
                let p = ran.prediction;
                let (runtime, manifest) = self.thresholds();
                let (score, t) = match self.forwarding.forwarder() {
                    Some(f) => f.policy(runtime, manifest),
                    None => {
                        let score = self.config.forward.score;
                        let t = runtime
                            .or(self.config.forward.threshold)
                            .or(manifest)
                            .unwrap_or_else(|| {
                                crate::config::ForwardConfig::default_threshold(score)
                            });
                        (score, t)
                    }
                };
                let hardness = score.hardness(p.confidence, p.margin, p.entropy);
                let entry = cacheable.then(|| CachedResult {
                    label: p.label.clone(),
                    index: p.index as u32,
                    confidence: p.confidence,
                    margin: p.margin,
                    entropy: p.entropy,
                    tier: crate::store::Tier::Edge,
                    output: p.output.clone(),
                    tensors: Vec::new(),
                    answer: None,
                });
                Ok(Judged {
                    confidence: Some(p.confidence),
                    count: None,
                    hardness: Some((hardness, score.hardness_bar(t), baseline_score(score))),
                    entry,
                    answer: Answer::Class(InferResponse {
                        label: p.label,
                        confidence: p.confidence,
                        margin: p.margin,
                        entropy: p.entropy,
                        source: Source::Edge,
                        model,
                        latency_us: micros(start.elapsed()),
                        edge_label: None,
                        forwarded: None,
                        case_id: None,
                        arm,
                        hardness: Some(hardness),
                        output: p.output,
                    }),
                })
            }
            Ran::Task(ran) => {
                let task = engine.task().ok_or_else(|| {
                    ServiceError::Internal("a task model without its task".into())
                })?;
                let confidence = ran.decoded.answer.confidence(task);
                let entry = cacheable.then(|| task_entry(&ran, confidence));
                let decoded = ran.decoded;
                Ok(Judged {
                    confidence: Some(confidence),
                    count: Some(decoded.answer.count()),
                    hardness: Some((decoded.hardness, 0.0, BaselineScore::Task)),
                    entry,
                    answer: Answer::Task(TaskResponse {
                        arm,
                        outputs: if want_outputs {
                            ran.outputs
                        } else {
                            Vec::new()
                        },
                        ..TaskResponse::new(
                            decoded.answer,
                            decoded.hardness,
                            Source::Edge,
                            model,
                            start,
                        )
                    }),
                })
            }
            Ran::Tensors(ran) => {
                let entry = cacheable.then(|| CachedResult {
                    label: String::new(),
                    index: 0,
                    confidence: 0.0,
                    margin: 0.0,
                    entropy: 0.0,
                    tier: crate::store::Tier::Edge,
                    output: Vec::new(),
                    tensors: ran.outputs.clone(),
                    answer: None,
                });
                // A scorer of tensors: its scores decoded and judged as a task's; a raw model is judged on errors
                // and latency alone.
                let (task, confidence, count, hardness) = match engine.task() {
                    Some(t) => {
                        let decoded = engine
                            .decode_tensors(&ran.outputs)
                            .map_err(ServiceError::Failed)?;
                        let confidence = decoded.answer.confidence(t);
                        let count = decoded.answer.count();
                        let h = decoded.hardness;
                        let response = TaskResponse::new(
                            decoded.answer,
                            h,
                            Source::Edge,
                            model.clone(),
                            start,
                        );
                        (
                            Some(response),
                            Some(confidence),
                            Some(count),
                            Some((h, 0.0, BaselineScore::Task)),
                        )
                    }
                    None => (None, None, None, None),
                };
                Ok(Judged {
                    confidence,
                    count,
                    hardness,
                    entry,
                    answer: Answer::Tensors(TensorsResponse {
                        outputs: ran.outputs,
                        source: Source::Edge,
                        model,
                        latency_us: micros(start.elapsed()),
                        task,
                    }),
                })
            }
        }
    }

    /// A hard case of `answer`: its input (the image as sent, else the prepared input: a tensor, a scorer's
    /// tensors), the call's thresholds and the edge's answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn case(
        &self,
        (id, created_unix): (&str, u64),
        key: &CacheKey,
        answer: &Answer,
        confidence: f32,
        image: Option<&crate::serve::bytes_like::Bytes>,
        prepared: Option<Prepared>,
        overrides: Overrides,
    ) -> crate::forward::Case {
        let image = image.map(|b| b.to_vec()).unwrap_or_default();
        let (tensor, inputs) = match prepared {
            Some(Prepared::Tensor(t)) => (t, Vec::new()),
            Some(Prepared::Task(i)) => (i.tensor, Vec::new()),
            Some(Prepared::Tensors(v)) => (Vec::new(), v),
            None => (Vec::new(), Vec::new()),
        };
        let task = |r: &TaskResponse| crate::forward::TaskCase {
            overrides,
            edge_answer: r.answer.clone(),
            edge_hardness: r.hardness,
            inputs: inputs.clone(),
        };
        let (edge_label, task) = match answer {
            Answer::Class(r) => (r.label.clone(), None),
            Answer::Task(r) => (r.answer.summary(), Some(task(r))),
            Answer::Tensors(r) => match &r.task {
                Some(t) => (t.answer.summary(), Some(task(t))),
                None => (String::new(), None),
            },
        };
        crate::forward::Case {
            id: id.to_string(),
            device: self.config.fleet.device_id.clone(),
            image,
            edge_label,
            edge_confidence: confidence,
            edge_model: answer.model().digest.clone(),
            cache_key: key.as_bytes().to_vec(),
            created_unix,
            model: self.name.clone(),
            tensor,
            task,
        }
    }

    /// What became of a hard case sent as `id`: the cloud's answer replaces the edge's (kept beside it), or the case
    /// is queued, or it could not be. Returns whether the cloud answered.
    pub(super) fn absorb(
        &self,
        answer: &mut Answer,
        id: &str,
        forwarded: Result<Option<crate::forward::Answer>, crate::forward::ForwardError>,
    ) -> bool {
        match answer {
            Answer::Class(r) => {
                r.case_id = Some(id.to_string());
                r.edge_label = Some(r.label.clone());
                r.forwarded = Some(match forwarded {
                    Ok(Some(cloud)) => {
                        self.note_cloud_label(id, &cloud.label);
                        r.source = Source::Cloud;
                        r.label = cloud.label;
                        r.confidence = cloud.confidence;
                        r.margin = cloud.margin;
                        r.entropy = cloud.entropy;
                        Forwarded::Answered
                    }
                    Ok(None) => Forwarded::Queued,
                    Err(e) => e.forwarded(),
                });
                r.forwarded == Some(Forwarded::Answered)
            }
            Answer::Task(r) => {
                r.case_id = Some(id.to_string());
                r.absorb(forwarded);
                r.forwarded == Some(Forwarded::Answered)
            }
            Answer::Tensors(r) => match &mut r.task {
                Some(t) => {
                    t.case_id = Some(id.to_string());
                    t.absorb(forwarded);
                    r.source = t.source;
                    t.forwarded == Some(Forwarded::Answered)
                }
                None => false,
            },
        }
    }

    /// Queues a shadow run of the candidate on the shadow thread, compared with the live answer by the kind's own
    /// agreement; the answer has been decided already and is never delayed.
    pub(super) fn shadow(
        &self,
        candidate: std::sync::Arc<Engine>,
        from: ShadowFrom,
        live: &Answer,
        live_us: u64,
        case_id: Option<String>,
    ) {
        let kind = Kind::of(&candidate);
        let run = move |c: &Engine| -> Result<Ran, InferenceError> {
            let prepared = match from {
                ShadowFrom::Prepared(p) => p,
                ShadowFrom::Image(image, limits, overrides) => kind
                    .prepare(c, Input::Image(image), &overrides, &limits)
                    .map_err(|e| match e {
                        ServiceError::BadInput(e) | ServiceError::Failed(e) => e,
                        other => InferenceError::Run(other.to_string()),
                    })?,
            };
            prepared.run_here(c)
        };
        let task = candidate.task().cloned();
        match live {
            Answer::Class(r) => {
                let (label, confidence) = (r.label.clone(), r.confidence);
                self.shadow_job(candidate, run, move |s, ran, us| {
                    if let Ran::Class(c) = ran {
                        s.record(ShadowRun {
                            active_label: &label,
                            active_confidence: confidence,
                            active_us: live_us,
                            candidate_label: &c.prediction.label,
                            candidate_confidence: c.prediction.confidence,
                            candidate_us: us,
                            case_id: case_id.as_deref(),
                        })
                    }
                })
            }
            Answer::Task(r) => {
                let live = r.answer.clone();
                self.shadow_job(candidate, run, move |s, ran, us| {
                    if let (Ran::Task(c), Some(t)) = (ran, &task) {
                        s.record_task(
                            agreement(&live, &c.decoded.answer),
                            (live.confidence(t), c.decoded.answer.confidence(t)),
                            live_us,
                            us,
                        )
                    }
                })
            }
            Answer::Tensors(r) => {
                let active = r.outputs.clone();
                self.shadow_job(candidate, run, move |s, ran, us| {
                    let Ran::Tensors(c) = ran else { return };
                    // A scorer of tensors agrees by its scores' sides of the threshold; a raw model by its
                    // outputs' values.
                    if let Some(t) = &task {
                        let decode = |o: &[TensorValue]| {
                            let fit = Fit::new(Default::default(), 0, 0, 0, 0);
                            t.decode(o, &[], (0, 0), &fit, &Default::default()).ok()
                        };
                        if let (Some(a), Some(b)) = (decode(&active), decode(&c.outputs)) {
                            let conf = (a.answer.confidence(t), b.answer.confidence(t));
                            return s.record_task(
                                agreement(&a.answer, &b.answer),
                                conf,
                                live_us,
                                us,
                            );
                        }
                    }
                    s.record_raw(
                        crate::serve::shadow::raw_outputs_agree(&active, &c.outputs),
                        live_us,
                        us,
                    )
                })
            }
        }
    }

    /// Runs `run` on the candidate on the shadow thread and hands its result to `record` with the run's time. A
    /// candidate replaced meanwhile has no current figures to add to; a failed run is counted; a full queue (the
    /// CPU share used up) skips the sample and counts it.
    fn shadow_job(
        &self,
        candidate: std::sync::Arc<Engine>,
        run: impl FnOnce(&Engine) -> Result<Ran, InferenceError> + Send + 'static,
        record: impl FnOnce(&mut ShadowStats, Ran, u64) + Send + 'static,
    ) {
        let stats = self.staged.shadow.clone();
        let accepted = self.background().try_run(move || {
            let t = Instant::now();
            let result = run(&candidate);
            let us = micros(t.elapsed());
            let mut s = super::lock(&stats);
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
            self.staged.dropped_sample();
        }
    }
}

/// What a shadow run (or a retry on the previous release) starts from: the live run's input when the other release
/// takes it as it is, else the image, decoded again its way.
pub(super) enum ShadowFrom {
    Prepared(Prepared),
    Image(crate::serve::bytes_like::Bytes, DecodeLimits, Overrides),
}

/// The cache entry of a task model's run: the answer and its hardness, and the outputs when they are small enough.
fn task_entry(ran: &crate::worker::RanTask, confidence: f32) -> CachedResult {
    let outputs_len: usize = ran.outputs.iter().map(|o| o.data.len()).sum();
    CachedResult {
        label: ran.decoded.answer.summary(),
        index: 0,
        confidence,
        margin: 0.0,
        entropy: 0.0,
        tier: crate::store::Tier::Edge,
        output: Vec::new(),
        tensors: if outputs_len <= MAX_CACHED_OUTPUT_ELEMENTS {
            ran.outputs.clone()
        } else {
            Vec::new()
        },
        answer: Some(CachedAnswer {
            answer: ran.decoded.answer.clone(),
            hardness: ran.decoded.hardness,
        }),
    }
}

/// A scorer of tensors' answer from a cache entry: the cloud's when it answered the case, else decoded from the
/// cached outputs (a raw model: none).
fn cached_tensor_task(engine: &Engine, hit: &CachedResult, start: Instant) -> Option<TaskResponse> {
    engine.task()?;
    let (answer, hardness, source) = match (&hit.answer, hit.tier) {
        (Some(a), crate::store::Tier::Cloud) => (a.answer.clone(), a.hardness, Source::CloudCache),
        _ => {
            let d = engine.decode_tensors(&hit.tensors).ok()?;
            (d.answer, d.hardness, Source::Cache)
        }
    };
    Some(TaskResponse::new(
        answer,
        hardness,
        source,
        ModelInfo::of(engine),
        start,
    ))
}
