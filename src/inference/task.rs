//! Task kinds beyond classification: what a detector's or a scorer's outputs mean, and everything Outpost derives
//! from them (the answer, how hard an input was, how two answers agree). One place for every task-specific rule, so
//! the cache, the cloud tier, probation and shadow handle a task's answer without knowing how it was made.
//!
//! A task model takes an image (the spec's `input` and `preprocess`, as a classifier) and names the outputs its
//! decoder reads; the engine keeps exactly those outputs and checks their shapes at load. Decoders:
//! - `boxes_scores`: the model gives boxes `[1, N, 4]` and class scores `[1, N, C]` already;
//! - `yolov5`: one output `[1, N, 5 + C]` (cx, cy, w, h, objectness, class scores);
//! - `yolov8`: one output `[1, 4 + C, N]` (cx, cy, w, h, class scores; anchor-free);
//! - `ssd`: scores `[1, N, C]` and box codes `[1, N, K >= 4]` relative to anchors the spec describes (MediaPipe's
//!   grid anchors: BlazeFace and its kin).
//!
//! Boxes come back in the pixel coordinates of the image the client sent, whether the model saw it stretched or
//! letterboxed ([`Resize`]), after class-aware non-maximum suppression, at most `max_detections` of them.

use serde::{Deserialize, Serialize};

use super::tensor::{Dtype, TensorData, TensorSpec, TensorValue};

/// At most this many boxes a decoder considers (after its score floor), so that NMS stays bounded whatever a model
/// outputs.
pub const MAX_CANDIDATES: usize = 4096;
/// At most this many detections an answer may hold (`max_detections`, per call or in the spec).
pub const MAX_DETECTIONS: u32 = 1000;

/// What a model's outputs mean, when it is not a classifier (or a raw tensor model, which has no task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Detection(DetectionSpec),
    Score(ScoreSpec),
}

/// The closed set of task kinds, for metrics labels, logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Classification,
    Detection,
    Score,
    Raw,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Detection => "detection",
            TaskKind::Score => "score",
            TaskKind::Raw => "raw",
        }
    }
}

/// One output a decoder reads: its name and fixed shape (FP32).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputRef {
    pub name: String,
    pub shape: Vec<usize>,
}

impl OutputRef {
    fn tensor(&self) -> TensorSpec {
        TensorSpec {
            name: self.name.clone(),
            datatype: Dtype::Fp32,
            shape: self.shape.clone(),
        }
    }
}

/// A detector's decoder, thresholds and coordinate mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionSpec {
    pub decoder: Decoder,
    /// How the image is fitted to the model's input; boxes are mapped back the same way.
    #[serde(default)]
    pub resize: Resize,
    /// The gray level (0-255, before normalisation) a letterbox pads with.
    #[serde(default)]
    pub fill: u8,
    /// Boxes scoring below this are not answered (a call may override it).
    pub score_threshold: f32,
    /// Two boxes of one class overlapping more than this are one object (a call may override it).
    pub iou_threshold: f32,
    /// At most this many boxes per answer, best first (a call may override it, up to [`MAX_DETECTIONS`]).
    pub max_detections: u32,
    /// `[low, high)`: a box scoring in this band is an object the model is unsure of, which makes the input a hard
    /// case. `low` may lie below `score_threshold` (an object the edge model nearly missed).
    pub uncertain: [f32; 2],
}

/// How an image is fitted to a model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Scaled to the input size on each axis (the aspect ratio changes).
    #[default]
    Stretch,
    /// Scaled by one factor to fit, centred, the rest padded with `fill`.
    Letterbox,
}

/// How a model's raw scores become probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Already probabilities.
    #[default]
    None,
    Sigmoid,
}

impl Activation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Sigmoid => 1.0 / (1.0 + (-x.clamp(-100.0, 100.0)).exp()),
        }
    }
}

/// How a `boxes_scores` model writes its boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxFormat {
    /// x1, y1, x2, y2.
    #[default]
    Xyxy,
    /// y1, x1, y2, x2 (TensorFlow's detection API).
    Yxyx,
    /// centre x, centre y, width, height.
    Cxcywh,
}

/// The order of an SSD model's box code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeOrder {
    /// dx, dy, w, h (MediaPipe).
    #[default]
    Xywh,
    /// dy, dx, h, w (TensorFlow's SSD).
    Yxhw,
}

/// How an SSD model's width and height codes scale its anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeCoding {
    /// `w = code / scale * anchor_w` (MediaPipe).
    #[default]
    Linear,
    /// `w = exp(code / scale) * anchor_w` (TensorFlow's and torchvision's SSD).
    Exp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    BoxesScores {
        boxes: OutputRef,
        scores: OutputRef,
        #[serde(default)]
        format: BoxFormat,
        /// Boxes are fractions of the input size rather than input pixels.
        #[serde(default)]
        normalized: bool,
        #[serde(default)]
        activation: Activation,
    },
    Yolov5 {
        output: OutputRef,
    },
    Yolov8 {
        output: OutputRef,
    },
    Ssd {
        scores: OutputRef,
        boxes: OutputRef,
        anchors: Anchors,
        /// The codes are divided by these (x, y, w, h) before use; MediaPipe uses the input size.
        scale: [f32; 4],
        #[serde(default)]
        order: CodeOrder,
        #[serde(default)]
        size: SizeCoding,
        #[serde(default = "sigmoid")]
        activation: Activation,
    },
}

