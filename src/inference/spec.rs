//! The model spec: what a model expects as input and what its output means.
//!
//! A spec travels beside every model (a `<model>.spec.json` file today, inside the signed bundle manifest later), so
//! the code that serves a model never guesses its input size, normalisation or labels.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::task::Task;
use super::tensor::{Dtype, TensorIo, TensorSpec};
use super::InferenceError;

/// Largest input tensor a spec may ask for (elements). A spec comes from outside (a file, a bundle), so the size of
/// the buffer it makes us allocate is capped: 4 x 3 x 1024 x 1024 floats is far above any edge model.
pub const MAX_INPUT_ELEMENTS: usize = 4 * 3 * 1024 * 1024;

/// A model's spec. Two kinds: an image classifier (`input`, `output`, `preprocess` and `labels` describe its one
/// image input and its class scores), or a raw tensor model (`tensors` lists every input and output; the image
/// fields are left out of its file and stay empty). [`ModelSpec::validate`] refuses a mix of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub preprocess: Preprocess,
    #[serde(default)]
    pub labels: Vec<String>,
    /// What the model scored on the held-out split when it was produced (informational). No
    /// `skip_serializing_if`: the spec travels in postcard manifests, which need every field present.
    #[serde(default)]
    pub accuracy: Option<Accuracy>,
    /// A raw tensor model's inputs and outputs. Last, and absent from the spec's digest when `None`, so that a
    /// classifier's release id is the same as before raw models existed; manifests that carry it are bundle
    /// format 2 ([`crate::bundle`]).
    #[serde(default)]
    pub tensors: Option<TensorIo>,
    /// What the outputs of an image model mean when it is not a classifier: a detector or a scorer
    /// ([`super::task`]). Last, and absent from the spec's digest when `None`, as `tensors`; manifests that carry it
    /// are bundle format 3.
    #[serde(default)]
    pub task: Option<Task>,
}

/// The spec as bundle format 2 carries it: before task kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpecV2 {
    pub name: String,
    pub version: u64,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
    pub accuracy: Option<Accuracy>,
    pub tensors: Option<TensorIo>,
}

impl From<ModelSpecV2> for ModelSpec {
    fn from(v: ModelSpecV2) -> ModelSpec {
        ModelSpec {
            name: v.name,
            version: v.version,
            input: v.input,
            output: v.output,
            preprocess: v.preprocess,
            labels: v.labels,
            accuracy: v.accuracy,
            tensors: v.tensors,
            task: None,
        }
    }
}

/// The spec as it was before raw tensor models: the form of bundle format 1 manifests, and the serialization the
/// release digest of a classifier is taken over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpecV1 {
    pub name: String,
    #[serde(default)]
    pub version: u64,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
    #[serde(default)]
    pub accuracy: Option<Accuracy>,
}

impl From<ModelSpecV1> for ModelSpec {
    fn from(v: ModelSpecV1) -> ModelSpec {
        ModelSpec {
            name: v.name,
            version: v.version,
            input: v.input,
            output: v.output,
            preprocess: v.preprocess,
            labels: v.labels,
            accuracy: v.accuracy,
            tensors: None,
            task: None,
        }
    }
}

impl ModelSpec {
    /// The classifier fields alone (what the release digest of a spec without `tensors` covers).
    pub fn v1_view(&self) -> ModelSpecV1 {
        ModelSpecV1 {
            name: self.name.clone(),
            version: self.version,
            input: self.input.clone(),
            output: self.output.clone(),
            preprocess: self.preprocess.clone(),
            labels: self.labels.clone(),
            accuracy: self.accuracy.clone(),
        }
    }

    /// The form format 2 manifests carry, when this spec has one (no task).
    pub fn v2_view(&self) -> Option<ModelSpecV2> {
        self.task.is_none().then(|| ModelSpecV2 {
            name: self.name.clone(),
            version: self.version,
            input: self.input.clone(),
            output: self.output.clone(),
            preprocess: self.preprocess.clone(),
            labels: self.labels.clone(),
            accuracy: self.accuracy.clone(),
            tensors: self.tensors.clone(),
        })
    }

    /// The raw tensor model's inputs and outputs, if this is one.
    pub fn raw(&self) -> Option<&TensorIo> {
        self.tensors.as_ref()
    }

    /// The task kind: classification, detection, score or raw.
    pub fn kind(&self) -> super::task::TaskKind {
        use super::task::TaskKind;
        match (&self.task, &self.tensors) {
            (Some(t), _) => t.kind(),
            (None, Some(_)) => TaskKind::Raw,
            (None, None) => TaskKind::Classification,
        }
    }

