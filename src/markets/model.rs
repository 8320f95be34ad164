//! The model: logistic regression (linfa) predicting the sign of the next return, trained on
//! the earlier part of the timeline and evaluated on the later part.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

use super::StageError;
use super::features::FEATURES;

/// A trained model, self-contained: standardisation, weights, and where the split fell.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    pub coef: Vec<f64>,
    pub intercept: f64,
    /// Rows at or after this time are held out.
    pub cutoff_ts: i64,
}

impl Model {
    /// The probability that the next return is positive.
    pub fn probability(&self, x: &[f64]) -> f64 {
        let z: f64 = self.intercept
            + x.iter().enumerate().map(|(i, v)| (v - self.mean[i]) / self.sd[i] * self.coef[i]).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// Held-out metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub log_loss: f64,
    pub auc: f64,
    /// Share of held-out rows whose next return was positive.
    pub base_rate: f64,
    pub train_rows: usize,
    pub test_rows: usize,
    pub markets: usize,
    pub ticks: usize,
    pub cutoff_ts: i64,
    pub train_fraction: f64,
    pub max_iterations: u64,
}

/// The time before which `fraction` of the distinct timestamps fall.
pub fn split_cutoff(ts: &[i64], fraction: f64) -> i64 {
    let mut distinct = ts.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let at = ((distinct.len() as f64 * fraction) as usize).min(distinct.len().saturating_sub(1));
    distinct.get(at).copied().unwrap_or(i64::MAX)
}

/// Trains on rows `x` (one per sample, `FEATURES.len()` wide) with labels `up`.
pub fn train(
    x: &[[f64; FEATURES.len()]],
    up: &[bool],
    max_iterations: u64,
    cutoff_ts: i64,
) -> Result<Model, StageError> {
    let k = FEATURES.len();
    if x.len() < 10 || up.iter().all(|&u| u) || up.iter().all(|&u| !u) {
        return Err(StageError::msg(format!(
            "only {} usable training rows (both classes are needed); generate more ticks or lower `train_fraction`",
            x.len()
        )));
    }
    let n = x.len() as f64;
    let mean: Vec<f64> = (0..k).map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let sd: Vec<f64> = (0..k)
        .map(|j| {
            let var = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
            if var > 0.0 { var.sqrt() } else { 1.0 }
        })
        .collect();
    let standardised = Array2::from_shape_fn((x.len(), k), |(i, j)| (x[i][j] - mean[j]) / sd[j]);
    let dataset = Dataset::new(standardised, Array1::from(up.to_vec()));
    let fitted = LogisticRegression::default()
        .max_iterations(max_iterations)
        .fit(&dataset)
        .map_err(|e| StageError::msg(format!("logistic regression did not fit: {e}")))?;
    // linfa models the probability of the *more frequent* training class; when that is
    // "down", flip the weights so that `probability` is always P(up).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok(Model {
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        mean,
        sd,
        coef: fitted.params().iter().map(|w| sign * w).collect(),
        intercept: sign * fitted.intercept(),
        cutoff_ts,
    })
}

/// Accuracy, log loss and AUC of probabilities against outcomes.
pub fn evaluate(probabilities: &[f64], up: &[bool]) -> (f64, f64, f64) {
    let n = probabilities.len().max(1) as f64;
    let accuracy = probabilities.iter().zip(up).filter(|(p, u)| (**p > 0.5) == **u).count() as f64 / n;
    let log_loss = -probabilities
        .iter()
        .zip(up)
        .map(|(p, u)| {
            let p = p.clamp(1e-15, 1.0 - 1e-15);
            if *u { p.ln() } else { (1.0 - p).ln() }
        })
        .sum::<f64>()
        / n;
    (accuracy, log_loss, auc(probabilities, up))
}

/// Area under the ROC curve: the chance a random positive outranks a random negative
/// (ties count half), by ranks.
pub fn auc(probabilities: &[f64], up: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && probabilities[order[j + 1]] == probabilities[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&r| up[order[r]]).count() as f64 * mid_rank;
        i = j + 1;
    }
    let positives = up.iter().filter(|&&u| u).count() as f64;
    let negatives = up.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), 0.75);
        assert_eq!(auc(&[0.2, 0.2], &[false, true]), 0.5);
    }

    #[test]
    fn the_model_reproduces_linfas_probabilities() {
        // y is up when the first feature is positive, with noise from the second.
        let x: Vec<[f64; FEATURES.len()]> = (0..200)
            .map(|i| {
                let a = ((i * 37) % 101) as f64 / 50.0 - 1.0;
                let b = ((i * 17) % 53) as f64 / 26.0 - 1.0;
                [a, b, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            })
            .collect();
        let up: Vec<bool> = x.iter().map(|r| r[0] + 0.3 * r[1] > 0.0).collect();
        let model = train(&x, &up, 100, 0).unwrap();
        let probabilities: Vec<f64> = x.iter().map(|r| model.probability(r)).collect();
        let (accuracy, _, auc) = evaluate(&probabilities, &up);
        assert!(accuracy > 0.9 && auc > 0.95, "accuracy {accuracy}, auc {auc}");
        assert!(model.coef[0] > 0.0);
    }

    #[test]
    fn probabilities_mean_up_even_when_down_moves_are_the_majority() {
        // 70% of samples are down; up exactly when the first feature exceeds 0.4.
        let x: Vec<[f64; FEATURES.len()]> =
            (0..300).map(|i| [(i % 100) as f64 / 100.0 * 2.0 - 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).collect();
        let up: Vec<bool> = x.iter().map(|r| r[0] > 0.4).collect();
        assert!(up.iter().filter(|&&u| u).count() < 100, "the majority is down");
        let model = train(&x, &up, 200, 0).unwrap();
        let high = model.probability(&[0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let low = model.probability(&[-0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(high > 0.5 && low < 0.5, "P(up) is {high} for a clear up case and {low} for a clear down one");
        assert!(model.coef[0] > 0.0);
    }

    #[test]
    fn the_cutoff_splits_distinct_times_by_fraction() {
        assert_eq!(split_cutoff(&[5, 1, 2, 3, 4, 1, 2], 0.6), 4);
    }
}