fn sigmoid() -> Activation {
    Activation::Sigmoid
}

/// Grid anchors, as MediaPipe's SSD anchor calculator lays them out with a fixed anchor size: layer by layer, row by
/// row, cell by cell, `per_cell` anchors at each cell's centre (shifted by `offset` cells), each the size of the
/// whole input. (MediaPipe's consecutive layers of one stride are one layer here, with their anchors added up.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchors {
    pub layers: Vec<AnchorLayer>,
    #[serde(default = "half")]
    pub offset: f32,
}

fn half() -> f32 {
    0.5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorLayer {
    pub stride: u32,
    pub per_cell: u32,
}

/// One anchor: centre and size as fractions of the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
}

impl Anchors {
    /// The anchors for an input of `width` x `height`, in the order the model's outputs list them.
    pub fn generate(&self, width: usize, height: usize) -> Vec<Anchor> {
        let mut out = Vec::new();
        for l in &self.layers {
            let s = l.stride.max(1) as usize;
            let (gw, gh) = (width.div_ceil(s), height.div_ceil(s));
            for y in 0..gh {
                for x in 0..gw {
                    for _ in 0..l.per_cell {
                        out.push(Anchor {
                            cx: (x as f32 + self.offset) / gw as f32,
                            cy: (y as f32 + self.offset) / gh as f32,
                            w: 1.0,
                            h: 1.0,
                        });
                    }
                }
            }
        }
        out
    }

    fn count(&self, width: usize, height: usize) -> Option<usize> {
        self.layers.iter().try_fold(0usize, |acc, l| {
            let s = l.stride.max(1) as usize;
            let n = width
                .div_ceil(s)
                .checked_mul(height.div_ceil(s))?
                .checked_mul(l.per_cell as usize)?;
            acc.checked_add(n)
        })
    }
}

/// A scorer: one output of `K` scores (e.g. an anomaly score), each with its name and threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSpec {
    /// The output holding the scores; its element count is the number of names.
    pub output: OutputRef,
    pub names: Vec<String>,
    /// A score at or above its threshold is `positive` (an anomaly, an event).
    pub thresholds: Vec<f32>,
    /// A score closer than this to its threshold is one the model is unsure of: a hard case.
    pub band: f32,
    #[serde(default)]
    pub activation: Activation,
}

/// Per-call changes to a detector's thresholds (`/v1` query parameters, v2 request parameters).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub score_threshold: Option<f32>,
    pub iou_threshold: Option<f32>,
    pub max_detections: Option<u32>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// Checks a call's values: thresholds within 0..=1, at most [`MAX_DETECTIONS`] boxes.
    pub fn validate(&self) -> Result<(), String> {
        for (what, v) in [
            ("score_threshold", self.score_threshold),
            ("iou_threshold", self.iou_threshold),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("{what} must be between 0 and 1, got {v}"));
                }
            }
        }
        if let Some(m) = self.max_detections {
            if m == 0 || m > MAX_DETECTIONS {
                return Err(format!(
                    "max_detections must be 1 to {MAX_DETECTIONS}, got {m}"
                ));
            }
        }
        Ok(())
    }
}

/// The size of the model's input and how an image was fitted into it: `input = image * scale + pad`, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub image_width: u32,
    pub image_height: u32,
    pub scale_x: f32,
    pub scale_y: f32,
    pub pad_x: f32,
    pub pad_y: f32,
}

impl Fit {
    /// How an image of `w` x `h` fits an input of `iw` x `ih`.
    pub fn new(resize: Resize, w: u32, h: u32, iw: u32, ih: u32) -> Fit {
        let (fw, fh) = (w.max(1) as f32, h.max(1) as f32);
        match resize {
            Resize::Stretch => Fit {
                image_width: w,
                image_height: h,
                scale_x: iw as f32 / fw,
                scale_y: ih as f32 / fh,
                pad_x: 0.0,
                pad_y: 0.0,
            },
            Resize::Letterbox => {
                let s = (iw as f32 / fw).min(ih as f32 / fh);
                let (sw, sh) = ((fw * s).round(), (fh * s).round());
                Fit {
                    image_width: w,
                    image_height: h,
                    scale_x: s,
                    scale_y: s,
                    pad_x: ((iw as f32 - sw) / 2.0).floor(),
                    pad_y: ((ih as f32 - sh) / 2.0).floor(),
                }
            }
        }
    }

    /// The size the image is scaled to inside the input (the letterbox's content area).
    pub fn scaled_size(&self) -> (u32, u32) {
        (
            (self.image_width as f32 * self.scale_x).round().max(1.0) as u32,
            (self.image_height as f32 * self.scale_y).round().max(1.0) as u32,
        )
    }

