//! How well two answers of one task agree (shadow runs and rollouts compare a candidate with the live model by it).

use super::*;

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
