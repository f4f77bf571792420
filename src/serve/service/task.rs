//! The request path of a task model (detector, scorer): decode the image and note how it was fitted, look up the
//! cache, run on a worker, decode with the call's thresholds, record the run for probation, cache the answer.
//!
//! The cache key covers what makes the answer: the release, the input tensor, the image's size (boxes are in its
//! pixels, and two sizes of one photo can give the same tensor) and the call's thresholds.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

use super::{in_candidate_arm, micros, same_input, sampled, worker_reply, Service, ServiceError};
use crate::inference::task::agreement;
use crate::inference::task::{AnswerView, Fit, Overrides, Resize, Task, TaskAnswer, TaskKind};
use crate::inference::{DecodeLimits, Engine, InferenceError, TensorValue};
use crate::serve::ModelInfo;
use crate::store::CacheKey;
use crate::store::{CachedAnswer, CachedResult};
use crate::wire::status::{ArmName, Forwarded, Source};
use crate::worker::TaskInput;
use std::sync::atomic::Ordering;

/// Outputs larger than this (elements, all outputs together) are not kept in a cache entry: a YOLO head of 8,400
/// anchors is 700 k values. A request that asks for them then runs the model; the decoded answer is always cached.
const MAX_CACHED_OUTPUT_ELEMENTS: usize = 16 * 1024;

/// What a task request brings: an encoded image (boxes come back in its pixels), or a tensor already preprocessed
/// for the model (boxes in the model's input pixels).
#[derive(Debug, Clone)]
pub enum TaskRequestInput {
    Image(super::bytes_like::Bytes),
    Tensor(Vec<f32>),
}

/// What a task model's shadow run starts from: the live model's input, or the image when the candidate
/// preprocesses differently.
enum ShadowTaskInput {
    Tensor(TaskInput),
    Image(super::bytes_like::Bytes, DecodeLimits, Overrides),
}

/// A task model's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResponse {
    pub answer: TaskAnswer,
    /// How unsure the model was, 0 to 1 ([`crate::inference::task::Decoded::hardness`]).
    pub hardness: f32,
    pub source: Source,
    pub model: ModelInfo,
    pub latency_us: u64,
    /// For a hard case answered by the cloud: the edge model's answer beside it.
    pub edge_answer: Option<TaskAnswer>,
    pub forwarded: Option<Forwarded>,
    pub case_id: Option<String>,
    pub arm: Option<ArmName>,
    /// The model's outputs, when the request asked for them and they were at hand (the Open Inference Protocol).
    pub outputs: Vec<TensorValue>,
}

impl TaskResponse {
    /// An answer with nothing forwarded, no arm and no outputs.
    fn new(
        answer: TaskAnswer,
        hardness: f32,
        source: Source,
        model: ModelInfo,
        start: Instant,
    ) -> TaskResponse {
        TaskResponse {
            answer,
            hardness,
            source,
            model,
            latency_us: micros(start.elapsed()),
            edge_answer: None,
            forwarded: None,
            case_id: None,
            arm: None,
            outputs: Vec::new(),
        }
    }

    /// What became of the case this answer's input was sent as: the cloud's answer of the same task replaces the
    /// edge's (kept beside it), or the case is queued, or it could not be queued.
    fn absorb(
        &mut self,
        forwarded: Result<Option<crate::forward::Answer>, crate::forward::ForwardError>,
    ) {
        self.forwarded = Some(match forwarded {
            Ok(Some(cloud)) => match cloud.task {
                Some(answer) if answer.kind() == self.answer.kind() => {
                    self.edge_answer = Some(std::mem::replace(&mut self.answer, answer));
                    self.source = Source::Cloud;
                    Forwarded::Answered
                }
                _ => {
                    tracing::warn!("the cloud answered a task case with another kind of answer; the edge answers");
                    Forwarded::Failed
                }
            },
            Ok(None) => Forwarded::Queued,
            Err(e) => e.forwarded(),
        });
    }
}

/// The JSON of `/v1` (and of a v2 answer's `answer` parameter): the task, its answer's fields at the top level, then
/// where it came from.
#[derive(Serialize)]
struct View<'a> {
    task: TaskKind,
    #[serde(flatten)]
    answer: AnswerView<'a>,
    hardness: f32,
    source: Source,
    model: &'a ModelInfo,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_answer: Option<AnswerView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarded: Option<Forwarded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    case_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arm: Option<ArmName>,
}