    /// A box in input pixels, mapped to image pixels and clipped to the image.
    fn image_box(&self, b: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.image_width as f32, self.image_height as f32);
        [
            ((b[0] - self.pad_x) / self.scale_x).clamp(0.0, w),
            ((b[1] - self.pad_y) / self.scale_y).clamp(0.0, h),
            ((b[2] - self.pad_x) / self.scale_x).clamp(0.0, w),
            ((b[3] - self.pad_y) / self.scale_y).clamp(0.0, h),
        ]
    }
}

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
    pub fn check(&self) -> Result<(), String> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= 256;
        match self {
            TaskAnswer::Detections(d) => {
                if d.detections.len() > MAX_DETECTIONS as usize {
                    return Err(format!(
                        "{} detections, more than {MAX_DETECTIONS}",
                        d.detections.len()
                    ));
                }
                for x in &d.detections {
                    if !name_ok(&x.label)
                        || !x.score.is_finite()
                        || !(0.0..=1.0).contains(&x.score)
                        || x.bbox.iter().any(|v| !v.is_finite())
                    {
                        return Err("a detection has a bad label, score or box".into());
                    }
                }
            }
            TaskAnswer::Scores(s) => {
                if s.is_empty() || s.len() > super::tensor::MAX_TENSORS * 64 {
                    return Err(format!("{} scores", s.len()));
                }
                if s.iter()
                    .any(|x| !name_ok(&x.name) || !x.value.is_finite() || !x.threshold.is_finite())
                {
                    return Err("a score has a bad name or value".into());
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

/// A decoded answer with what decides whether it was hard.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub answer: TaskAnswer,
    /// How unsure the model was, 0 (sure) to 1 (as unsure as it can be): for a detector, 1 at the middle of its
    /// uncertain band for the least sure box in it; for a scorer, 1 on a threshold, 0 a band or more away.
    pub hardness: f32,
}

impl Task {
    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Detection(_) => TaskKind::Detection,
            Task::Score(_) => TaskKind::Score,
        }
    }

    /// The outputs the decoder reads, in the order the engine returns them.
    pub fn outputs(&self) -> Vec<TensorSpec> {
        match self {
            Task::Detection(d) => match &d.decoder {
                Decoder::BoxesScores { boxes, scores, .. } => vec![boxes.tensor(), scores.tensor()],
                Decoder::Yolov5 { output } | Decoder::Yolov8 { output } => vec![output.tensor()],
                Decoder::Ssd { scores, boxes, .. } => vec![scores.tensor(), boxes.tensor()],
            },
            Task::Score(s) => vec![s.output.tensor()],
        }
    }

    /// Checks the task against the spec's labels and input size: output shapes that fit the decoder (each mismatch
    /// named), thresholds in range. `labels` are the class names (detection); `input` is `(width, height)`.
    pub fn validate(&self, labels: &[String], input: (usize, usize)) -> Result<(), String> {
        for t in self.outputs() {
            if t.name.is_empty() || t.shape.is_empty() || t.shape[0] != 1 {
                return Err(format!(
                    "task output {:?} needs a name and a shape of batch 1, got {:?}",
                    t.name, t.shape
                ));
            }
            let n = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n > 0 && n <= super::tensor::MAX_TENSOR_ELEMENTS);
            if n.is_none() {
                return Err(format!(
                    "task output {} has shape {:?}: empty or too large",
                    t.name, t.shape
                ));
            }
        }
        match self {
            Task::Detection(d) => d.validate(labels.len(), input),
            Task::Score(s) => s.validate(),
        }
    }

    /// Decodes one run's outputs (in [`Task::outputs`] order). `fit` maps input pixels back to the image; `labels`
    /// name the classes.
    pub fn decode(
        &self,
        outputs: &[TensorValue],
        labels: &[String],
        input: (usize, usize),
        fit: &Fit,
        overrides: &Overrides,
    ) -> Result<Decoded, String> {
        let want = self.outputs();
        let mut values = Vec::with_capacity(want.len());
        for t in &want {
            // By name: a scorer of tensors gives other outputs too (a recurrent state).
            let o = outputs
                .iter()
                .find(|o| o.name == t.name)
                .ok_or_else(|| format!("the model gave no output {}", t.name))?;
            match &o.data {
                TensorData::Fp32(v) if v.len() == t.len() => values.push(v.as_slice()),
                _ => {
                    return Err(format!(
                        "output {} is {} of shape {:?}, the task reads FP32 of shape {:?}",
                        t.name,
                        o.data.dtype().name(),
                        o.shape,
                        t.shape
                    ))
                }
            }
        }
        match self {
            Task::Detection(d) => Ok(d.decode(&values, labels, input, fit, overrides)),
            Task::Score(s) => Ok(s.decode(values[0])),
        }
    }
}

