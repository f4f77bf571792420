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
//!
//! The spec types are in `spec.rs`, the fit in `fit.rs`, answers in `answer.rs`, the decoders in `detect.rs` and
//! `score.rs`, agreement in `agreement.rs`; this file holds the task itself and its dispatch.

use serde::{Deserialize, Serialize};

use super::tensor::{TensorData, TensorSpec, TensorValue};

mod agreement;
mod answer;
mod detect;
mod error;
mod fit;
mod score;
mod spec;

pub use agreement::agreement;
pub use answer::*;
pub use detect::iou;
pub use error::TaskError;
pub use fit::Fit;
pub use spec::*;

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
    pub fn validate(&self) -> Result<(), TaskError> {
        for (what, v) in [
            ("score_threshold", self.score_threshold),
            ("iou_threshold", self.iou_threshold),
        ] {
            if let Some(value) = v {
                if !(0.0..=1.0).contains(&value) {
                    return Err(TaskError::Threshold { what, value });
                }
            }
        }
        if let Some(value) = self.max_detections {
            if value == 0 || value > MAX_DETECTIONS {
                return Err(TaskError::MaxDetections {
                    what: "max_detections",
                    value,
                });
            }
        }
        Ok(())
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
    pub fn validate(&self, labels: &[String], input: (usize, usize)) -> Result<(), TaskError> {
        for t in self.outputs() {
            if t.name.is_empty() || t.shape.is_empty() || t.shape[0] != 1 {
                return Err(TaskError::OutputRef {
                    name: t.name,
                    shape: t.shape,
                });
            }
            let n = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n > 0 && n <= super::tensor::MAX_TENSOR_ELEMENTS);
            if n.is_none() {
                return Err(TaskError::OutputSize {
                    name: t.name,
                    shape: t.shape,
                });
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
    ) -> Result<Decoded, TaskError> {
        let want = self.outputs();
        let mut values = Vec::with_capacity(want.len());
        for t in &want {
            // By name: a scorer of tensors gives other outputs too (a recurrent state).
            let o = outputs
                .iter()
                .find(|o| o.name == t.name)
                .ok_or_else(|| TaskError::MissingOutput(t.name.clone()))?;
            match &o.data {
                TensorData::Fp32(v) if v.len() == t.len() => values.push(v.as_slice()),
                _ => {
                    return Err(TaskError::OutputType {
                        name: t.name.clone(),
                        dtype: o.data.dtype().name(),
                        shape: o.shape.clone(),
                        want: t.shape.clone(),
                    })
                }
            }
        }
        match self {
            Task::Detection(d) => Ok(d.decode(&values, labels, input, fit, overrides)),
            Task::Score(s) => Ok(s.decode(values[0])),
        }
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
        assert!(
            matches!(&e, TaskError::DecoderShape { decoder: "yolov5", output, want, shape }
                if output == "output0" && want.contains("[1, N, 15]") && shape == &[1, 64, 14]),
            "{e}"
        );
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
        assert!(
            matches!(&e, TaskError::DecoderShape { decoder: "ssd", output, want, .. }
                if output == "scores" && want.contains("896 anchors")),
            "{e}"
        );
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
        assert!(matches!(
            bad.validate(&[], (28, 28)),
            Err(TaskError::ScoreCount { names: 2, .. })
        ));
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

    const VAD: &str = include_str!("../../../models/vad/silero-vad-score.spec.json");

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