    /// The tensors the engine binds and keeps: a raw model's list, or for a task model its one image input (FP32
    /// of the input shape) and the outputs its decoder reads. `None` for a classifier (one input, one output).
    pub fn io(&self) -> Option<TensorIo> {
        if let Some(io) = &self.tensors {
            return Some(io.clone());
        }
        self.task.as_ref().map(|t| TensorIo {
            inputs: vec![TensorSpec {
                name: self.input.name.clone(),
                datatype: Dtype::Fp32,
                shape: self.input.shape.clone(),
            }],
            outputs: t.outputs(),
            stateful: false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    /// Fixed batch-1 shape the runtime binds the model to, e.g. `[1, 1, 28, 28]`.
    pub shape: Vec<usize>,
    pub layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    #[default]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Raw scores: the engine applies softmax.
    #[default]
    Logits,
    /// Already a probability distribution.
    Probabilities,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    #[default]
    Gray,
    Rgb,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Preprocess {
    pub color: Color,
    pub width: u32,
    pub height: u32,
    /// Pixels are divided by this first (255 maps them to 0..1).
    pub scale: f32,
    /// Per channel, applied after scaling: `(p / scale - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub split: String,
    pub n: u64,
    pub top1: f64,
}

impl ModelSpec {
    /// Reads a spec file and checks that it is self-consistent.
    pub fn from_file(path: &Path) -> Result<ModelSpec, InferenceError> {
        let bytes = std::fs::read(path).map_err(|source| InferenceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let spec: ModelSpec = serde_json::from_slice(&bytes)
            .map_err(|e| InferenceError::Spec(format!("{}: {e}", path.display())))?;
        spec.validate()
            .map_err(|e| InferenceError::Spec(format!("{}: {e}", path.display())))?;
        Ok(spec)
    }

    /// Where a model's spec lives by convention: `models/edge-int8.onnx` -> `models/edge-int8.spec.json`.
    pub fn default_path_for(model: &Path) -> PathBuf {
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        model.with_file_name(format!("{stem}.spec.json"))
    }

    pub fn channels(&self) -> usize {
        match self.preprocess.color {
            Color::Gray => 1,
            Color::Rgb => 3,
        }
    }

    pub fn input_len(&self) -> usize {
        self.input.shape.iter().product()
    }

    /// Checks the relations a loader relies on, so that a bad spec is a clear error rather than a wrong answer.
    pub fn validate(&self) -> Result<(), String> {
        if let (Some(task), Some(io)) = (&self.task, &self.tensors) {
            // A scorer may take tensors (sensor windows, audio frames): its scores are one of its outputs. A
            // detector's boxes are in an image's pixels: it takes an image.
            let super::task::Task::Score(score) = task else {
                return Err(
                    "a detector takes an image: it has input and preprocess, not tensors".into(),
                );
            };
            let fits = io.outputs.iter().any(|t| {
                t.name == score.output.name
                    && t.shape == score.output.shape
                    && t.datatype == Dtype::Fp32
            });
            if !fits {
                return Err(format!(
                    "the score output {} (FP32 {:?}) is not one of the tensors' outputs",
                    score.output.name, score.output.shape
                ));
            }
            if self.input != InputSpec::default() || self.preprocess != Preprocess::default() {
                return Err(
                    "a scorer of tensors lists its inputs in tensors, not input and preprocess"
                        .into(),
                );
            }
            io.validate()?;
            return task
                .validate(&self.labels, (0, 0))
                .map_err(|e| e.to_string());
        }
        if let Some(io) = &self.tensors {
            if self.input != InputSpec::default()
                || self.output != OutputSpec::default()
                || self.preprocess != Preprocess::default()
                || !self.labels.is_empty()
            {
                return Err("a spec lists either tensors (a raw tensor model) or input, output, preprocess and \
                     labels (an image classifier), not both"
                    .into());
            }
            return io.validate();
        }
        let shape = &self.input.shape;
        if shape.len() != 4 {
            return Err(format!(
                "input.shape must have 4 dimensions (batch, ...), got {shape:?}"
            ));
        }
        if shape[0] != 1 {
            return Err(format!("input.shape must have batch 1, got {shape:?}"));
        }
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0 && n <= MAX_INPUT_ELEMENTS)
            .ok_or_else(|| {
                format!(
                    "input.shape {shape:?} is empty or larger than {MAX_INPUT_ELEMENTS} elements"
                )
            })?;
        let c = self.channels();
        let (w, h) = (
            self.preprocess.width as usize,
            self.preprocess.height as usize,
        );
        let expected = match self.input.layout {
            Layout::Nchw => [1, c, h, w],
            Layout::Nhwc => [1, h, w, c],
        };
        if shape[..] != expected[..] || n != c * h * w {
            return Err(format!(
                "input.shape {shape:?} does not match preprocess ({c} channel(s), {w}x{h}, {:?}): expected {expected:?}",
                self.input.layout
            ));
        }
        if self.preprocess.mean.len() != c || self.preprocess.std.len() != c {
            return Err(format!(
                "preprocess.mean and preprocess.std need {c} value(s) each"
            ));
        }
        if self
            .preprocess
            .std
            .iter()
            .any(|s| !s.is_finite() || *s == 0.0)
            || !self.preprocess.scale.is_finite()
            || self.preprocess.scale <= 0.0
        {
            return Err(
                "preprocess.std values and preprocess.scale must be finite and non-zero".into(),
            );
        }
        if let Some(task) = &self.task {
            if self.output != OutputSpec::default() {
                return Err("a task model names its outputs in its task, not in `output`".into());
            }
            let io = self.io().unwrap_or_else(|| unreachable!());
            io.validate()?;
            return task
                .validate(&self.labels, (w, h))
                .map_err(|e| e.to_string());
        }
        if self.labels.is_empty() {
            return Err("labels must not be empty".into());
        }
        Ok(())
    }
}