impl DetectionSpec {
    fn validate(&self, classes: usize, (iw, ih): (usize, usize)) -> Result<(), String> {
        if classes == 0 {
            return Err("a detector's spec lists its class labels (`labels`)".into());
        }
        for (what, v) in [
            ("score_threshold", self.score_threshold),
            ("iou_threshold", self.iou_threshold),
            ("uncertain[0]", self.uncertain[0]),
            ("uncertain[1]", self.uncertain[1]),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("detection.{what} must be between 0 and 1, got {v}"));
            }
        }
        if self.uncertain[0] >= self.uncertain[1] {
            return Err(format!(
                "detection.uncertain must be [low, high) with low < high, got {:?}",
                self.uncertain
            ));
        }
        if self.max_detections == 0 || self.max_detections > MAX_DETECTIONS {
            return Err(format!(
                "detection.max_detections must be 1 to {MAX_DETECTIONS}, got {}",
                self.max_detections
            ));
        }
        let mismatch = |o: &OutputRef, want: String| {
            Err(format!(
                "the {} decoder reads output {} as {want}, but the spec gives it shape {:?}",
                self.decoder.name(),
                o.name,
                o.shape
            ))
        };
        match &self.decoder {
            Decoder::BoxesScores { boxes, scores, .. } => {
                let n = boxes.shape.get(1).copied().unwrap_or(0);
                if boxes.shape.len() != 3 || boxes.shape[2] != 4 {
                    return mismatch(boxes, "[1, N, 4] (N boxes)".into());
                }
                if scores.shape != [1, n, classes] && !(classes == 1 && scores.shape == [1, n]) {
                    return mismatch(
                        scores,
                        format!("[1, {n}, {classes}] ({n} boxes, {classes} labels)"),
                    );
                }
            }
            Decoder::Yolov5 { output } => {
                if output.shape.len() != 3 || output.shape[2] != 5 + classes {
                    return mismatch(
                        output,
                        format!(
                            "[1, N, {}] (box, objectness, {classes} labels)",
                            5 + classes
                        ),
                    );
                }
            }
            Decoder::Yolov8 { output } => {
                if output.shape.len() != 3 || output.shape[1] != 4 + classes {
                    return mismatch(
                        output,
                        format!("[1, {}, N] (box, {classes} labels)", 4 + classes),
                    );
                }
            }
            Decoder::Ssd {
                scores,
                boxes,
                anchors,
                scale,
                ..
            } => {
                if anchors.layers.is_empty()
                    || anchors
                        .layers
                        .iter()
                        .any(|l| l.stride == 0 || l.per_cell == 0)
                {
                    return Err("ssd anchors need at least one layer, each with a stride and anchors per cell".into());
                }
                let n = anchors
                    .count(iw, ih)
                    .filter(|&n| n <= super::tensor::MAX_TENSOR_ELEMENTS)
                    .ok_or("ssd anchors: too many")?;
                if scores.shape != [1, n, classes] {
                    return mismatch(
                        scores,
                        format!("[1, {n}, {classes}] ({n} anchors from the spec's layers, {classes} labels)"),
                    );
                }
                if boxes.shape.len() != 3 || boxes.shape[1] != n || boxes.shape[2] < 4 {
                    return mismatch(boxes, format!("[1, {n}, K] with K >= 4 ({n} anchors)"));
                }
                if scale.iter().any(|s| !s.is_finite() || *s == 0.0) {
                    return Err("ssd scale values must be finite and non-zero".into());
                }
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        values: &[&[f32]],
        labels: &[String],
        (iw, ih): (usize, usize),
        fit: &Fit,
        overrides: &Overrides,
    ) -> Decoded {
        let threshold = overrides.score_threshold.unwrap_or(self.score_threshold);
        let iou = overrides.iou_threshold.unwrap_or(self.iou_threshold);
        let max = overrides.max_detections.unwrap_or(self.max_detections) as usize;
        // Candidates down to the lower of the answer's threshold and the uncertain band's floor: a box the answer
        // leaves out may still make the input hard.
        let floor = threshold.min(self.uncertain[0]);
        let classes = labels.len();
        let mut cands = candidates(
            &self.decoder,
            values,
            classes,
            (iw as f32, ih as f32),
            floor,
        );
        let kept = nms(&mut cands, iou);
        let (low, high) = (self.uncertain[0], self.uncertain[1]);
        let mid = (low + high) / 2.0;
        let half = (high - low) / 2.0;
        let hardness = kept
            .iter()
            .filter(|c| c.score >= low && c.score < high)
            .map(|c| (1.0 - (c.score - mid).abs() / half).clamp(0.0, 1.0))
            .fold(0.0, f32::max);
        let detections = kept
            .into_iter()
            .filter(|c| c.score >= threshold)
            .take(max)
            .map(|c| Detection {
                label: labels
                    .get(c.class)
                    .cloned()
                    .unwrap_or_else(|| c.class.to_string()),
                index: c.class as u32,
                score: c.score,
                bbox: fit.image_box(c.bbox),
            })
            .collect();
        Decoded {
            answer: TaskAnswer::Detections(Detections {
                detections,
                width: fit.image_width,
                height: fit.image_height,
            }),
            hardness,
        }
    }
}

impl Decoder {
    pub fn name(&self) -> &'static str {
        match self {
            Decoder::BoxesScores { .. } => "boxes_scores",
            Decoder::Yolov5 { .. } => "yolov5",
            Decoder::Yolov8 { .. } => "yolov8",
            Decoder::Ssd { .. } => "ssd",
        }
    }
}

/// A box before suppression, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    bbox: [f32; 4],
    score: f32,
    class: usize,
}

