//! The model: two logistic regressions (linfa) on the same standardised features, one for
//! "the mid moves up" and one for "the mid moves down" over the move a trade could catch.
//! The mid often does not move at all, so P(down) is not 1 − P(up): a strategy trades the
//! difference. Trained on the earliest part of the timeline, tuned on the next, and tested
//! once on the last.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

use super::StageError;
use super::features::FEATURES;

/// A trained model, self-contained: standardisation, weights, and where the periods fall.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
    /// The "up" regression's weights on the standardised features.
    pub coef: Vec<f64>,
    pub intercept: f64,
    /// The "down" regression's.
    pub down_coef: Vec<f64>,
    pub down_intercept: f64,
    pub split: Split,
    /// Ticks between a decision and the move its labels looked at.
    #[serde(default)]
    pub execution_delay: u64,
}

impl Model {
    /// The probability that the mid moves up.
    pub fn probability(&self, x: &[f64]) -> f64 {
        self.logistic(x, &self.coef, self.intercept)
    }

    /// The probability that the mid moves down.
    pub fn probability_down(&self, x: &[f64]) -> f64 {
        self.logistic(x, &self.down_coef, self.down_intercept)
    }

    fn logistic(&self, x: &[f64], coef: &[f64], intercept: f64) -> f64 {
        let z: f64 =
            intercept + x.iter().enumerate().map(|(i, v)| (v - self.mean[i]) / self.sd[i] * coef[i]).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// Train, validation and test periods, by time: training rows (and the tick their label
/// looks at) are before `validation_start_ts`; validation rows before `test_start_ts`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub train_fraction: f64,
    pub validation_fraction: f64,
    pub validation_start_ts: i64,
    pub test_start_ts: i64,
}

impl Split {
    /// Splits the distinct timestamps of `ts` by fraction.
    pub fn of(ts: &[i64], train_fraction: f64, validation_fraction: f64) -> Split {
        let mut distinct = ts.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let at = |fraction: f64| {
            // Rounded, not truncated: 0.7 + 0.1 is 0.7999…, which must still mean 80%.
            let i = ((distinct.len() as f64 * fraction).round() as usize).min(distinct.len().saturating_sub(1));
            distinct.get(i).copied().unwrap_or(i64::MAX)
        };
        Split {
            train_fraction,
            validation_fraction,
            validation_start_ts: at(train_fraction),
            test_start_ts: at(train_fraction + validation_fraction),
        }
    }
}

/// How well probabilities score against outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub rows: usize,
    pub accuracy: f64,
    pub log_loss: f64,
    pub auc: f64,
    /// Share of rows whose next mid move was up.
    pub base_rate: f64,
}

impl Scores {
    pub fn of(probabilities: &[f64], up: &[bool]) -> Scores {
        let (accuracy, log_loss, auc) = evaluate(probabilities, up);
        Scores {
            rows: up.len(),
            accuracy,
            log_loss,
            auc,
            base_rate: up.iter().filter(|&&u| u).count() as f64 / up.len().max(1) as f64,
        }
    }
}

/// One tenth of the test rows, by predicted probability.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decile {
    pub rows: usize,
    pub mean_predicted: f64,
    pub observed_up: f64,
}

/// Calibration: the test rows cut into ten equal groups by predicted probability.
pub fn calibration(probabilities: &[f64], up: &[bool]) -> Vec<Decile> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]));
    let n = order.len();
    (0..10)
        .map(|d| {
            let group = &order[n * d / 10..n * (d + 1) / 10];
            let count = group.len().max(1) as f64;
            Decile {
                rows: group.len(),
                mean_predicted: group.iter().map(|&i| probabilities[i]).sum::<f64>() / count,
                observed_up: group.iter().filter(|&&i| up[i]).count() as f64 / count,
            }
        })
        .collect()
}

/// Predictions at 0.5 against outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub predicted_up_was_up: usize,
    pub predicted_up_was_not: usize,
    pub predicted_not_was_up: usize,
    pub predicted_not_was_not: usize,
}

pub fn confusion(probabilities: &[f64], up: &[bool]) -> Confusion {
    let mut c = Confusion::default();
    for (p, &u) in probabilities.iter().zip(up) {
        match (*p > 0.5, u) {
            (true, true) => c.predicted_up_was_up += 1,
            (true, false) => c.predicted_up_was_not += 1,
            (false, true) => c.predicted_not_was_up += 1,
            (false, false) => c.predicted_not_was_not += 1,
        }
    }
    c
}

