//! A task model's spec: the outputs its decoder reads, the decoders (boxes-and-scores, YOLOv5, YOLOv8, SSD with
//! MediaPipe's grid anchors) and their thresholds, and a scorer's scores.

use serde::{Deserialize, Serialize};

use crate::inference::tensor::{Dtype, TensorSpec};

/// One output a decoder reads: its name and fixed shape (FP32).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputRef {
    pub name: String,
    pub shape: Vec<usize>,
}

impl OutputRef {
    pub(super) fn tensor(&self) -> TensorSpec {
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
    pub(super) fn apply(self, x: f32) -> f32 {
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

    pub(super) fn count(&self, width: usize, height: usize) -> Option<usize> {
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
