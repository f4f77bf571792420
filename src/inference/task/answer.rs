//! A task model's answer as the cache, the cloud tier, probation and shadow carry it: detections or scores, its JSON
//! view, its confidence, count and summary, and the checks an answer from outside passes.

use serde::{Deserialize, Serialize};

use super::score::score_hardness;
use super::*;

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub label: String,
    /// Class index into the spec's labels.
    pub index: u32,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in the pixels of the image that was sent.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// A detector's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detections {
    /// Best first, at most `max_detections`.
    pub detections: Vec<Detection>,
    /// The size of the image the boxes refer to.
    pub width: u32,
    pub height: u32,
}

/// One score of a scorer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreValue {
    pub name: String,
    pub value: f32,
    pub threshold: f32,
    /// `value >= threshold`.
    pub positive: bool,
}

/// A task model's answer, as `/v1`, the cache, the cloud tier and shadow carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskAnswer {
    Detections(Detections),
    Scores(Vec<ScoreValue>),
}

/// A task answer's JSON in `/v1`: its fields at the top level of the response (`detections`, `width`, `height`;
/// or `scores`), beside `"task"`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum AnswerView<'a> {
    Detections(&'a Detections),
    Scores { scores: &'a [ScoreValue] },
}

impl TaskAnswer {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskAnswer::Detections(_) => TaskKind::Detection,
            TaskAnswer::Scores(_) => TaskKind::Score,
        }
    }

    /// The JSON form `/v1` and v2's `answer` parameter show.
    pub fn view(&self) -> AnswerView<'_> {
        match self {
            TaskAnswer::Detections(d) => AnswerView::Detections(d),
            TaskAnswer::Scores(s) => AnswerView::Scores { scores: s },
        }
    }

    /// The task's confidence in its answer, what probation and the rollout gate watch: a detector's highest box
    /// score (0 for no box), a scorer's distance of its least sure score from its threshold, in bands, capped at 1.
    pub fn confidence(&self, task: &Task) -> f32 {
        match (self, task) {
            (TaskAnswer::Detections(d), _) => {
                d.detections.iter().map(|d| d.score).fold(0.0, f32::max)
            }
            (TaskAnswer::Scores(s), Task::Score(spec)) => 1.0 - score_hardness(s, spec.band),
            (TaskAnswer::Scores(_), _) => 0.0,
        }
    }

    /// The number of boxes (detection) or positive scores: the second figure probation compares.
    pub fn count(&self) -> usize {
        match self {
            TaskAnswer::Detections(d) => d.detections.len(),
            TaskAnswer::Scores(s) => s.iter().filter(|s| s.positive).count(),
        }
    }

    /// Checks an answer that came from outside (the cloud tier): bounded counts and lengths, finite values.
    pub fn check(&self) -> Result<(), TaskError> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= 256;
        match self {
            TaskAnswer::Detections(d) => {
                if d.detections.len() > MAX_DETECTIONS as usize {
                    return Err(TaskError::TooManyDetections(d.detections.len()));
                }
                for x in &d.detections {
                    if !name_ok(&x.label)
                        || !x.score.is_finite()
                        || !(0.0..=1.0).contains(&x.score)
                        || x.bbox.iter().any(|v| !v.is_finite())
                    {
                        return Err(TaskError::BadDetection);
                    }
                }
            }
            TaskAnswer::Scores(s) => {
                if s.is_empty() || s.len() > crate::inference::tensor::MAX_TENSORS * 64 {
                    return Err(TaskError::ScoreAnswerCount(s.len()));
                }
                if s.iter()
                    .any(|x| !name_ok(&x.name) || !x.value.is_finite() || !x.threshold.is_finite())
                {
                    return Err(TaskError::BadScore);
                }
            }
        }
        Ok(())
    }

    /// A one-word summary for logs and the cache's label field: `3 boxes`, `anomaly+`.
    pub fn summary(&self) -> String {
        match self {
            TaskAnswer::Detections(d) => format!("{} boxes", d.detections.len()),
            TaskAnswer::Scores(s) => s
                .iter()
                .map(|s| format!("{}{}", s.name, if s.positive { "+" } else { "-" }))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}
