//! What a task refuses, by cause: a spec that does not fit its model (checked at load and at bundle build), a call's
//! out-of-range overrides (the caller's fault: 400), outputs the decoder cannot read (the release's fault: 500), an
//! answer from outside (the cloud tier) out of bounds. Callers choose what to do by variant, not by sentence.

use super::MAX_DETECTIONS;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("task output {name:?} needs a name and a shape of batch 1, got {shape:?}")]
    OutputRef { name: String, shape: Vec<usize> },
    #[error("task output {name} has shape {shape:?}: empty or too large")]
    OutputSize { name: String, shape: Vec<usize> },
    #[error("a detector's spec lists its class labels (`labels`)")]
    NoLabels,
    /// A threshold outside 0..=1: the spec's (`detection.score_threshold`) or a call's (`score_threshold`).
    #[error("{what} must be between 0 and 1, got {value}")]
    Threshold { what: &'static str, value: f32 },
    #[error("detection.uncertain must be [low, high) with low < high, got {0:?}")]
    Band([f32; 2]),
    #[error("{what} must be 1 to {MAX_DETECTIONS}, got {value}")]
    MaxDetections { what: &'static str, value: u32 },
    #[error("the {decoder} decoder reads output {output} as {want}, but the spec gives it shape {shape:?}")]
    DecoderShape {
        decoder: &'static str,
        output: String,
        want: String,
        shape: Vec<usize>,
    },
    #[error("ssd anchors need at least one layer, each with a stride and anchors per cell")]
    NoAnchors,
    #[error("ssd anchors: too many")]
    TooManyAnchors,
    #[error("ssd scale values must be finite and non-zero")]
    Scale,
    #[error("score output {output} has {values} values (shape {shape:?}), but the spec lists {names} names and {thresholds} thresholds")]
    ScoreCount {
        output: String,
        values: usize,
        shape: Vec<usize>,
        names: usize,
        thresholds: usize,
    },
    #[error("score thresholds must be finite and the band positive")]
    ScoreThresholds,
    /// The run's outputs are not what the task reads (a release whose model and spec disagree).
    #[error("the model gave no output {0}")]
    MissingOutput(String),
    #[error("output {name} is {dtype} of shape {shape:?}, the task reads FP32 of shape {want:?}")]
    OutputType {
        name: String,
        dtype: &'static str,
        shape: Vec<usize>,
        want: Vec<usize>,
    },
    /// An answer from outside holds more than an answer may.
    #[error("{0} detections, more than {MAX_DETECTIONS}")]
    TooManyDetections(usize),
    #[error("a detection has a bad label, score or box")]
    BadDetection,
    #[error("{0} scores")]
    ScoreAnswerCount(usize),
    #[error("a score has a bad name or value")]
    BadScore,
}

impl TaskError {
    /// A call's overrides out of range: the request is wrong, not the model.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            TaskError::Threshold { what, .. } | TaskError::MaxDetections { what, .. }
                if !what.starts_with("detection.")
        )
    }
}