/// A standardised coefficient, by feature name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Coefficient {
    pub feature: String,
    /// In the "up" regression.
    pub coef: f64,
    /// In the "down" regression.
    pub down_coef: f64,
}

/// What the model stage reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// What is predicted.
    pub label: String,
    pub in_sample: Scores,
    pub validation: Scores,
    pub test: Scores,
    /// The "down" regression's test scores (against "the mid moved down").
    pub test_down: Scores,
    pub coefficients: Vec<Coefficient>,
    pub intercept: f64,
    pub down_intercept: f64,
    /// Ticks between the decision and the move the label looks at (the execution delay).
    pub execution_delay: u64,
    pub calibration: Vec<Decile>,
    pub confusion: Confusion,
    pub split: Split,
    pub markets: usize,
    pub ticks: usize,
    /// Training rows before sampling (`max_train_rows`).
    pub train_rows_available: usize,
    /// Share of labelled rows whose next mid did not move (labelled "not up", kept).
    pub flat_next_move_share: f64,
    pub max_iterations: u64,
}

/// Trains on rows `x` (one per sample, `FEATURES.len()` wide) with labels `up`.
pub fn train(
    x: &[[f64; FEATURES.len()]],
    up: &[bool],
    down: &[bool],
    max_iterations: u64,
    split: Split,
) -> Result<Model, StageError> {
    let k = FEATURES.len();
    let one_class = |y: &[bool]| y.iter().all(|&v| v) || y.iter().all(|&v| !v);
    if x.len() < 10 || one_class(up) || one_class(down) {
        return Err(StageError::msg(format!(
            "only {} usable training rows, or the mid never moves one way in them (both outcomes of up and of down are needed); generate more ticks or lower `train_fraction`",
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
    let ((coef, intercept), (down_coef, down_intercept)) =
        (fit(&standardised, up, max_iterations)?, fit(&standardised, down, max_iterations)?);
    Ok(Model {
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        mean,
        sd,
        coef,
        intercept,
        down_coef,
        down_intercept,
        split,
        execution_delay: 0,
    })
}

/// One logistic regression of `y` on standardised rows: weights and intercept of P(y).
fn fit(x: &Array2<f64>, y: &[bool], max_iterations: u64) -> Result<(Vec<f64>, f64), StageError> {
    let dataset = Dataset::new(x.clone(), Array1::from(y.to_vec()));
    let fitted = LogisticRegression::default()
        .max_iterations(max_iterations)
        .fit(&dataset)
        .map_err(|e| StageError::msg(format!("logistic regression did not fit: {e}")))?;
    // linfa models the probability of the *more frequent* training class; when that is
    // `false`, flip the weights so that they always give P(y).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok((fitted.params().iter().map(|w| sign * w).collect(), sign * fitted.intercept()))
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
        let model = train(&x, &up, &up.iter().map(|u| !u).collect::<Vec<_>>(), 100, Split::of(&[0], 0.6, 0.2)).unwrap();
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
        let model = train(&x, &up, &up.iter().map(|u| !u).collect::<Vec<_>>(), 200, Split::of(&[0], 0.6, 0.2)).unwrap();
        let high = model.probability(&[0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let low = model.probability(&[-0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(high > 0.5 && low < 0.5, "P(up) is {high} for a clear up case and {low} for a clear down one");
        assert!(model.coef[0] > 0.0);
    }

    #[test]
    fn periods_split_distinct_times_by_fraction() {
        let split = Split::of(&[5, 1, 2, 3, 4, 1, 2, 6, 7, 8, 9, 10], 0.6, 0.2);
        assert_eq!((split.validation_start_ts, split.test_start_ts), (7, 9));
        let ten: Vec<i64> = (1..=10).collect();
        assert_eq!(Split::of(&ten, 0.7, 0.1).test_start_ts, 9, "0.7 + 0.1 is 80%");
    }

    #[test]
    fn deciles_and_the_confusion_matrix_count_every_row() {
        let p: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let up: Vec<bool> = (0..100).map(|i| i % 3 == 0).collect();
        let deciles = calibration(&p, &up);
        assert_eq!(deciles.iter().map(|d| d.rows).sum::<usize>(), 100);
        assert!((deciles[0].mean_predicted - 0.045).abs() < 1e-12);
        let c = confusion(&p, &up);
        assert_eq!(c.predicted_up_was_up + c.predicted_up_was_not, 49);
        assert_eq!(c.predicted_up_was_up + c.predicted_not_was_up, 34);
    }
}
