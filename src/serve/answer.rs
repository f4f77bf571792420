//! What a request gets back, by the kind of model that answered: a classifier's label, a detector's or scorer's
//! task answer, a raw model's tensors. Protocols render these; the request path builds them.

use serde::{Deserialize, Serialize};
use std::time::Instant;

use crate::inference::task::{AnswerView, TaskAnswer, TaskKind};
use crate::inference::{Engine, TensorValue};
use crate::wire::status::{ArmName, Forwarded, Source};

pub use crate::wire::status::ModelInfo;

impl ModelInfo {
    pub fn of(engine: &Engine) -> ModelInfo {
        ModelInfo {
            name: engine.spec().name.clone(),
            version: engine.spec().version,
            digest: engine.digest().to_string(),
        }
    }
}

/// The answer to one request, by the kind of the release that judged and ran it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A classifier's.
    Class(InferResponse),
    /// A detector's or an image scorer's.
    Task(TaskResponse),
    /// A raw tensor model's (or a scorer of tensors', with its decoded answer).
    Tensors(TensorsResponse),
}

impl Answer {
    /// Which tier answered, and whether from the cache.
    pub fn source(&self) -> Source {
        match self {
            Answer::Class(a) => a.source,
            Answer::Task(a) => a.source,
            Answer::Tensors(a) => a.source,
        }
    }

    /// The release that answered.
    pub fn model(&self) -> &ModelInfo {
        match self {
            Answer::Class(a) => &a.model,
            Answer::Task(a) => &a.model,
            Answer::Tensors(a) => &a.model,
        }
    }

    pub(crate) fn set_latency(&mut self, start: Instant) {
        let us = micros(start.elapsed());
        match self {
            Answer::Class(a) => a.latency_us = us,
            Answer::Task(a) => a.latency_us = us,
            Answer::Tensors(a) => {
                a.latency_us = us;
                if let Some(t) = &mut a.task {
                    t.latency_us = us;
                }
            }
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

/// A classifier's answer to one request.
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
    pub(crate) fn new(
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
    pub(crate) fn absorb(
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

pub(crate) fn micros(d: std::time::Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
