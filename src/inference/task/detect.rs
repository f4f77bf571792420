//! Detection: a detector's spec checked against its outputs, its outputs decoded into candidate boxes, class-aware
//! non-maximum suppression, and the hardness of the uncertain band.

use super::*;

impl DetectionSpec {
    pub(super) fn validate(
        &self,
        classes: usize,
        (iw, ih): (usize, usize),
    ) -> Result<(), TaskError> {
        if classes == 0 {
            return Err(TaskError::NoLabels);
        }
        for (what, value) in [
            ("detection.score_threshold", self.score_threshold),
            ("detection.iou_threshold", self.iou_threshold),
            ("detection.uncertain[0]", self.uncertain[0]),
            ("detection.uncertain[1]", self.uncertain[1]),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(TaskError::Threshold { what, value });
            }
        }
        if self.uncertain[0] >= self.uncertain[1] {
            return Err(TaskError::Band(self.uncertain));
        }
        if self.max_detections == 0 || self.max_detections > MAX_DETECTIONS {
            return Err(TaskError::MaxDetections {
                what: "detection.max_detections",
                value: self.max_detections,
            });
        }
        let mismatch = |o: &OutputRef, want: String| {
            Err(TaskError::DecoderShape {
                decoder: self.decoder.name(),
                output: o.name.clone(),
                want,
                shape: o.shape.clone(),
            })
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
                    return Err(TaskError::NoAnchors);
                }
                let n = anchors
                    .count(iw, ih)
                    .filter(|&n| n <= crate::inference::tensor::MAX_TENSOR_ELEMENTS)
                    .ok_or(TaskError::TooManyAnchors)?;
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
                    return Err(TaskError::Scale);
                }
            }
        }
        Ok(())
    }

    pub(super) fn decode(
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