impl Serialize for TaskResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        View {
            task: self.answer.kind(),
            answer: self.answer.view(),
            hardness: self.hardness,
            source: self.source,
            model: &self.model,
            latency_us: self.latency_us,
            edge_answer: self.edge_answer.as_ref().map(TaskAnswer::view),
            forwarded: self.forwarded,
            case_id: self.case_id.as_deref(),
            arm: self.arm,
        }
        .serialize(s)
    }
}

/// The cache entry of an edge run: the answer and its hardness, and the outputs when they are small enough.
fn edge_entry(ran: &crate::worker::RanTask, confidence: f32) -> CachedResult {
    let outputs_len: usize = ran.outputs.iter().map(|o| o.data.len()).sum();
    CachedResult {
        label: ran.decoded.answer.summary(),
        index: 0,
        confidence,
        margin: 0.0,
        entropy: 0.0,
        tier: "edge".into(),
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

impl Service {
    /// Answers one encoded image with a task model (detector, scorer): the cache, the worker pool, probation's
    /// record of the run. `want_outputs` asks for the model's outputs too (they come from the cache when it kept
    /// them, else from a run).
    pub async fn infer_task(
        &self,
        image: TaskRequestInput,
        overrides: Overrides,
        want_outputs: bool,
    ) -> Result<TaskResponse, ServiceError> {
        let start = Instant::now();
        let result = self.task_inner(image, overrides, want_outputs, start).await;
        self.count(result.as_ref().map(|r| r.source), start);
        result
    }

    async fn task_inner(
        &self,
        image: TaskRequestInput,
        overrides: Overrides,
        want_outputs: bool,
        start: Instant,
    ) -> Result<TaskResponse, ServiceError> {
        let active = self.engine();
        // Taken with the engine: a rollback that lands while this request runs must not take its fallback away.
        let fallback_at_admission = self.fallback().filter(|f| {
            f.release() != active.release()
                && f.task().map(Task::kind) == active.task().map(Task::kind)
        });
        let Some(task) = active.task().cloned() else {
            return Err(ServiceError::BadInput(InferenceError::Tensors(format!(
                "model {} is a {}, not a detector or a scorer: send the image to /v1/models/{}/infer without \
                 task parameters",
                self.name,
                active.spec().kind().name(),
                self.name
            ))));
        };
        overrides
            .validate()
            .map_err(|e| ServiceError::BadInput(InferenceError::Tensors(e)))?;
        let limits: DecodeLimits = self.limits;
        let cache = self.cache.clone();
        let a = active.clone();
        let raw_image = match &image {
            TaskRequestInput::Image(b) => Some(b.clone()),
            TaskRequestInput::Tensor(_) => None,
        };
        let (tensor, fit, key, hit) = crate::blocking::run(move || {
            let (tensor, fit) = match image {
                TaskRequestInput::Image(bytes) => a
                    .task_input_from_image(&bytes, &limits)
                    .map_err(ServiceError::BadInput)?,
                TaskRequestInput::Tensor(t) => {
                    let spec = a.spec();
                    if t.len() != spec.input_len() {
                        return Err(ServiceError::BadInput(InferenceError::InputShape {
                            expected: spec.input_len(),
                            got: t.len(),
                            shape: spec.input.shape.clone(),
                        }));
                    }
                    let (w, h) = (spec.preprocess.width, spec.preprocess.height);
                    (t, Fit::new(Resize::Stretch, w, h, w, h))
                }
            };
            let key = task_key(a.release_id(), &tensor, &fit, &overrides);
            let hit = cache.as_ref().and_then(|c| {
                // The cache reports its own failures (once per run of them).
                c.get(&key).unwrap_or_else(|err| {
                    tracing::debug!(error = %err, "cache lookup failed; running the model");
                    None
                })
            });
            Ok::<_, ServiceError>((tensor, fit, key, hit))
        })
        .await?;

        // A/B: a staged candidate of the same task answers a sticky share of the inputs (by the digest of what makes
        // the answer); it must be able to take the input (an image, or a tensor of the same preprocessing).
        let ab = self
            .candidate()
            .filter(|c| {
                c.release() != active.release() && c.task().map(Task::kind) == Some(task.kind())
            })
            .map(|c| (c, self.split()))
            .filter(|(_, split)| *split > 0.0);
        let arm = ab.as_ref().map(|(c, split)| {
            let fits = raw_image.is_some() || same_input(c, &active);
            if fits && in_candidate_arm(key.input_digest(), *split) {
                ArmName::Candidate
            } else {
                ArmName::Active
            }
        });
        if let (Some(ArmName::Candidate), Some((candidate, _))) = (arm, ab) {
            let input = TaskInput {
                tensor,
                fit,
                overrides,
            };
            return self
                .candidate_arm(candidate, &active, raw_image, input, want_outputs, start)
                .await;
        }
        let usable = |h: &CachedResult| !want_outputs || !h.tensors.is_empty();
        if let Some((hit, answer)) = hit
            .filter(usable)
            .and_then(|h| h.answer.clone().map(|a| (h, a)))
        {
            if arm.is_some() {
                self.record_arm(ArmName::Active, answer.answer.confidence(&task), None);
            }
            let source = if hit.tier == "cloud" {
                Source::CloudCache
            } else {
                Source::Cache
            };
            let model = ModelInfo::of(&active);
            return Ok(TaskResponse {
                arm,
                outputs: hit.tensors,
                ..TaskResponse::new(answer.answer, answer.hardness, source, model, start)
            });
        }
        // The case's input: the image as sent, or the request's tensor (kept only when a forwarder may need it).
        let case_input = match (&raw_image, self.forwarder.get()) {
            (Some(b), _) => Some((b.to_vec(), Vec::new())),
            (None, Some(_)) => Some((Vec::new(), tensor.clone())),
            (None, None) => None,
        };
        let input = TaskInput {
            tensor,
            fit,
            overrides,
        };
        // A staged candidate of the same task is shadowed on a sample of the requests (after the answer).
        let shadow = self
            .candidate()
            .filter(|c| {
                c.release() != active.release() && c.task().map(Task::kind) == Some(task.kind())
            })
            .filter(|_| {
                let n = self.shadow_seen.fetch_add(1, Ordering::Relaxed);
                sampled(n, self.shadow_fraction())
            })
            .and_then(|c| {
                let from = if same_input(&c, &active) {
                    ShadowTaskInput::Tensor(input.clone())
                } else {
                    ShadowTaskInput::Image(raw_image.clone()?, limits, overrides)
                };
                Some((c, from))
            });
        // Kept for a second run only while a previous release stands behind a trial.
        let retry = fallback_at_admission.map(|f| (f, input.clone()));
        let (engine, key, ran) = match self.run_task(&active, input).await {
            Ok(ran) => (active.clone(), key, ran),
            Err(ServiceError::Internal(message)) => {
                self.record_error(active.release_id(), &message);
                let Some((previous, input)) = retry else {
                    return Err(ServiceError::Internal(message));
                };
                tracing::warn!(error = %message, "the model on trial failed; answering with the previous model");
                let input = if same_input(&previous, &active) {
                    input
                } else if let Some(image) = raw_image.clone() {
                    let p = previous.clone();
                    let (tensor, fit) = crate::blocking::run(move || {
                        p.task_input_from_image(&image, &limits)
                            .map_err(ServiceError::BadInput)
                    })
                    .await?;
                    TaskInput {
                        tensor,
                        fit,
                        overrides,
                    }
                } else {
                    return Err(ServiceError::Internal(message));
                };
                let key = task_key(previous.release_id(), &input.tensor, &input.fit, &overrides);
                let ran = self.run_task(&previous, input).await?;
                (previous, key, ran)
            }
            Err(e) => return Err(e),
        };
        let task = engine.task().cloned().unwrap_or(task);
        let confidence = ran.decoded.answer.confidence(&task);
        // Probation compares the count too: a detector's boxes, a scorer's positive scores per input.
        let count = Some(ran.decoded.answer.count());
        self.record_run_counted(engine.release_id(), ran.run, Some(confidence), count);
        if arm.is_some() {
            self.record_arm(ArmName::Active, confidence, Some(micros(ran.run)));
        }
        if let Some((candidate, from)) = shadow {
            let (live, us) = (ran.decoded.answer.clone(), micros(ran.run));
            let t = task.clone();
            self.shadow_job(
                candidate,
                move |c| {
                    let input = match from {
                        ShadowTaskInput::Tensor(i) => i,
                        ShadowTaskInput::Image(image, limits, overrides) => {
                            let (tensor, fit) = c.task_input_from_image(&image, &limits)?;
                            TaskInput {
                                tensor,
                                fit,
                                overrides,
                            }
                        }
                    };
                    c.run_task(&input.tensor, &input.fit, &input.overrides)
                },
                move |s, decoded, cand_us| {
                    let ct = decoded.answer.confidence(&t);
                    s.record_task(
                        agreement(&live, &decoded.answer),
                        (live.confidence(&t), ct),
                        us,
                        cand_us,
                    )
                },
            );
        }
        let entry = edge_entry(&ran, confidence);
        let model = ModelInfo::of(&engine);
        let mut response = TaskResponse {
            arm,
            outputs: if want_outputs {
                ran.outputs
            } else {
                Vec::new()
            },
            ..TaskResponse::new(
                ran.decoded.answer,
                ran.decoded.hardness,
                Source::Edge,
                model,
                start,
            )
        };
        // A hard case: an object in the uncertain band, a score near its threshold; within the model's forward
        // budget (the hardest first). Every run's hardness also feeds the drift alarm.
        let decision = self.weigh(response.hardness, 0.0, "task");
        let hard = self
            .forwarder
            .get()
            .filter(|_| decision == crate::forward::budget::Decision::Forward)
            .zip(case_input);
        let Some((f, (image, tensor))) = hard else {
            self.cache_edge(key, entry).await;
            return Ok(response);
        };
        let id = crate::forward::case_id(&self.config.fleet.device_id, key.as_bytes());
        let case = self.task_case(
            (&id, f.now_unix()),
            &key,
            &response,
            confidence,
            (image, tensor, Vec::new()),
            overrides,
        );
        response.case_id = Some(id);
        response.absorb(f.forward(case).await);
        // Cached only once the case is durably queued, and never over the cloud's answer.
        if response.forwarded != Some(Forwarded::Answered) {
            self.cache_edge(key, entry).await;
        }
        response.latency_us = micros(start.elapsed());
        Ok(response)
    }

    /// The candidate's arm of an A/B split: the candidate answers (from its own cache entries or a run), its figures
    /// go to its arm. Its hard cases are not forwarded: the split compares the two models on the edge alone.
    async fn candidate_arm(
        &self,
        candidate: Arc<Engine>,
        active: &Arc<Engine>,
        raw_image: Option<super::bytes_like::Bytes>,
        input: TaskInput,
        want_outputs: bool,
        start: Instant,
    ) -> Result<TaskResponse, ServiceError> {
        let task = candidate
            .task()
            .cloned()
            .ok_or_else(|| ServiceError::Internal("the candidate has no task".into()))?;
        let input = match raw_image {
            Some(image) if !same_input(&candidate, active) => {
                let (c, limits, overrides) = (candidate.clone(), self.limits, input.overrides);
                let (tensor, fit) = crate::blocking::run(move || {
                    c.task_input_from_image(&image, &limits)
                        .map_err(ServiceError::BadInput)
                })
                .await?;
                TaskInput {
                    tensor,
                    fit,
                    overrides,
                }
            }
            _ => input,
        };
        let key = task_key(
            candidate.release_id(),
            &input.tensor,
            &input.fit,
            &input.overrides,
        );
        let cache = self.cache.clone();
        let hit = crate::blocking::value(move || cache.and_then(|c| c.get(&key).ok().flatten()))
            .await?
            .filter(|h| !want_outputs || !h.tensors.is_empty())
            .and_then(|h| h.answer.clone().map(|a| (h, a)));
        if let Some((hit, cached)) = hit {
            self.record_arm(ArmName::Candidate, cached.answer.confidence(&task), None);
            let model = ModelInfo::of(&candidate);
            return Ok(TaskResponse {
                arm: Some(ArmName::Candidate),
                outputs: hit.tensors,
                ..TaskResponse::new(cached.answer, cached.hardness, Source::Cache, model, start)
            });
        }
        let ran = self.run_task(&candidate, input).await?;
        let confidence = ran.decoded.answer.confidence(&task);
        self.record_arm(ArmName::Candidate, confidence, Some(micros(ran.run)));
        let entry = edge_entry(&ran, confidence);
        self.cache_edge(key, entry).await;
        let model = ModelInfo::of(&candidate);
        Ok(TaskResponse {
            arm: Some(ArmName::Candidate),
            outputs: if want_outputs {
                ran.outputs
            } else {
                Vec::new()
            },
            ..TaskResponse::new(
                ran.decoded.answer,
                ran.decoded.hardness,
                Source::Edge,
                model,
                start,
            )
        })
    }

    /// A scorer of tensors after its run: the scores decoded from the outputs, the run recorded with the task's
    /// confidence and count, and a hard case (a score within its band of the threshold, within the budget) sent to
    /// the cloud with its inputs.
    pub(super) async fn tensor_task(
        &self,
        engine: &Arc<Engine>,
        outputs: &[TensorValue],
        run: std::time::Duration,
        case_inputs: Option<Vec<TensorValue>>,
        start: Instant,
    ) -> Result<TaskResponse, ServiceError> {
        let task = engine
            .task()
            .cloned()
            .ok_or_else(|| ServiceError::Internal("the model has no task".into()))?;
        let decoded = engine
            .decode_tensors(outputs)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let confidence = decoded.answer.confidence(&task);
        self.record_run_counted(
            engine.release_id(),
            run,
            Some(confidence),
            Some(decoded.answer.count()),
        );
        let mut response = TaskResponse::new(
            decoded.answer,
            decoded.hardness,
            Source::Edge,
            ModelInfo::of(engine),
            start,
        );
        let decision = self.weigh(response.hardness, 0.0, "task");
        let hard = self
            .forwarder
            .get()
            .filter(|_| decision == crate::forward::budget::Decision::Forward)
            .zip(case_inputs);
        let Some((f, inputs)) = hard else {
            return Ok(response);
        };
        let digest = crate::inference::tensor::tensors_digest(&inputs);
        let key = CacheKey::with_input_digest(engine.release_id(), &digest);
        let id = crate::forward::case_id(&self.config.fleet.device_id, key.as_bytes());
        let input = (Vec::new(), Vec::new(), inputs);
        let case = self.task_case(
            (&id, f.now_unix()),
            &key,
            &response,
            confidence,
            input,
            Overrides::default(),
        );
        response.case_id = Some(id);
        response.absorb(f.forward(case).await);
        response.latency_us = micros(start.elapsed());
        Ok(response)
    }

    /// A task model's hard case: its input (the image as sent, a preprocessed tensor, or a scorer's tensors), the
    /// call's thresholds and the edge's answer.
    fn task_case(
        &self,
        (id, created_unix): (&str, u64),
        key: &CacheKey,
        response: &TaskResponse,
        confidence: f32,
        (image, tensor, inputs): (Vec<u8>, Vec<f32>, Vec<TensorValue>),
        overrides: Overrides,
    ) -> crate::forward::Case {
        crate::forward::Case {
            id: id.to_string(),
            device: self.config.fleet.device_id.clone(),
            image,
            edge_label: response.answer.summary(),
            edge_confidence: confidence,
            edge_model: response.model.digest.clone(),
            cache_key: key.as_bytes().to_vec(),
            created_unix,
            model: self.name.clone(),
            tensor,
            task: Some(crate::forward::TaskCase {
                overrides,
                edge_answer: response.answer.clone(),
                edge_hardness: response.hardness,
                inputs,
            }),
        }
    }

    /// A scorer of tensors' answer from a cache entry: the cloud's when it answered the case, else decoded from the
    /// cached outputs (a raw model: none).
    pub(super) fn cached_tensor_task(
        &self,
        engine: &Engine,
        hit: &CachedResult,
        start: Instant,
    ) -> Option<TaskResponse> {
        engine.task()?;
        let (answer, hardness, source) = match (&hit.answer, hit.tier.as_str()) {
            (Some(a), "cloud") => (a.answer.clone(), a.hardness, Source::CloudCache),
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

    async fn run_task(
        &self,
        engine: &Arc<Engine>,
        input: TaskInput,
    ) -> Result<crate::worker::RanTask, ServiceError> {
        let rx = self
            .pool
            .submit_task((**engine).clone(), input)
            .map_err(ServiceError::Busy)?;
        worker_reply(rx).await
    }
}
