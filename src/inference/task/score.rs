//! Scoring: a scorer's spec checked, its outputs read as scores with their side of the threshold, and how near the
//! threshold makes an input hard.

use super::*;

impl ScoreSpec {
    pub(super) fn validate(&self) -> Result<(), TaskError> {
        let n: usize = self.output.shape.iter().product();
        if self.names.len() != n || self.thresholds.len() != n {
            return Err(TaskError::ScoreCount {
                output: self.output.name.clone(),
                values: n,
                shape: self.output.shape.clone(),
                names: self.names.len(),
                thresholds: self.thresholds.len(),
            });
        }
        if self.thresholds.iter().any(|t| !t.is_finite())
            || !self.band.is_finite()
            || self.band <= 0.0
        {
            return Err(TaskError::ScoreThresholds);
        }
        Ok(())
    }

    pub(super) fn decode(&self, v: &[f32]) -> Decoded {
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
pub(super) fn score_hardness(scores: &[ScoreValue], band: f32) -> f32 {
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
