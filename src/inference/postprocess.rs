//! From raw model output to an answer: softmax, top-k, and the hardness scores that decide whether an input is
//! hard enough to forward to the cloud tier.

use serde::{Deserialize, Serialize};

use super::spec::{ModelSpec, OutputKind};

/// One answer of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    /// Highest class probability.
    pub confidence: f32,
    /// Top-1 minus top-2 probability: small when the model hesitates between two classes.
    pub margin: f32,
    /// Shannon entropy of the distribution, in nats: high when the model spreads its belief.
    pub entropy: f32,
    /// The k most likely (class index, probability), best first.
    pub top: Vec<(usize, f32)>,
    /// The model's raw output (logits or probabilities, as the spec says).
    pub output: Vec<f32>,
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the k largest values, largest first (NaN sorts last).
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| {
        probs[b]
            .partial_cmp(&probs[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

pub fn entropy(probs: &[f32]) -> f32 {
    probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| -p * p.ln())
        .sum()
}

/// Builds the prediction for one output vector. `output` must not be empty (the engine checks its length).
pub fn predict(output: &[f32], spec: &ModelSpec, k: usize) -> Prediction {
    let probs = match spec.output.kind {
        OutputKind::Logits => softmax(output),
        OutputKind::Probabilities => output.to_vec(),
    };
    let top = top_k(&probs, k.max(2));
    let (index, confidence) = top[0];
    let margin = confidence - top.get(1).map(|t| t.1).unwrap_or(0.0);
    let label = spec
        .labels
        .get(index)
        .cloned()
        .unwrap_or_else(|| index.to_string());
    Prediction {
        label,
        index,
        confidence,
        margin,
        entropy: entropy(&probs),
        top: top.into_iter().take(k.max(1)).collect(),
        output: output.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_a_distribution_and_stable() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
    }

    #[test]
    fn hardness_scores() {
        let p = [0.7f32, 0.2, 0.1];
        let top = top_k(&p, 2);
        assert_eq!(top, vec![(0, 0.7), (1, 0.2)]);
        let e = entropy(&p);
        let expected = -(0.7f32 * 0.7f32.ln() + 0.2 * 0.2f32.ln() + 0.1 * 0.1f32.ln());
        assert!((e - expected).abs() < 1e-6);
        // Uniform over 10 classes is the maximum entropy, ln 10.
        assert!((entropy(&[0.1; 10]) - 10f32.ln()).abs() < 1e-5);
    }
}
