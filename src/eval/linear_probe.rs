//! The linear probe of CLIP_benchmark: multinomial logistic regression on frozen image
//! features, its L2 penalty chosen on a held-out part of the training features, then refitted on
//! all of them and scored on the test features. Pure functions on host slices (f64), full-batch
//! Adam, deterministic for given inputs and seed.

use super::metrics::{Classification, classification};
use crate::tensor::Rng;

/// The penalties tried, CLIP_benchmark-style (a log-spaced sweep).
pub const PENALTIES: [f64; 6] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1];
/// The share of the training features held out to choose the penalty.
const VALIDATION_SHARE: f64 = 0.2;
const STEPS: usize = 300;
const LEARNING_RATE: f64 = 0.05;

/// Features and labels: `features` row-major [n, dim].
pub struct Labelled<'a> {
    pub features: &'a [f64],
    pub labels: &'a [usize],
    pub dim: usize,
}

impl Labelled<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// A fitted classifier: weights [dim, classes] and biases [classes].
pub struct Probe {
    weights: Vec<f64>,
    bias: Vec<f64>,
    classes: usize,
}

impl Probe {
    /// Scores, row-major [n, classes].
    pub fn scores(&self, features: &[f64], dim: usize) -> Vec<f64> {
        features
            .chunks_exact(dim)
            .flat_map(|x| {
                (0..self.classes).map(move |c| {
                    self.bias[c] + (0..dim).map(|k| x[k] * self.weights[k * self.classes + c]).sum::<f64>()
                })
            })
            .collect()
    }
}

/// Minimises the mean cross-entropy plus `penalty / 2 * |weights|^2` with full-batch Adam from zero.
pub fn fit(data: &Labelled, classes: usize, penalty: f64) -> Probe {
    let (dim, n) = (data.dim, data.len().max(1) as f64);
    let mut probe = Probe { weights: vec![0.0; dim * classes], bias: vec![0.0; classes], classes };
    let params = dim * classes + classes;
    let (mut m, mut v) = (vec![0.0; params], vec![0.0; params]);
    let (beta1, beta2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
    for step in 1..=STEPS {
        let scores = probe.scores(data.features, dim);
        let mut grad = vec![0.0; params];
        for ((x, row), &label) in data.features.chunks_exact(dim).zip(scores.chunks_exact(classes)).zip(data.labels) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = row.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for c in 0..classes {
                let d = (exps[c] / total - f64::from(u8::from(c == label))) / n;
                for k in 0..dim {
                    grad[k * classes + c] += d * x[k];
                }
                grad[dim * classes + c] += d;
            }
        }
        for (g, w) in grad.iter_mut().zip(&probe.weights) {
            *g += penalty * w;
        }
        let (c1, c2) = (1.0 - beta1.powi(step as i32), 1.0 - beta2.powi(step as i32));
        for i in 0..params {
            m[i] = beta1 * m[i] + (1.0 - beta1) * grad[i];
            v[i] = beta2 * v[i] + (1.0 - beta2) * grad[i] * grad[i];
            let update = LEARNING_RATE * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            if i < dim * classes {
                probe.weights[i] -= update;
            } else {
                probe.bias[i - dim * classes] -= update;
            }
        }
    }
    probe
}

/// What the probe reports: test metrics and the penalty the validation split chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    pub test: Classification,
    pub penalty: f64,
    pub validation_acc1: f64,
}

fn subset(data: &Labelled, rows: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let features = rows.iter().flat_map(|&r| data.features[r * data.dim..(r + 1) * data.dim].iter().copied()).collect();
    (features, rows.iter().map(|&r| data.labels[r]).collect())
}

/// Chooses the penalty on a seeded 20% of `train`, refits on all of it, scores `test`.
pub fn linear_probe(train: &Labelled, test: &Labelled, classes: usize, seed: u64) -> ProbeResult {
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = Rng::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let held =
        ((train.len() as f64 * VALIDATION_SHARE).round() as usize).clamp(1, train.len().saturating_sub(1).max(1));
    let (fit_rows, val_rows) = order.split_at(train.len() - held);
    let (fit_x, fit_y) = subset(train, fit_rows);
    let (val_x, val_y) = subset(train, val_rows);
    let fit_set = Labelled { features: &fit_x, labels: &fit_y, dim: train.dim };
    let (penalty, validation_acc1) = PENALTIES
        .iter()
        .map(|&p| {
            let probe = fit(&fit_set, classes, p);
            (p, classification(&probe.scores(&val_x, train.dim), &val_y, classes).acc1)
        })
        // The best validation accuracy; on ties the larger penalty (the simpler model).
        .fold((PENALTIES[0], f64::NEG_INFINITY), |best, cand| if cand.1 >= best.1 { cand } else { best });
    let probe = fit(train, classes, penalty);
    let test_metrics = classification(&probe.scores(test.features, test.dim), test.labels, classes);
    ProbeResult { test: test_metrics, penalty, validation_acc1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points around `classes` directions in 4-d, with noise.
    fn blobs(n: usize, classes: usize, noise: f64, seed: u64) -> (Vec<f64>, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let mut features = Vec::new();
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        for &label in &labels {
            for k in 0..4 {
                let centre = if k == label { 1.0 } else { 0.0 };
                features.push(centre + noise * (rng.uniform() * 2.0 - 1.0));
            }
        }
        (features, labels)
    }

    #[test]
    fn separable_classes_are_learnt_and_noise_is_not() {
        let (x, y) = blobs(200, 3, 0.3, 1);
        let (tx, ty) = blobs(90, 3, 0.3, 2);
        let result = linear_probe(
            &Labelled { features: &x, labels: &y, dim: 4 },
            &Labelled { features: &tx, labels: &ty, dim: 4 },
            3,
            0,
        );
        assert!(result.test.acc1 > 0.97, "{result:?}");
        assert!(PENALTIES.contains(&result.penalty));
        // Labels that ignore the features: test accuracy near chance (1/3).
        let mut rng = Rng::new(9);
        let shuffled: Vec<usize> = (0..200).map(|_| rng.below(3)).collect();
        let noise = linear_probe(
            &Labelled { features: &x, labels: &shuffled, dim: 4 },
            &Labelled { features: &tx, labels: &ty, dim: 4 },
            3,
            0,
        );
        assert!(noise.test.acc1 < 0.6, "{noise:?}");
    }
}