fn cxcywh(cx: f32, cy: f32, w: f32, h: f32) -> [f32; 4] {
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// Every (box, class) scoring at least `floor`, best first, at most [`MAX_CANDIDATES`]. Non-finite values are
/// skipped: a broken model gives no boxes, not NaN coordinates.
fn candidates(
    decoder: &Decoder,
    v: &[&[f32]],
    classes: usize,
    (iw, ih): (f32, f32),
    floor: f32,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut push = |bbox: [f32; 4], score: f32, class: usize| {
        if score >= floor
            && score.is_finite()
            && bbox.iter().all(|x| x.is_finite())
            && bbox[2] > bbox[0]
            && bbox[3] > bbox[1]
        {
            // A score above 1 (a model whose spec says its scores are probabilities when they are not) counts as
            // sure, so answers stay within 0..1 wherever they go (the cloud tier's answers are checked for it).
            out.push(Candidate {
                bbox,
                score: score.min(1.0),
                class,
            });
        }
    };
    match decoder {
        Decoder::BoxesScores {
            boxes,
            format,
            normalized,
            activation,
            ..
        } => {
            let n = boxes.shape[1];
            let (sx, sy) = if *normalized { (iw, ih) } else { (1.0, 1.0) };
            for i in 0..n {
                let b = &v[0][i * 4..i * 4 + 4];
                let bbox = match format {
                    BoxFormat::Xyxy => [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy],
                    BoxFormat::Yxyx => [b[1] * sx, b[0] * sy, b[3] * sx, b[2] * sy],
                    BoxFormat::Cxcywh => cxcywh(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy),
                };
                for c in 0..classes {
                    push(bbox, activation.apply(v[1][i * classes + c]), c);
                }
            }
        }
        Decoder::Yolov5 { output } => {
            let (n, stride) = (output.shape[1], output.shape[2]);
            for i in 0..n {
                let r = &v[0][i * stride..(i + 1) * stride];
                let bbox = cxcywh(r[0], r[1], r[2], r[3]);
                for c in 0..classes {
                    push(bbox, r[4] * r[5 + c], c);
                }
            }
        }
        Decoder::Yolov8 { output } => {
            let n = output.shape[2];
            let at = |row: usize, i: usize| v[0][row * n + i];
            for i in 0..n {
                let bbox = cxcywh(at(0, i), at(1, i), at(2, i), at(3, i));
                for c in 0..classes {
                    push(bbox, at(4 + c, i), c);
                }
            }
        }
        Decoder::Ssd {
            boxes,
            anchors,
            scale,
            order,
            size,
            activation,
            ..
        } => {
            let k = boxes.shape[2];
            for (i, a) in anchors
                .generate(iw as usize, ih as usize)
                .iter()
                .enumerate()
            {
                let r = &v[1][i * k..i * k + 4];
                let (dx, dy, dw, dh) = match order {
                    CodeOrder::Xywh => (r[0], r[1], r[2], r[3]),
                    CodeOrder::Yxhw => (r[1], r[0], r[3], r[2]),
                };
                let cx = dx / scale[0] * a.w + a.cx;
                let cy = dy / scale[1] * a.h + a.cy;
                let (w, h) = match size {
                    SizeCoding::Linear => (dw / scale[2] * a.w, dh / scale[3] * a.h),
                    SizeCoding::Exp => ((dw / scale[2]).exp() * a.w, (dh / scale[3]).exp() * a.h),
                };
                let bbox = cxcywh(cx * iw, cy * ih, w * iw, h * ih);
                for c in 0..classes {
                    push(bbox, activation.apply(v[0][i * classes + c]), c);
                }
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(MAX_CANDIDATES);
    out
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes (0 when either is empty).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Class-aware greedy non-maximum suppression over candidates sorted best first.
fn nms(cands: &mut [Candidate], threshold: f32) -> Vec<Candidate> {
    let mut kept: Vec<Candidate> = Vec::new();
    for c in cands.iter() {
        if kept
            .iter()
            .all(|k| k.class != c.class || iou(&k.bbox, &c.bbox) <= threshold)
        {
            kept.push(*c);
        }
    }
    kept
}

impl ScoreSpec {
    fn validate(&self) -> Result<(), String> {
        let n: usize = self.output.shape.iter().product();
        if self.names.len() != n || self.thresholds.len() != n {
            return Err(format!(
                "score output {} has {n} values (shape {:?}), but the spec lists {} names and {} thresholds",
                self.output.name,
                self.output.shape,
                self.names.len(),
                self.thresholds.len()
            ));
        }
        if self.thresholds.iter().any(|t| !t.is_finite())
            || !self.band.is_finite()
            || self.band <= 0.0
        {
            return Err("score thresholds must be finite and the band positive".into());
        }
        Ok(())
    }

    fn decode(&self, v: &[f32]) -> Decoded {
        let scores: Vec<ScoreValue> = self
            .names
            .iter()
            .zip(&self.thresholds)
            .zip(v)
            .map(|((name, &threshold), &x)| {
                let value = self.activation.apply(x);
                ScoreValue {
                    name: name.clone(),
                    value,
                    threshold,
                    positive: value >= threshold,
                }
            })
            .collect();
        let hardness = score_hardness(&scores, self.band);
        Decoded {
            answer: TaskAnswer::Scores(scores),
            hardness,
        }
    }
}

/// 1 for a score on its threshold, 0 for one a band or more away; the closest score decides. A non-finite score
/// is as hard as it gets.
fn score_hardness(scores: &[ScoreValue], band: f32) -> f32 {
    scores
        .iter()
        .map(|s| {
            let d = (s.value - s.threshold).abs();
            if d.is_finite() {
                (1.0 - d / band).clamp(0.0, 1.0)
            } else {
                1.0
            }
        })
        .fold(0.0, f32::max)
}

/// How well two answers of one task agree, 0 to 1: detections are matched greedily (best first) at IoU >= 0.5 with
/// the same label and scored by F1 (two empty answers agree fully); scores agree by the share that fall on the same
/// side of their thresholds.
pub fn agreement(a: &TaskAnswer, b: &TaskAnswer) -> f32 {
    match (a, b) {
        (TaskAnswer::Detections(a), TaskAnswer::Detections(b)) => {
            let (a, b) = (&a.detections, &b.detections);
            if a.is_empty() && b.is_empty() {
                return 1.0;
            }
            let mut used = vec![false; b.len()];
            let mut matched = 0usize;
            for d in a {
                let best = b
                    .iter()
                    .enumerate()
                    .filter(|(j, e)| !used[*j] && e.index == d.index)
                    .map(|(j, e)| (j, iou(&d.bbox, &e.bbox)))
                    .filter(|(_, o)| *o >= 0.5)
                    .max_by(|x, y| x.1.total_cmp(&y.1));
                if let Some((j, _)) = best {
                    used[j] = true;
                    matched += 1;
                }
            }
            2.0 * matched as f32 / (a.len() + b.len()) as f32
        }
        (TaskAnswer::Scores(a), TaskAnswer::Scores(b)) if a.len() == b.len() && !a.is_empty() => {
            a.iter()
                .zip(b)
                .filter(|(x, y)| x.positive == y.positive)
                .count() as f32
                / a.len() as f32
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    fn out(name: &str, shape: &[usize]) -> OutputRef {
        OutputRef {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    fn det(decoder: Decoder) -> DetectionSpec {
        DetectionSpec {
            decoder,
            resize: Resize::Stretch,
            fill: 0,
            score_threshold: 0.5,
            iou_threshold: 0.5,
            max_detections: 10,
            uncertain: [0.3, 0.7],
        }
    }

    fn value(name: &str, shape: &[usize], v: Vec<f32>) -> TensorValue {
        TensorValue {
            name: name.into(),
            shape: shape.to_vec(),
            data: TensorData::Fp32(v),
        }
    }

    #[test]
    fn yolov8_boxes_are_suppressed_and_mapped_to_the_image() {
        // Three anchors, two classes: two overlapping boxes of class 0 and one of class 1.
        let task = Task::Detection(det(Decoder::Yolov8 {
            output: out("o", &[1, 6, 3]),
        }));
        task.validate(&labels(2), (64, 64)).unwrap();
        #[rustfmt::skip]
        let v = vec![
            10.0, 12.0, 40.0, // cx
            10.0, 10.0, 40.0, // cy
            8.0, 8.0, 10.0,   // w
            8.0, 8.0, 10.0,   // h
            0.9, 0.8, 0.1,    // class 0
            0.0, 0.0, 0.6,    // class 1
        ];
        // The image was 128 x 64, stretched to 64 x 64.
        let fit = Fit::new(Resize::Stretch, 128, 64, 64, 64);
        let d = task
            .decode(
                &[value("o", &[1, 6, 3], v)],
                &labels(2),
                (64, 64),
                &fit,
                &Overrides::default(),
            )
            .unwrap();
        let TaskAnswer::Detections(d) = d.answer else {
            panic!()
        };
        assert_eq!(d.detections.len(), 2, "{d:?}");
        assert_eq!(d.detections[0].index, 0);
        assert_eq!(d.detections[0].bbox, [12.0, 6.0, 28.0, 14.0]);
        assert_eq!(d.detections[1].index, 1);
        assert_eq!(d.detections[1].bbox, [70.0, 35.0, 90.0, 45.0]);
    }

    #[test]
    fn letterbox_maps_back_through_the_padding() {
        // 200 x 100 into 100 x 100: scale 0.5, 25 rows of padding above and below.
        let fit = Fit::new(Resize::Letterbox, 200, 100, 100, 100);
        assert_eq!((fit.scale_x, fit.pad_x, fit.pad_y), (0.5, 0.0, 25.0));
        assert_eq!(
            fit.image_box([10.0, 35.0, 20.0, 45.0]),
            [20.0, 20.0, 40.0, 40.0]
        );
        assert_eq!(fit.scaled_size(), (100, 50));
    }

    #[test]
    fn a_decoder_that_does_not_fit_the_outputs_names_the_output() {
        let task = Task::Detection(det(Decoder::Yolov5 {
            output: out("output0", &[1, 64, 14]),
        }));
        let e = task.validate(&labels(10), (64, 64)).unwrap_err();
        assert!(e.contains("output0") && e.contains("[1, N, 15]"), "{e}");
        let ssd = Task::Detection(det(Decoder::Ssd {
            scores: out("scores", &[1, 890, 1]),
            boxes: out("boxes", &[1, 896, 16]),
            anchors: Anchors {
                layers: vec![
                    AnchorLayer {
                        stride: 8,
                        per_cell: 2,
                    },
                    AnchorLayer {
                        stride: 16,
                        per_cell: 6,
                    },
                ],
                offset: 0.5,
            },
            scale: [128.0; 4],
            order: CodeOrder::Xywh,
            size: SizeCoding::Linear,
            activation: Activation::Sigmoid,
        }));
        let e = ssd.validate(&labels(1), (128, 128)).unwrap_err();
        assert!(e.contains("scores") && e.contains("896 anchors"), "{e}");
    }

    #[test]
    fn ssd_anchors_follow_mediapipe_order() {
        let a = Anchors {
            layers: vec![
                AnchorLayer {
                    stride: 8,
                    per_cell: 2,
                },
                AnchorLayer {
                    stride: 16,
                    per_cell: 6,
                },
            ],
            offset: 0.5,
        };
        let v = a.generate(128, 128);
        assert_eq!(v.len(), 896);
        assert_eq!((v[0].cx, v[0].cy), (0.5 / 16.0, 0.5 / 16.0));
        assert_eq!(v[1], v[0]);
        assert_eq!((v[2].cx, v[2].cy), (1.5 / 16.0, 0.5 / 16.0));
        assert_eq!((v[512].cx, v[512].cy), (0.5 / 8.0, 0.5 / 8.0));
        assert_eq!(v[517], v[512]);
        assert_eq!(v[518].cx, 1.5 / 8.0);
    }

    #[test]
    fn uncertain_boxes_make_an_input_hard_even_below_the_answer_threshold() {
        let task = Task::Detection(det(Decoder::BoxesScores {
            boxes: out("b", &[1, 2, 4]),
            scores: out("s", &[1, 2, 1]),
            format: BoxFormat::Xyxy,
            normalized: false,
            activation: Activation::None,
        }));
        let fit = Fit::new(Resize::Stretch, 32, 32, 32, 32);
        let run = |s0: f32, s1: f32| {
            task.decode(
                &[
                    value("b", &[1, 2, 4], vec![0., 0., 10., 10., 20., 20., 30., 30.]),
                    value("s", &[1, 2, 1], vec![s0, s1]),
                ],
                &labels(1),
                (32, 32),
                &fit,
                &Overrides::default(),
            )
            .unwrap()
        };
        let sure = run(0.95, 0.05);
        assert_eq!(sure.hardness, 0.0);
        assert_eq!(sure.answer.count(), 1);
        // 0.5 is the band's middle: as hard as it gets; 0.35 is answered by nobody but still counts.
        assert_eq!(run(0.95, 0.5).hardness, 1.0);
        let faint = run(0.95, 0.35);
        assert!((faint.hardness - 0.25).abs() < 1e-6, "{}", faint.hardness);
        assert_eq!(faint.answer.count(), 1);
        // A call may lower the threshold and cap the count.
        let o = Overrides {
            score_threshold: Some(0.3),
            max_detections: Some(1),
            ..Default::default()
        };
        let d = task
            .decode(
                &[
                    value("b", &[1, 2, 4], vec![0., 0., 10., 10., 20., 20., 30., 30.]),
                    value("s", &[1, 2, 1], vec![0.9, 0.35]),
                ],
                &labels(1),
                (32, 32),
                &fit,
                &o,
            )
            .unwrap();
        assert_eq!(d.answer.count(), 1);
        assert!(Overrides {
            iou_threshold: Some(1.5),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn nan_outputs_give_no_boxes() {
        let task = Task::Detection(det(Decoder::Yolov8 {
            output: out("o", &[1, 5, 1]),
        }));
        let fit = Fit::new(Resize::Stretch, 8, 8, 8, 8);
        let d = task
            .decode(
                &[value("o", &[1, 5, 1], vec![f32::NAN, 1.0, 2.0, 2.0, 0.9])],
                &labels(1),
                (8, 8),
                &fit,
                &Overrides::default(),
            )
            .unwrap();
        assert_eq!(d.answer.count(), 0);
    }

    /// Whatever a model outputs (huge, tiny, negative, NaN, infinite values), every decoder answers within its
    /// bounds and never panics: boxes finite and inside the image, scores finite, at most `max_detections`.
    #[test]
    fn any_output_decodes_to_a_bounded_answer() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            0.0,
            1.0,
            -0.0,
            0.5,
            1e-30,
        ];
        let mut x: u64 = 7;
        let mut next = |i: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if x >> 60 == 0 {
                specials[i % specials.len()]
            } else {
                ((x >> 33) as f32 / (1u64 << 31) as f32) * 130.0 - 30.0
            }
        };
        let ssd = Decoder::Ssd {
            scores: out("s", &[1, 6, 2]),
            boxes: out("b", &[1, 6, 5]),
            anchors: Anchors {
                layers: vec![AnchorLayer {
                    stride: 16,
                    per_cell: 6,
                }],
                offset: 0.5,
            },
            scale: [16.0; 4],
            order: CodeOrder::Yxhw,
            size: SizeCoding::Exp,
            activation: Activation::Sigmoid,
        };
        let decoders = [
            (
                Decoder::Yolov8 {
                    output: out("o", &[1, 6, 20]),
                },
                vec![("o", vec![1, 6, 20])],
            ),
            (
                Decoder::Yolov5 {
                    output: out("o", &[1, 20, 7]),
                },
                vec![("o", vec![1, 20, 7])],
            ),
            (
                Decoder::BoxesScores {
                    boxes: out("b", &[1, 20, 4]),
                    scores: out("s", &[1, 20, 2]),
                    format: BoxFormat::Cxcywh,
                    normalized: true,
                    activation: Activation::Sigmoid,
                },
                vec![("b", vec![1, 20, 4]), ("s", vec![1, 20, 2])],
            ),
            (ssd, vec![("s", vec![1, 6, 2]), ("b", vec![1, 6, 5])]),
        ];
        for (decoder, shapes) in decoders {
            let task = Task::Detection(DetectionSpec {
                max_detections: 5,
                score_threshold: 0.0,
                ..det(decoder)
            });
            task.validate(&labels(2), (16, 16)).unwrap();
            for resize in [Resize::Stretch, Resize::Letterbox] {
                let fit = Fit::new(resize, 40, 10, 16, 16);
                for round in 0..200 {
                    let outputs: Vec<TensorValue> = shapes
                        .iter()
                        .map(|(n, s)| {
                            let len = s.iter().product::<usize>();
                            value(n, s, (0..len).map(|i| next(i + round)).collect())
                        })
                        .collect();
                    let d = task
                        .decode(&outputs, &labels(2), (16, 16), &fit, &Overrides::default())
                        .unwrap();
                    assert!((0.0..=1.0).contains(&d.hardness), "{}", d.hardness);
                    let TaskAnswer::Detections(ds) = d.answer else {
                        panic!()
                    };
                    assert!(ds.detections.len() <= 5);
                    for b in &ds.detections {
                        assert!((0.0..=1.0).contains(&b.score) && b.index < 2, "{b:?}");
                        assert!(b.bbox.iter().all(|v| v.is_finite()), "{b:?}");
                        assert!(
                            b.bbox[0] >= 0.0
                                && b.bbox[2] <= 40.0
                                && b.bbox[1] >= 0.0
                                && b.bbox[3] <= 10.0,
                            "{b:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scores_have_a_side_and_a_hardness() {
        let task = Task::Score(ScoreSpec {
            output: out("score", &[1, 1]),
            names: vec!["anomaly".into()],
            thresholds: vec![0.04],
            band: 0.02,
            activation: Activation::None,
        });
        task.validate(&[], (28, 28)).unwrap();
        let fit = Fit::new(Resize::Stretch, 28, 28, 28, 28);
        let d = |x: f32| {
            task.decode(
                &[value("score", &[1, 1], vec![x])],
                &[],
                (28, 28),
                &fit,
                &Overrides::default(),
            )
            .unwrap()
        };
        assert_eq!(d(0.1).hardness, 0.0);
        assert!((d(0.05).hardness - 0.5).abs() < 1e-5);
        let TaskAnswer::Scores(s) = d(0.05).answer else {
            panic!()
        };
        assert!(s[0].positive);
        assert_eq!(agreement(&d(0.05).answer, &d(0.2).answer), 1.0);
        assert_eq!(agreement(&d(0.01).answer, &d(0.2).answer), 0.0);
        let bad = Task::Score(ScoreSpec {
            names: vec!["a".into(), "b".into()],
            ..match task {
                Task::Score(s) => s,
                _ => unreachable!(),
            }
        });
        assert!(bad.validate(&[], (28, 28)).unwrap_err().contains("2 names"));
    }

    #[test]
    fn detection_agreement_is_f1_at_iou_half_with_the_same_label() {
        let d = |boxes: &[([f32; 4], u32)]| {
            TaskAnswer::Detections(Detections {
                detections: boxes
                    .iter()
                    .map(|(b, i)| Detection {
                        label: i.to_string(),
                        index: *i,
                        score: 0.9,
                        bbox: *b,
                    })
                    .collect(),
                width: 64,
                height: 64,
            })
        };
        let a = d(&[([0., 0., 10., 10.], 1), ([20., 20., 30., 30.], 2)]);
        let b = d(&[([1., 1., 10., 10.], 1), ([20., 20., 30., 30.], 3)]);
        assert_eq!(agreement(&a, &a), 1.0);
        assert_eq!(agreement(&a, &b), 0.5);
        assert_eq!(agreement(&d(&[]), &d(&[])), 1.0);
        assert_eq!(agreement(&a, &d(&[])), 0.0);
    }
}

#[cfg(test)]
mod spec_tests {
    use crate::inference::ModelSpec;

    const VAD: &str = include_str!("../../models/vad/silero-vad-score.spec.json");

    /// A scorer may take tensors, its score being one of its outputs; a detector may not (its boxes are in an image's
    /// pixels), and a score output the tensors do not list is refused naming it.
    #[test]
    fn a_scorer_of_tensors_names_one_of_its_outputs() {
        let spec: ModelSpec = serde_json::from_str(VAD).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.kind(), super::TaskKind::Score);
        assert_eq!(spec.io(), spec.tensors.clone());
        let wrong = VAD.replace(
            r#""output": {"name": "output""#,
            r#""output": {"name": "prob""#,
        );
        let e = serde_json::from_str::<ModelSpec>(&wrong)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.contains("prob") && e.contains("not one of the tensors' outputs"),
            "{e}"
        );
        let mut det = spec.clone();
        det.labels = vec!["x".into()];
        det.task = Some(super::Task::Detection(super::DetectionSpec {
            decoder: super::Decoder::Yolov8 {
                output: super::OutputRef {
                    name: "output".into(),
                    shape: vec![1, 5, 1],
                },
            },
            resize: super::Resize::Stretch,
            fill: 0,
            score_threshold: 0.5,
            iou_threshold: 0.5,
            max_detections: 1,
            uncertain: [0.2, 0.6],
        }));
        let e = det.validate().unwrap_err();
        assert!(e.contains("detector takes an image"), "{e}");
    }
}
